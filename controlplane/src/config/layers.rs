//! The one place precedence is decided: defaults < file < environment < command line.
//!
//! Each layer writes checked values into one merged TOML table and records where each
//! came from; a value that fails its check is reported and left out, so the layers
//! below (or the default) stay in effect and the next problem can still be found.
//! The merged table then becomes the typed tree.

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::file::FileDoc;
use super::schema::{Key, Kind, Schema, Section, closest, containing, type_of};
use super::{Origin, Origins, Problem, Report, Role, Sources};

/// A value given on the command line: `key` is `section.key`, `flag` what the user typed
/// (`--set`, `--router-host`), shown as the value's origin. `Debug` prints the value of
/// a secret key (a token, a webhook URL) as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Override {
    /// `section.key`, e.g. `router.port`.
    pub key: String,
    /// The value as text, parsed like an environment variable.
    pub value: String,
    /// The flag it came from.
    pub flag: String,
}

impl std::fmt::Debug for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self.is_secret();
        f.debug_struct("Override")
            .field("key", &self.key)
            .field("value", if secret { &"***" } else { &self.value })
            .field("flag", &self.flag)
            .finish()
    }
}

impl Override {
    /// Whether it sets a secret (a token, a webhook URL): then it is never shown,
    /// and a process handed it gets it in its environment, not on its command line.
    pub fn is_secret(&self) -> bool {
        self.key.split_once('.').is_some_and(|(s, k)| {
            [Role::Client, Role::Router].iter().any(|r| {
                Schema::of(*r)
                    .section(s)
                    .and_then(|sec| sec.key(k))
                    .is_some_and(|key| key.secret)
            })
        })
    }

    /// The variable that sets the same key: the short name users are told of where
    /// there is one (`CONDUIT_TOKEN` for `security.token`), else
    /// `CONDUIT_<SECTION>_<KEY>`.
    pub fn env_name(&self) -> String {
        let alias = self.key.split_once('.').and_then(|(s, k)| {
            [Role::Client, Role::Router].iter().find_map(|r| {
                Schema::of(*r)
                    .section(s)
                    .and_then(|sec| sec.key(k))
                    .and_then(|key| key.aliases.first())
            })
        });
        match alias {
            Some(a) => (*a).to_owned(),
            None => format!("CONDUIT_{}", self.key.replace('.', "_")).to_ascii_uppercase(),
        }
    }

    /// The variable that sets the same key ahead of any other: the one to hand a
    /// process this value in (`CONDUIT_SECURITY_TOKEN` for `security.token`), which
    /// wins over its short name (`CONDUIT_TOKEN`) the process may have inherited.
    pub fn canonical_env_name(&self) -> String {
        format!("CONDUIT_{}", self.key.replace('.', "_")).to_ascii_uppercase()
    }

    /// The value as a `role` configuration takes it, with the paths in it made
    /// absolute against the working directory: what to write where it is read from
    /// another directory (a service file). A key `role` does not know is given back
    /// as it is, for the configuration to report.
    pub fn value_from_working_dir(&self, role: Role) -> Result<String, String> {
        let key = (self.key.split_once('.')).and_then(|(s, k)| Schema::of(role).section(s)?.key(k));
        let Some(kind) = key.map(|k| k.kind) else {
            return Ok(self.value.clone());
        };
        match from_working_dir(kind, kind.parse_text(&self.value)?)? {
            Value::String(s) if matches!(kind, Kind::Path | Kind::KeyOrPath) => Ok(s),
            // Comma-separated as usual; as a TOML list when an item holds a comma
            // itself (a path), which the plain form would split.
            Value::Array(items) if kind == Kind::KeyList => {
                let items: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                Ok(if items.iter().any(|i| i.contains(',')) {
                    Value::Array(items.iter().map(|i| Value::from(*i)).collect()).to_string()
                } else {
                    items.join(",")
                })
            }
            _ => Ok(self.value.clone()),
        }
    }

