//! The environment layer: `CONDUIT_<SECTION>_<KEY>` variables, taken as a snapshot so
//! that tests never depend on (or change) the process environment.
//!
//! An empty variable counts as unset. A `CONDUIT_*` variable that is no setting and
//! nothing else Conduit reads (a misspelled key or section: `CONDUIT_ROUTER_HSOT`,
//! `CONDUIT_PERFRMANCE_WORKERS`) is reported as a warning, with the closest real name
//! when there is one.

use std::collections::BTreeMap;

use super::schema::{OTHER_VARS, QUIET_VARS, Schema, closest, known_vars};
use super::{Problem, Role};

/// A snapshot of the `CONDUIT_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process's `CONDUIT_*` variables (ones that are not valid Unicode are skipped).
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The `CONDUIT_*` variables among `pairs`.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v)| k.starts_with("CONDUIT_") && !v.is_empty())
            .collect();
        Self { vars }
    }

    /// The first of `names` that is set, with its value.
    pub(crate) fn first<'a>(
        &'a self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<(&'a str, &'a str)> {
        names
            .into_iter()
            .find_map(|n| self.vars.get_key_value(n))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Warnings for `CONDUIT_*` variables that Conduit does not read.
    pub(crate) fn unknown(&self) -> Vec<Problem> {
        let known = known_vars();
        let mut out = Vec::new();
        for var in self.vars.keys() {
            if known.contains(var) || QUIET_VARS.contains(&var.as_str()) {
                continue;
            }
            let message = if var.starts_with("CONDUIT_TUNNELS_") {
                format!(
                    "{var} is ignored: tunnels come from the file only ([[tunnels]] tables); \
                     unset it"
                )
            } else {
                let hint = match closest(var, known.iter().map(String::as_str)) {
                    Some(k) => format!("did you mean {k}? "),
                    None => in_a_section_like(var).unwrap_or_default(),
                };
                format!(
                    "{var} is not a Conduit setting and is ignored; {hint}settings are \
                     CONDUIT_<SECTION>_<KEY>, such as CONDUIT_ROUTER_HOST"
                )
            };
            out.push(Problem::warning("", message));
        }
        out
    }

    /// For `conduit start`, which reads flags and no file: one warning for each
    /// variable set that only a configuration file's settings read (all but `read`,
    /// the flags' own variables), and for each that is no setting at all.
    pub fn unread_without_a_file(&self, read: &[&str]) -> Vec<String> {
        let known = known_vars();
        let rest = Self {
            vars: (self.vars.iter())
                .filter(|(v, _)| !read.contains(&v.as_str()) && !OTHER_VARS.contains(&v.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut out: Vec<String> = (rest.vars.keys())
            .filter(|v| known.contains(v))
            .map(|v| {
                format!(
                    "{v} is ignored: it sets a configuration file's key, and `conduit start` \
                     reads flags only; give the flag instead (`conduit start --help`), or put \
                     the tunnel in a file and run `conduit up -f FILE`"
                )
            })
            .collect();
        out.extend(rest.unknown().into_iter().map(|p| p.message));
        out
    }
}

/// The hint for `var`, a name too far from every setting's for [`closest`], whose
/// section is misspelled (`CONDUIT_PERFRMANCE_TURBO`): the section it is closest to,
/// with the key of it the rest is closest to, if any.
fn in_a_section_like(var: &str) -> Option<String> {
    let rest = var.strip_prefix("CONDUIT_")?;
    let mut sections = [Role::Client, Role::Router]
        .into_iter()
        .flat_map(|r| Schema::of(r).sections.iter());
    let (section, keys) = sections.find_map(|s| {
        // As many words of the variable as the section's name has.
        let words = s.name.split('_').count();
        let mut parts = rest.splitn(words + 1, '_');
        let head: Vec<&str> = parts.by_ref().take(words).collect();
        let keys = parts.next()?;
        let head = head.join("_").to_ascii_lowercase();
        (head != s.name && closest(&head, [s.name]).is_some()).then_some((s, keys))
    })?;
    let names: Vec<String> = (section.keys.iter())
        .map(|k| k.name.to_ascii_uppercase())
        .collect();
    let prefix = format!("CONDUIT_{}_", section.name.to_ascii_uppercase());
    Some(match closest(keys, names.iter().map(String::as_str)) {
        Some(key) => format!("did you mean {prefix}{key}? "),
        None => format!(
            "did you mean a setting of [{}], {prefix}<KEY>? ",
            section.name
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_names_the_file_settings_it_does_not_read() {
        let env = Env::from_pairs([
            ("CONDUIT_PERFORMANCE_WORKERS", "1"),
            ("CONDUIT_TOKEN", "t"),
            ("CONDUIT_HOME", "/h"),
            ("CONDUIT_ROUTER_COLOUR", "red"),
            ("CONDUIT_ROUTER_KEY", "ed25519:…"),
            ("CONDUIT_PERFRMANCE_WORKERS", "2"),
            ("CONDUIT_NAME_CLAIM", "w1"),
        ]);
        let w = env.unread_without_a_file(&["CONDUIT_TOKEN", "CONDUIT_ROUTER_KEY"]);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[1].starts_with(
                "CONDUIT_PERFRMANCE_WORKERS is not a Conduit setting and is ignored; did you \
                 mean CONDUIT_PERFORMANCE_WORKERS?"
            ),
            "{w:?}"
        );
        assert!(
            w[0].starts_with("CONDUIT_PERFORMANCE_WORKERS is ignored: it sets a configuration"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("CONDUIT_ROUTER_COLOUR is not a Conduit setting"),
            "{w:?}"
        );
    }

    #[test]
    fn only_non_empty_conduit_variables_are_kept() {
        let env = Env::from_pairs([
            ("PATH", "/bin"),
            ("CONDUIT_ROUTER_HOST", "10.0.0.1"),
            ("CONDUIT_ROUTER_PORT", ""),
        ]);
        assert_eq!(
            env.first(["CONDUIT_ROUTER_PORT", "CONDUIT_ROUTER_HOST"]),
            Some(("CONDUIT_ROUTER_HOST", "10.0.0.1"))
        );
        assert_eq!(env.first(["PATH"]), None);
    }

    #[test]
    fn unknown_setting_variables_are_warned_about_with_a_suggestion() {
        let env = Env::from_pairs([
            ("CONDUIT_ROUTER_HSOT", "x"),
            ("CONDUIT_PERFORMANCE_TURBO", "1"),
            ("CONDUIT_TUNNELS_0_BIND", "x"),
            ("CONDUIT_HOME", "/tmp/h"),
            ("CONDUIT_TOKEN", "t"),
            ("CONDUIT_SOMETHING_ELSE", "x"),
        ]);
        let msgs: Vec<String> = env.unknown().iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "CONDUIT_PERFORMANCE_TURBO is not a Conduit setting and is ignored; settings \
                 are CONDUIT_<SECTION>_<KEY>, such as CONDUIT_ROUTER_HOST",
                "CONDUIT_ROUTER_HSOT is not a Conduit setting and is ignored; did you mean \
                 CONDUIT_ROUTER_HOST? settings are CONDUIT_<SECTION>_<KEY>, such as \
                 CONDUIT_ROUTER_HOST",
                "CONDUIT_SOMETHING_ELSE is not a Conduit setting and is ignored; settings are \
                 CONDUIT_<SECTION>_<KEY>, such as CONDUIT_ROUTER_HOST",
                "CONDUIT_TUNNELS_0_BIND is ignored: tunnels come from the file only \
                 ([[tunnels]] tables); unset it",
            ]
        );
    }

    /// A misspelled section is the likeliest mistake: it is warned of like a
    /// misspelled key, with the setting meant.
    #[test]
    fn a_misspelled_section_is_warned_about_with_the_setting_meant() {
        let env = Env::from_pairs([
            ("CONDUIT_PERFRMANCE_WORKERS", "3"),
            ("CONDUIT_LOGGIN_LEVEL", "debug"),
            ("CONDUIT_ROUTERS_HOST", "1.2.3.4"),
            ("CONDUIT_PERFRMANCE_WORKRES", "3"),
            ("CONDUIT_PERFRMANCE_TURBO", "1"),
            ("CONDUIT_LOG_LEVL", "debug"),
        ]);
        let msgs: Vec<String> = env.unknown().iter().map(ToString::to_string).collect();
        let tail = "settings are CONDUIT_<SECTION>_<KEY>, such as CONDUIT_ROUTER_HOST";
        assert_eq!(
            msgs,
            [
                format!(
                    "CONDUIT_LOGGIN_LEVEL is not a Conduit setting and is ignored; did you mean \
                     CONDUIT_LOGGING_LEVEL? {tail}"
                ),
                format!(
                    "CONDUIT_LOG_LEVL is not a Conduit setting and is ignored; did you mean \
                     CONDUIT_LOG_LEVEL? {tail}"
                ),
                format!(
                    "CONDUIT_PERFRMANCE_TURBO is not a Conduit setting and is ignored; did you \
                     mean a setting of [performance], CONDUIT_PERFORMANCE_<KEY>? {tail}"
                ),
                format!(
                    "CONDUIT_PERFRMANCE_WORKERS is not a Conduit setting and is ignored; did you \
                     mean CONDUIT_PERFORMANCE_WORKERS? {tail}"
                ),
                format!(
                    "CONDUIT_PERFRMANCE_WORKRES is not a Conduit setting and is ignored; did \
                     you mean CONDUIT_PERFORMANCE_WORKERS? {tail}"
                ),
                format!(
                    "CONDUIT_ROUTERS_HOST is not a Conduit setting and is ignored; did you mean \
                     CONDUIT_ROUTER_HOST? {tail}"
                ),
            ]
        );
    }

    /// Variables Conduit reads for other purposes than settings, or sets for its own
    /// children, are never warned of.
    #[test]
    fn variables_read_for_other_purposes_are_not_warned_of() {
        let env = Env::from_pairs(
            [
                "CONDUIT_HOME",
                "CONDUIT_ROUTER",
                "CONDUIT_LOG_LEVEL",
                "CONDUIT_LOG_FORMAT",
            ]
            .into_iter()
            .chain(["CONDUIT_LOG_FILE", "CONDUIT_CIPHER_SUITES", "CONDUIT_TOKEN"])
            .chain(["CONDUIT_API_TOKEN", "CONDUIT_ROUTER_KEY", "CONDUIT_WORKERS"])
            .chain([
                "CONDUIT_IO_ENGINE",
                "CONDUIT_PIN_CORES",
                "CONDUIT_KERNEL_TLS",
            ])
            .chain(["CONDUIT_ALERTS_WEBHOOK", "CONDUIT_ALERTS_SLACK"])
            .chain(QUIET_VARS.iter().copied())
            .map(|v| (v, "1")),
        );
        assert_eq!(env.unknown(), []);
    }
}
