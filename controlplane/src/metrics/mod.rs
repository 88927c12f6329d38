//! Prometheus metrics in the text exposition format (version 0.0.4), written by hand.
//!
//! Why not the `prometheus` or `prometheus-client` crates: every value Conduit exports
//! already lives somewhere else — per-core atomics in the data plane, the monitor's
//! published view, a few control-plane counters — and is read at scrape time. A
//! registry would mean mirroring each of them into its own metric objects (or writing
//! custom collectors, which is this file again). What the format asks of a writer is
//! small: `# HELP`/`# TYPE` once per family, escaped label values, and histograms as
//! cumulative `_bucket{le}` series with `_sum` and `_count`. The tests run the output
//! through a real parser, and the end-to-end suite through `promtool check metrics`.
//!
//! Labels are bounded by construction: per tunnel, per client key, per source in use,
//! per error kind — never per connection.
//!
//! ```text
//!  router:  data plane (Totals, Usage) + monitor View + Counters ─▶ router::render ─▶ /metrics
//!  tunnel:  data plane (Totals) + link status + Counters        ─▶ tunnel::render ─▶ GetMetrics,
//!                                                                                      --metrics-bind
//! ```

mod router;
mod tunnel;

use std::fmt::Write;

use conduit_dataplane::{Histogram, HistogramSnapshot};

pub use router::{Inputs as RouterInputs, RouterFacts, render as render_router};
pub use tunnel::render as render_tunnel;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds for TLS handshake plus `Hello`, in seconds.
pub const HANDSHAKE_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The help text of `conduit_udp_receive_buffer_drops_total`, tunnel and router alike
/// (a tunnel's sockets on its bind address; a router's sockets toward sources).
const RECEIVE_BUFFER_DROPS_HELP: &str = "Datagrams the kernel dropped because a UDP \
    socket's receive buffer was full (Linux only). Raise read_buffer_size \
    (--read-buffer-size) and net.core.rmem_max to make room for bursts.";

/// Control-plane counters: handshakes and the errors the data plane never sees.
#[derive(Debug)]
pub struct Counters {
    /// How long handshakes took (TLS plus `Hello`/`Welcome`), successful ones.
    pub handshakes: Histogram,
    /// Failed set-ups, by kind.
    errors: [std::sync::atomic::AtomicU64; SetupError::ALL.len()],
    /// Requests to the router's API refused for a missing or wrong token.
    api_refused: std::sync::atomic::AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            handshakes: Histogram::new(HANDSHAKE_SECONDS),
            errors: Default::default(),
            api_refused: Default::default(),
        }
    }
}

impl Counters {
    /// Counts one failed set-up.
    pub fn fail(&self, kind: SetupError) {
        self.errors[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one API request refused for its token.
    pub fn refuse_api(&self) {
        (self.api_refused).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// API requests refused for their token.
    pub fn api_refused(&self) -> u64 {
        (self.api_refused).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Failed set-ups by kind, in [`SetupError::ALL`] order.
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        SetupError::ALL
            .iter()
            .map(|k| {
                let n = self.errors[*k as usize].load(std::sync::atomic::Ordering::Relaxed);
                (k.as_str(), n)
            })
            .collect()
    }
}

/// Why a channel set-up (TCP, TLS, `Hello`) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// It did not finish in time.
    Timeout,
    /// TLS failed (bad records, wrong key).
    Tls,
    /// The key or token was refused.
    Unauthorized,
    /// The other end broke the protocol or closed early.
    Protocol,
    /// The other end could not be reached (client side).
    Unreachable,
}

impl SetupError {
    /// Every kind, in a fixed order.
    pub const ALL: [SetupError; 5] = [
        SetupError::Timeout,
        SetupError::Tls,
        SetupError::Unauthorized,
        SetupError::Protocol,
        SetupError::Unreachable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SetupError::Timeout => "handshake_timeout",
            SetupError::Tls => "tls",
            SetupError::Unauthorized => "unauthorized",
            SetupError::Protocol => "protocol",
            SetupError::Unreachable => "unreachable",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Metric kinds, as `# TYPE` names them.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
        self
    }

    /// A histogram's samples (the family line must come first).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (le, n) in h.cumulative() {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                format_float(le)
            };
            self.out.push_str(name);
            self.out.push_str("_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {n}");
        }
        self.sample(
            &format!("{name}_sum"),
            labels,
            h.sum_micros as f64 / 1_000_000.0,
        );
        self.sample(&format!("{name}_count"), labels, h.count());
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value.
pub trait Value {
    /// Appends the value as the format writes it.
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        out.push_str(&format_float(*self));
    }
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("conduit_x_total", Kind::Counter, "Things.\nMore.")
            .sample("conduit_x_total", &[("tunnel", "a\"b\\c\nd")], 3u64)
            .sample("conduit_x_total", &[], 0.5f64);
        assert_eq!(
            e.finish(),
            "# HELP conduit_x_total Things.\\nMore.\n\
             # TYPE conduit_x_total counter\n\
             conduit_x_total{tunnel=\"a\\\"b\\\\c\\nd\"} 3\n\
             conduit_x_total 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        static B: &[f64] = &[0.1, 1.0];
        let h = Histogram::new(B);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(1500));
        let mut e = Exposition::default();
        e.family("d_seconds", Kind::Histogram, "D.");
        e.histogram("d_seconds", &[("t", "x")], &h.snapshot());
        assert_eq!(
            e.finish(),
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{t=\"x\",le=\"0.1\"} 1\n\
             d_seconds_bucket{t=\"x\",le=\"1\"} 1\n\
             d_seconds_bucket{t=\"x\",le=\"+Inf\"} 2\n\
             d_seconds_sum{t=\"x\"} 1.55\n\
             d_seconds_count{t=\"x\"} 2\n"
        );
    }
}