    /// A value a named flag sets (`--api-bind` sets `api.bind`).
    pub fn flag(flag: &str, key: &str, value: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            value: value.into(),
            flag: flag.to_owned(),
        }
    }

    /// Parses `--set section.key=value`.
    pub fn parse_set(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((k, v)) if k.contains('.') => Ok(Self {
                key: k.trim().to_owned(),
                value: v.to_owned(),
                flag: format!("--set {}", k.trim()),
            }),
            _ => Err(format!(
                "invalid --set {text:?}: expected SECTION.KEY=VALUE, such as router.port=9999"
            )),
        }
    }
}

/// What the variable `var` should hold where it is read from another directory (a
/// service's environment file): `value` with the paths in it made absolute. `None`
/// when `var` sets no path, or `value` names none that is relative.
pub fn env_value_from_working_dir(var: &str, value: &str) -> Option<String> {
    let (role, key) = [Role::Client, Role::Router].into_iter().find_map(|role| {
        Schema::of(role).sections.iter().find_map(|s| {
            let key = (s.keys.iter()).find(|k| s.env_name(k) == var || k.aliases.contains(&var))?;
            Some((role, format!("{}.{}", s.name, key.name)))
        })
    })?;
    let given = Override::flag(var, &key, value);
    (given.value_from_working_dir(role).ok()).filter(|v| v != value)
}

/// Resolves the four layers into the typed tree `T`.
///
/// `Err` when there is no tree to check (file missing or not TOML).
pub(crate) fn resolve<T: DeserializeOwned>(
    role: Role,
    sources: &Sources,
) -> Result<(T, Origins, Report), Report> {
    let doc = match &sources.contents {
        Some(text) => FileDoc::parse(&sources.file, text)?,
        None if sources.file.as_os_str().is_empty() => FileDoc::empty(),
        None => FileDoc::read(&sources.file, role, sources.file_flag)?,
    };
    let schema = Schema::of(role);
    let mut m = Merge {
        role,
        schema,
        table: Table::new(),
        origins: Origins::default(),
        report: Report::default(),
    };
    m.file(&doc);
    m.env(sources);
    m.cli(sources);
    m.required(&doc);
    m.report.extend(sources.env.unknown());
    if role == Role::Client && sources.env.first(["CONDUIT_ROUTER"]).is_some() {
        m.report.push(Problem::warning(
            "router",
            "CONDUIT_ROUTER is `conduit start --router`'s and is ignored here: a file's router \
             is router.host and router.port (CONDUIT_ROUTER_HOST, CONDUIT_ROUTER_PORT)",
        ));
    }
    let Merge {
        table,
        origins,
        mut report,
        ..
    } = m;
    match Value::Table(table).try_into::<T>() {
        Ok(t) => Ok((t, origins, report)),
        Err(e) => {
            // The schema check should make this unreachable; say so if it is not.
            report.push(Problem::error(
                "",
                format!("the configuration does not fit Conduit's settings: {e}"),
            ));
            Err(report)
        }
    }
}

struct Merge {
    role: Role,
    schema: &'static Schema,
    table: Table,
    origins: Origins,
    report: Report,
}

impl Merge {
    fn file(&mut self, doc: &FileDoc) {
        for (name, value) in &doc.table {
            let origin = doc.origin(name);
            if let Some(section) = self.schema.section(name) {
                let Value::Table(t) = value else {
                    self.report.push(
                        Problem::error(
                            name.as_str(),
                            format!("expected a table ([{name}]), found {}", type_of(value)),
                        )
                        .at(&origin),
                    );
                    continue;
                };
                let checked = self.keys(doc, name, t, section.keys, Some(section));
                let merged = self.section(name);
                for (k, v) in checked {
                    merged.insert(k, v);
                }
            } else if let (true, Some(keys)) = (name == "tunnels", self.schema.tunnels) {
                self.tunnels(doc, value, keys, &origin);
            } else {
                let message = self.unknown_section(name, value);
                let other = Schema::of(self.role.other());
                let theirs = match value {
                    Value::Table(_) => other.section(name).is_some(),
                    Value::Array(_) => name == "tunnels" && other.tunnels.is_some(),
                    _ => false,
                };
                if theirs {
                    self.report.other_kind += 1;
                }
                self.report
                    .push(Problem::error(name.as_str(), message).at(&origin));
            }
        }
    }

