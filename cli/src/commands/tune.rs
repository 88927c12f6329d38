//! `conduit tune --check`: this host's settings against a 10 Gbps gateway's needs.
//!
//! The report goes to stdout (text, or JSON with `--format json`). When a setting
//! falls short, a one-line summary follows on stderr and the exit code is 1, so
//! provisioning scripts can gate on it.

use std::path::Path;

use anyhow::{Result, bail};
use conduit_controlplane::tune::{self, Probes};

use super::say;
use crate::args::{ShowFormat, TuneArgs};

pub(crate) fn run(a: &TuneArgs) -> Result<()> {
    let report = tune::check(Path::new("/proc/sys"), &Probes::this_process());
    match a.format {
        ShowFormat::Text => {
            for line in report.lines() {
                say(line);
            }
        }
        ShowFormat::Json => say(report.json()),
    }
    let short = report.short();
    if short > 0 {
        // An untyped error exits 1 (`exit::FAILURE`).
        bail!(
            "{short} setting{} short of a 10 Gbps gateway; apply the fixes in the report",
            if short == 1 { " falls" } else { "s fall" }
        );
    }
    Ok(())
}
