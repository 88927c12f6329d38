//! From a router's `[api]`, `[health]` and `[alerts]` (and a client's `[alerts]`) to
//! the settings the monitor, the alerters and the API run with. Called after
//! `validate` found no error.

use std::net::SocketAddr;
use std::time::Duration;

use super::model::{AlertsConfig, LOST_AFTER_SECS, RouterConfig};
use crate::alerts::tunnel::TunnelAlerts;
use crate::alerts::{AlertSettings, FlapSettings, Origin};
use crate::api::ApiSettings;
use crate::history::HistorySettings;
use crate::monitor::{HealthSettings, UdpProbe};

impl RouterConfig {
    /// The API's settings, or `None` when it is off. `Err` names a bad `api.bind`.
    pub fn api_settings(&self) -> Result<Option<ApiSettings>, String> {
        let a = &self.api;
        if !a.enabled {
            return Ok(None);
        }
        let bind: SocketAddr = super::validate::bind_addr(&a.bind)?;
        Ok(Some(ApiSettings {
            bind,
            token: if a.auth { a.token.clone() } else { None },
            history: HistorySettings {
                interval: Duration::from_secs(a.history_interval_secs),
                keep: usize::try_from(a.history_samples).unwrap_or(usize::MAX),
                file: a.history_file.clone(),
            },
        }))
    }

    /// Source probes and the client-link timeout.
    pub fn health_settings(&self) -> HealthSettings {
        let h = &self.health;
        HealthSettings {
            interval: Duration::from_secs(h.interval_secs),
            timeout: Duration::from_secs(h.timeout_secs),
            fall: u32::try_from(h.failures).unwrap_or(u32::MAX),
            rise: u32::try_from(h.successes).unwrap_or(u32::MAX),
            recent: Duration::from_secs(h.recent_secs),
            sources: h.sources.clone(),
            // Checked by validation: an entry that does not parse is left out.
            udp_probes: h
                .udp_probes
                .iter()
                .filter_map(|e| udp_probe_entry(e).ok())
                .collect(),
            client_timeout: Duration::from_secs(h.client_timeout_secs),
            lost_link_expiry: Duration::from_secs(h.lost_link_expiry_secs),
        }
    }

    /// Where alerts go; the host name names the router when `alerts.name` is not set.
    pub fn alert_settings(&self) -> AlertSettings {
        let name = self.alerts.name.clone().unwrap_or_else(host_name);
        self.alerts.settings(Origin::Router(name))
    }
}

impl AlertsConfig {
    /// Where the alerts of tunnel `tunnel` go (a client's `[alerts]`); the host name
    /// names its host when `alerts.name` is not set.
    pub fn tunnel_settings(&self, tunnel: &str) -> TunnelAlerts {
        TunnelAlerts {
            sinks: self.settings(Origin::Tunnel {
                name: tunnel.to_owned(),
                host: self.name.clone().unwrap_or_else(host_name),
            }),
            lost_after: Duration::from_secs(self.lost_after_secs.unwrap_or(LOST_AFTER_SECS)),
        }
    }

    fn settings(&self, origin: Origin) -> AlertSettings {
        let window = Duration::from_secs(self.flap_window_secs);
        AlertSettings {
            webhook: self.webhook.clone(),
            slack: self.slack.clone(),
            retries: u32::try_from(self.retries).unwrap_or(u32::MAX),
            timeout: Duration::from_secs(self.timeout_secs),
            backoff: Duration::from_millis(500),
            flap: FlapSettings {
                window,
                max_changes: usize::try_from(self.flap_changes).unwrap_or(usize::MAX),
                quiet: window / 2,
            },
            origin,
        }
    }
}

/// This machine's name, for alerts.
fn host_name() -> String {
    #[cfg(unix)]
    if let Ok(h) = nix::unistd::gethostname() {
        return h.to_string_lossy().into_owned();
    }
    "router".into()
}

/// One `[health] udp_probes` entry, `SOURCE=PROBE`, parsed.
pub(crate) fn udp_probe_entry(entry: &str) -> Result<(String, UdpProbe), String> {
    let Some((source, probe)) = entry.split_once('=') else {
        return Err(format!(
            "{entry:?} is not SOURCE=PROBE; write it as 10.2.0.53:53=dns or 10.2.0.9:9000=hex:0d0a"
        ));
    };
    super::validate::source_addr(source)?;
    Ok((source.to_owned(), UdpProbe::parse(probe)?))
}

#[cfg(test)]
mod tests {
    use conduit_proto::Secret;

    use super::*;

    #[test]
    fn defaults_report_a_down_source_within_30_seconds() {
        let h = RouterConfig::default().health_settings();
        let worst = h.interval * h.fall + h.timeout;
        assert!(worst <= Duration::from_secs(30), "{worst:?}");
    }

    #[test]
    fn api_without_auth_has_no_token() {
        let mut c = RouterConfig::default();
        assert_eq!(c.api_settings(), Ok(None));
        c.api.enabled = true;
        c.api.token = Some(Secret::new("t".into()));
        let a = c.api_settings().unwrap().unwrap();
        assert_eq!(a.bind, "127.0.0.1:9990".parse().unwrap());
        assert_eq!(a.token, Some(Secret::new("t".into())));
        c.api.auth = false;
        assert_eq!(c.api_settings().unwrap().unwrap().token, None);
    }
}
