//! Latency histograms and their JSON summary, in microseconds.

use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest latency a histogram tracks: one minute, in nanoseconds. Longer samples
/// are clamped to it (they would be failures anyway).
const MAX_NANOS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds with 3 significant digits.
pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).context("creating a latency histogram")
}

/// Records one sample, clamped to the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(MAX_NANOS);
    h.saturating_record(nanos.clamp(1, MAX_NANOS));
}

/// `{count, mean_us, p50_us, p99_us, p999_us, max_us}` of a histogram.
pub(crate) fn to_json(h: &Histogram<u64>) -> Value {
    let us = |nanos: u64| nanos as f64 / 1_000.0;
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "mean_us": h.mean() / 1_000.0,
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}
