//! `conduit logs NAME [-f] [-n N]`: a background tunnel's log,
//! `$CONDUIT_HOME/logs/NAME.log` (the registry entry's `log_file`): its current run,
//! or its last one. The file stays after the tunnel stops, so its last words can
//! still be read; starting it again moves them to `NAME.log.1`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::registry::Registry;

use crate::args::LogsArgs;
use crate::exit::Usage;
use crate::output;

pub(crate) fn run(home: &Home, a: &LogsArgs) -> Result<()> {
    let path = log_path(home, &a.name)?;
    let mut f = std::fs::File::open(&path)
        .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let shown = match a.lines {
        Some(n) => {
            let all: Vec<&str> = text.lines().collect();
            let mut s = all[all.len().saturating_sub(n)..].join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            s
        }
        None => text.clone(),
    };
    output::try_write(shown.as_bytes())?;
    if !a.follow {
        return Ok(());
    }
    let mut pos = text.len() as u64;
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Truncated or replaced (the tunnel was started again): from the top.
            f = std::fs::File::open(&path)?;
            pos = 0;
        }
        if len > pos {
            f.seek(SeekFrom::Start(pos))?;
            buf.clear();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            // A reader gone (`| head`) or a full disk ends `-f`.
            output::try_write(&buf)?;
        }
    }
}

/// The log of the tunnel named (or with id) `name`: its registry entry's, or, for a
/// tunnel that stopped, `logs/NAME.log`.
fn log_path(home: &Home, name: &str) -> Result<PathBuf> {
    if let Some(p) = Registry::new(home).find(name).and_then(|e| e.log_file) {
        return Ok(p);
    }
    let p = home.logs().join(format!("{name}.log"));
    if p.is_file() {
        return Ok(p);
    }
    Err(Usage(format!(
        "no log for tunnel {name:?}: background tunnels (`conduit start` without \
         --foreground) log to {}; a foreground tunnel logs to its terminal",
        home.logs().join("NAME.log").display()
    ))
    .into())
}