    fn tunnels(&mut self, doc: &FileDoc, value: &Value, keys: &[Key], origin: &Origin) {
        let items = match value {
            Value::Array(items) if items.iter().all(Value::is_table) => items,
            _ => {
                self.report.push(
                    Problem::error(
                        "tunnels",
                        format!(
                            "expected [[tunnels]] tables, found {}; write each tunnel as a \
                             [[tunnels]] table",
                            type_of(value)
                        ),
                    )
                    .at(origin),
                );
                return;
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("tunnels[{i}]");
            let t = item.as_table().cloned().unwrap_or_default();
            out.push(Value::Table(self.keys(doc, &path, &t, keys, None)));
            self.origins.set(path.clone(), doc.origin(&path));
        }
        self.table.insert("tunnels".into(), Value::Array(out));
    }

    /// Checks one table's keys from the file; returns the good ones.
    fn keys(
        &mut self,
        doc: &FileDoc,
        prefix: &str,
        t: &Table,
        keys: &[Key],
        section: Option<&Section>,
    ) -> Table {
        let mut good = Table::new();
        for (k, v) in t {
            let path = format!("{prefix}.{k}");
            let origin = doc.origin(&path);
            let Some(key) = keys.iter().find(|key| key.name == k.as_str()) else {
                let message = self.unknown_key(prefix, k, keys, section);
                if self.of_other_kind(prefix, k) {
                    self.report.other_kind += 1;
                }
                self.report.push(Problem::error(path, message).at(&origin));
                continue;
            };
            if let Err(e) = key.kind.check(k, v) {
                self.report.push(Problem::error(path, e).at(&origin));
                continue;
            }
            let v = self.list_items(doc, &path, key.kind, v);
            let v = match (key.kind, &v) {
                (Kind::Path, Value::String(s)) => Value::String(doc.resolve(s)),
                (Kind::KeyOrPath, Value::String(s)) => Value::String(doc.resolve_keys(s)),
                (Kind::KeyList, Value::Array(items)) => Value::Array(
                    items
                        .iter()
                        .map(|item| match item.as_str() {
                            Some(s) => Value::String(doc.resolve_keys(s)),
                            None => item.clone(),
                        })
                        .collect(),
                ),
                _ => v,
            };
            // Each item of a list has its line, for the problems `validate` finds in it.
            for i in 0..v.as_array().map_or(0, Vec::len) {
                let item = format!("{path}[{i}]");
                let at = doc.origin(&item);
                self.origins.set(item, at);
            }
            good.insert(k.clone(), v);
            self.origins.set(path, origin);
        }
        good
    }

    /// `v`, a value from the file at `path`, with each bad item of a list reported
    /// under its own path (`router.allow[3]`) and kept as text in its place: the
    /// items after it keep their index and are still checked, and a list of bad
    /// items is not taken for an empty one. Problems `validate` finds again on those
    /// items are dropped ([`super::load_client`]).
    fn list_items(&mut self, doc: &FileDoc, path: &str, kind: Kind, v: &Value) -> Value {
        let Value::Array(items) = v else {
            return v.clone();
        };
        let bad = kind.bad_items(items);
        if bad.is_empty() {
            return v.clone();
        }
        let mut items = items.clone();
        for (i, why) in bad {
            let item_path = format!("{path}[{i}]");
            let origin = doc.origin(&item_path);
            self.report.push(Problem::error(item_path, why).at(&origin));
            if let Some(item) = items.get_mut(i)
                && !item.is_str()
            {
                *item = Value::String(item.to_string());
            }
        }
        Value::Array(items)
    }

    fn env(&mut self, sources: &Sources) {
        for section in self.schema.sections {
            for key in section.keys {
                let canonical = section.env_name(key);
                let names = std::iter::once(canonical.as_str()).chain(key.aliases.iter().copied());
                if let Some((var, text)) = sources.env.first(names.clone()) {
                    // Two names for one key that disagree: the first wins, said.
                    let losers: Vec<&str> = names
                        .filter(|n| *n != var)
                        .filter(|n| sources.env.first([*n]).is_some_and(|(_, t)| t != text))
                        .collect();
                    if !losers.is_empty() {
                        self.report.push(Problem::warning(
                            format!("{}.{}", section.name, key.name),
                            format!(
                                "{var} and {} are both set, to different values: {var} wins; \
                                 unset one of them",
                                losers.join(", ")
                            ),
                        ));
                    }
                    let var = var.to_owned();
                    self.set(section, key, text, Origin::Env(var));
                }
            }
        }
    }

    fn cli(&mut self, sources: &Sources) {
        for o in &sources.overrides {
            let origin = Origin::Cli(o.flag.clone());
            let found = o.key.split_once('.').and_then(|(s, k)| {
                let section = self.schema.section(s)?;
                Some((section, section.key(k)?))
            });
            match found {
                Some((section, key)) => self.set(section, key, &o.value, origin),
                None => {
                    let in_section = o
                        .key
                        .split_once('.')
                        .and_then(|(s, k)| Some((self.schema.section(s)?, k)));
                    let message = match in_section {
                        // The section is right: the key is what is wrong.
                        Some((section, k)) => {
                            let names: Vec<&str> = section.keys.iter().map(|k| k.name).collect();
                            let hint = closest(k, names.iter().copied())
                                .or_else(|| containing(k, names.iter().copied()))
                                .map_or(String::new(), |c| {
                                    format!("did you mean {}.{c}? ", section.name)
                                });
                            format!(
                                "unknown key in [{}]; {hint}valid keys: {}",
                                section.name,
                                names.join(", ")
                            )
                        }
                        None => {
                            let valid: Vec<String> = (self.schema.sections.iter())
                                .flat_map(|s| {
                                    s.keys.iter().map(move |k| format!("{}.{}", s.name, k.name))
                                })
                                .collect();
                            let hint = match closest(&o.key, valid.iter().map(String::as_str)) {
                                Some(k) => format!("did you mean {k}? "),
                                None => String::new(),
                            };
                            format!(
                                "unknown key; {hint}only the keys of {} can be set this way \
                                 (SECTION.KEY)",
                                self.section_list()
                            )
                        }
                    };
                    self.report
                        .push(Problem::error(o.key.as_str(), message).at(&origin));
                }
            }
        }
    }

    /// Sets a value given as text (environment or command line).
    fn set(&mut self, section: &Section, key: &Key, text: &str, origin: Origin) {
        let path = format!("{}.{}", section.name, key.name);
        match (key.kind.parse_text(text)).and_then(|v| from_working_dir(key.kind, v)) {
            Ok(v) => {
                self.replaced_list(&path, &origin);
                self.section(section.name).insert(key.name.into(), v);
                self.origins.forget_items(&path);
                self.origins.set(path, origin);
            }
            Err(e) => self.report.push(Problem::error(path, e).at(&origin)),
        }
    }

    /// Warns when a list the file gives (`allow`, `allow_from`…) is replaced by one
    /// given at `origin`: lists are taken whole from where they are given last, so
    /// `--allow X` on a router whose file allows A and B allows X alone.
    fn replaced_list(&mut self, path: &str, origin: &Origin) {
        let file = self.origins.get(path).clone();
        if !matches!(file, Origin::File { .. }) {
            return;
        }
        let (section, key) = path.split_once('.').unwrap_or((path, ""));
        let n = self
            .table
            .get(section)
            .and_then(|t| t.get(key))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if n == 0 {
            return;
        }
        let given = match origin {
            Origin::Cli(flag) => flag.clone(),
            Origin::Env(var) => var.clone(),
            Origin::File { .. } | Origin::Default => return,
        };
        let (values, them) = if n == 1 {
            ("value", "it")
        } else {
            ("values", "them")
        };
        self.report.push(Problem::warning(
            path,
            format!(
                "{given} replaces the {n} {values} of the file ({file}) rather than adding \
                 to {them}: a list is taken whole from where it is given last; give every \
                 value with {given}, or add yours to the file"
            ),
        ));
    }

    fn required(&mut self, doc: &FileDoc) {
        for section in self.schema.sections {
            for key in section.keys.iter().filter(|k| !k.required.is_empty()) {
                let table = self.table.get(section.name).and_then(Value::as_table);
                let present = table.is_some_and(|t| t.contains_key(key.name));
                let path = format!("{}.{}", section.name, key.name);
                // The plain transport checks no router keys.
                let plain = table
                    .and_then(|t| t.get("transport"))
                    .and_then(Value::as_str)
                    == Some("plain");
                if path == "router.public_key" && plain {
                    continue;
                }
                if !present && !self.reported(&path) {
                    self.report.push(Problem::error(
                        path,
                        format!(
                            "missing; add {} under [{}], or set {}",
                            key.required,
                            section.name,
                            section.env_name(key)
                        ),
                    ));
                }
            }
        }
        let Some(keys) = self.schema.tunnels else {
            return;
        };
        let tunnels = self.table.get("tunnels").and_then(Value::as_array);
        if tunnels.is_none_or(|t| t.is_empty()) {
            if !self.reported("tunnels") {
                self.report.push(Problem::error(
                    "tunnels",
                    "no tunnels; add a [[tunnels]] table with name, source and bind \
                     (see deploy/conduit.example.toml)",
                ));
            }
            return;
        }
        for (i, t) in tunnels.into_iter().flatten().enumerate() {
            let path = format!("tunnels[{i}]");
            for key in keys.iter().filter(|k| !k.required.is_empty()) {
                let key_path = format!("{path}.{}", key.name);
                let missing = t.as_table().is_some_and(|t| !t.contains_key(key.name));
                if missing && !self.reported(&key_path) {
                    self.report.push(
                        Problem::error(
                            key_path,
                            format!("missing; add {} to this [[tunnels]] table", key.required),
                        )
                        .at(&doc.origin(&path)),
                    );
                }
            }
        }
    }

    /// True when a problem was already reported at `path` (a bad value is not also
    /// "missing").
    fn reported(&self, path: &str) -> bool {
        self.report.problems.iter().any(|p| p.path == path)
    }

    fn section(&mut self, name: &str) -> &mut Table {
        let v = self
            .table
            .entry(name.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !v.is_table() {
            *v = Value::Table(Table::new());
        }
        match v {
            Value::Table(t) => t,
            _ => unreachable!("just made a table"),
        }
    }

    fn section_list(&self) -> String {
        self.schema
            .sections
            .iter()
            .map(|s| format!("[{}]", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn unknown_section(&self, name: &str, value: &Value) -> String {
        if !value.is_table() && !value.is_array() {
            // A key at the top level: say which section it belongs in.
            let home = self
                .schema
                .sections
                .iter()
                .find(|s| s.key(name).is_some())
                .map(|s| s.name);
            if let Some(s) = home {
                return format!("unknown key at the top level; put it under [{s}]");
            }
        }
        if name == "tunnels" {
            return "a router's file has no tunnels; [[tunnels]] belong in a client's \
                    conduit.toml (for `conduit up -f`; `config validate` checks one without \
                    --router)"
                .into();
        }
        let hint = match closest(
            name,
            self.schema
                .sections
                .iter()
                .map(|s| s.name)
                .chain(self.schema.tunnels.map(|_| "tunnels")),
        ) {
            Some(s) => format!("did you mean {s}? "),
            None => String::new(),
        };
        format!(
            "unknown section; {hint}valid sections: {}",
            self.schema.section_names()
        )
    }

    fn unknown_key(
        &self,
        prefix: &str,
        k: &str,
        keys: &[Key],
        section: Option<&Section>,
    ) -> String {
        let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
        let hint = match closest(k, names.iter().copied())
            .or_else(|| containing(k, names.iter().copied()))
        {
            Some(n) => format!("did you mean {n}? "),
            None => String::new(),
        };
        let table = match section {
            Some(s) => format!("[{}]", s.name),
            None => "[[tunnels]]".to_owned(),
        };
        let mut m = format!(
            "unknown key in {table}; {hint}valid keys: {}",
            names.join(", ")
        );
        // A key of the other kind of file: the user is probably checking the wrong way.
        if self.of_other_kind(prefix, k) {
            let other = match self.role {
                Role::Client => {
                    "a router's file (for `conduit router --config`; `config validate` checks \
                     one with --router)"
                }
                Role::Router => {
                    "a client's file (for `conduit up -f`; `config validate` checks one \
                     without --router)"
                }
            };
            m.push_str(&format!("; `{k}` belongs in {other}"));
        } else if let Some(home) = (self.schema.sections.iter())
            .find(|s| section.is_none_or(|here| here.name != s.name) && s.key(k).is_some())
        {
            // A key of another section: a tunnel's setting that is the file's.
            let whose = if section.is_none() {
                " (it applies to every tunnel of the file)"
            } else {
                ""
            };
            m.push_str(&format!("; `{k}` is a key of [{}]{whose}", home.name));
        }
        m
    }

    /// True when `prefix.k` is a key of the other kind of file.
    fn of_other_kind(&self, prefix: &str, k: &str) -> bool {
        Schema::of(self.role.other())
            .section(prefix)
            .is_some_and(|s| s.key(k).is_some())
    }
}

/// `v`, given through the environment or the command line, with the paths in it
/// made absolute against the working directory: a relative one would name another
/// file to a service started from `/`, and the same text typed in another
/// directory would look unchanged to `up`. Keys written inline stay as they are.
fn from_working_dir(kind: Kind, v: Value) -> Result<Value, String> {
    let absolute = |s: &str| {
        std::path::absolute(s)
            .map(|p| p.display().to_string())
            .map_err(|e| format!("cannot make {s:?} absolute ({e}); give an absolute path"))
    };
    let pins = |s: &str| crate::keys::absolute_pins(s).map_err(|e| e.to_string());
    match (kind, v) {
        (Kind::Path, Value::String(s)) => absolute(&s).map(Value::String),
        (Kind::KeyOrPath, Value::String(s)) => pins(&s).map(Value::String),
        (Kind::KeyList, Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => pins(&s).map(Value::String),
                other => Ok(other),
            })
            .collect::<Result<_, _>>()
            .map(Value::Array),
        (_, v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_overrides_are_told_apart_with_their_variables() {
        let token = Override::parse_set("security.token=t").unwrap();
        assert!(token.is_secret());
        assert_eq!(token.env_name(), "CONDUIT_TOKEN");
        assert_eq!(token.canonical_env_name(), "CONDUIT_SECURITY_TOKEN");
        let hook = Override::parse_set("alerts.webhook=https://h/x").unwrap();
        assert!(hook.is_secret());
        assert_eq!(hook.env_name(), "CONDUIT_ALERTS_WEBHOOK");
        assert!(
            !Override::parse_set("performance.workers=2")
                .unwrap()
                .is_secret()
        );
    }

    #[test]
    fn secret_overrides_print_masked() {
        let o = Override::flag("--api-token", "api.token", "hunter2");
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let o = Override::flag("--api-bind", "api.bind", "127.0.0.1:1");
        assert!(format!("{o:?}").contains("127.0.0.1:1"));
    }

    #[test]
    fn set_flags_parse() {
        assert_eq!(
            Override::parse_set("router.port=1234"),
            Ok(Override {
                key: "router.port".into(),
                value: "1234".into(),
                flag: "--set router.port".into()
            })
        );
        assert_eq!(
            Override::parse_set("port=1"),
            Err(
                "invalid --set \"port=1\": expected SECTION.KEY=VALUE, such as router.port=9999"
                    .into()
            )
        );
    }
}
