//! `conduit logs NAME [-f] [-n N]`: a background tunnel's log,
//! `$CONDUIT_HOME/logs/NAME.log` (the registry entry's `log_file`): its current run,
//! or its last one. The file stays after the tunnel stops, so its last words can
//! still be read; starting it again moves them to `NAME.log.1`. With `-f`, a log put
//! in the file's place (another inode), truncated, or written again from the top (a
//! restart) is followed from its start; one that only grows, from where it was.
//! A tunnel started with `--log-file FILE --log-rotation …` logs to the newest
//! `FILE.YYYY-MM-DD[-HH]`, which is what is shown and followed (into the next one
//! when it begins); `FILE` itself then holds only what the process wrote outside
//! its log, such as a fatal error, shown after the log when it is newer.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::registry::Registry;

use crate::args::LogsArgs;
use crate::exit::Usage;
use crate::logging::newest_rotated;
use crate::output;

pub(crate) fn run(home: &Home, a: &LogsArgs) -> Result<()> {
    let path = log_path(home, &a.name)?;
    // With --log-rotation the log is the newest PATH.DATE; PATH itself holds only
    // what the process wrote outside its log (a fatal error), shown after the log
    // when it is newer.
    let rotated = newest_rotated(&path);
    let current = rotated.clone().unwrap_or_else(|| path.clone());
    // The log's bytes as they are (a byte that is not UTF-8 is shown, not fatal), and
    // with -n only its end: a log of gigabytes is not read whole for a few lines.
    let (f, text) = match (a.lines, &rotated) {
        (Some(n), None) => read_end(&current, n)?,
        _ => read(&current)?,
    };
    let mut shown = text.clone();
    let mut outside = match &rotated {
        Some(r) => match read(&path) {
            Ok((f, words)) => {
                if modified(&path) > modified(r) {
                    shown.extend_from_slice(&words);
                }
                Some(Follower::new(f, &words))
            }
            Err(_) => None,
        },
        None => None,
    };
    if let Some(n) = a.lines {
        shown = last_lines(&shown, n);
    }
    output::try_write(&shown)?;
    if !a.follow {
        return Ok(());
    }
    if Registry::new(home).find(&a.name).is_none() {
        // Not a silent wait: nothing comes until it starts again.
        eprintln!(
            "conduit: tunnel {:?} is not running: following its log for when it starts \
             again (Ctrl-C to stop)",
            a.name
        );
    }
    let mut log = Follower::new(f, &text);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        // A new day (or hour) of a rotated log: the rest of the old file, then the new.
        let now = match &rotated {
            Some(_) => newest_rotated(&path).unwrap_or_else(|| current.clone()),
            None => current.clone(),
        };
        let mut new = log.poll(&now)?;
        if rotated.is_some() {
            match &mut outside {
                Some(o) => new.extend(o.poll(&path)?),
                None => {
                    outside = std::fs::File::open(&path)
                        .ok()
                        .map(|f| Follower::new(f, &[]))
                }
            }
        }
        // A reader gone (`| head`) or a full disk ends `-f`.
        output::try_write(&new)?;
    }
}

/// The file at `path`, open at its end, and what it holds.
fn read(path: &std::path::Path) -> Result<(std::fs::File, Vec<u8>)> {
    let mut f = open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok((f, bytes))
}

fn open(path: &std::path::Path) -> Result<std::fs::File> {
    Ok(std::fs::File::open(path)
        .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())))?)
}

/// The file at `path`, open at its end, and enough of its end to hold its last `n`
/// lines (read backwards a block at a time).
fn read_end(path: &std::path::Path, n: usize) -> Result<(std::fs::File, Vec<u8>)> {
    const BLOCK: u64 = 64 * 1024;
    let mut f = open(path)?;
    let len = f.metadata()?.len();
    let mut start = len;
    // Blocks from the end backwards, and the newlines in them (the file's last byte
    // aside: it ends the last line).
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    while start > 0 && newlines < n {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; usize::try_from(start - from).unwrap_or(0)];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut block)?;
        let counted = if start == len {
            block.strip_suffix(b"\n").unwrap_or(&block)
        } else {
            &block[..]
        };
        newlines += counted.iter().filter(|&&b| b == b'\n').count();
        blocks.push(block);
        start = from;
    }
    // `Follower` goes on from here.
    f.seek(SeekFrom::Start(len))?;
    Ok((f, blocks.into_iter().rev().flatten().collect()))
}

/// The last `n` lines of `bytes`, each ending with a newline.
fn last_lines(bytes: &[u8], n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let from = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    let mut out = body[from..].to_vec();
    if !out.is_empty() {
        out.push(b'\n');
    }
    out
}

pub(super) fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Bytes kept from the end of what `-f` has read, to tell a file that was truncated and
/// written again past that point (a restart) from one that only grew.
const TAIL: usize = 64;

/// What `-f` has read of the log, and from which file.
struct Follower {
    file: std::fs::File,
    id: Option<(u64, u64)>,
    pos: u64,
    tail: Vec<u8>,
}

impl Follower {
    /// `file`, read up to where it stands now; `read` ends with what was read last.
    fn new(mut file: std::fs::File, read: &[u8]) -> Self {
        let id = file.metadata().ok().map(|m| identity(&m));
        let pos = file.stream_position().unwrap_or(read.len() as u64);
        let mut me = Self {
            file,
            id,
            pos: pos.saturating_sub(read.len() as u64),
            tail: Vec::new(),
        };
        me.advance(read);
        me
    }

    /// What was added to the log at `path` since the last call. When the file was
    /// replaced (another inode), truncated, or rewritten from the top past where we
    /// were, all of it, from the start: the tunnel was started again.
    fn poll(&mut self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            // Being replaced right now: look again next time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let replaced = self.id != Some(identity(&meta));
        let mut last_words = Vec::new();
        if replaced {
            // The run before (moved to NAME.log.1) may have written its last lines
            // since the previous call: still readable through the file held open.
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.file.read_to_end(&mut last_words)?;
        }
        if replaced || meta.len() < self.pos || !self.tail_still_there() {
            self.file = std::fs::File::open(path)?;
            self.id = self.file.metadata().ok().map(|m| identity(&m));
            self.pos = 0;
            self.tail.clear();
        }
        let mut buf = Vec::new();
        self.file.seek(SeekFrom::Start(self.pos))?;
        self.file.read_to_end(&mut buf)?;
        self.advance(&buf);
        last_words.extend_from_slice(&buf);
        Ok(last_words)
    }

    /// Whether the bytes last read are still where they were.
    fn tail_still_there(&mut self) -> bool {
        let start = self.pos.saturating_sub(self.tail.len() as u64);
        let mut now = vec![0; self.tail.len()];
        self.file.seek(SeekFrom::Start(start)).is_ok()
            && self.file.read_exact(&mut now).is_ok()
            && now == self.tail
    }

    fn advance(&mut self, read: &[u8]) {
        self.pos += read.len() as u64;
        self.tail.extend_from_slice(read);
        let cut = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..cut);
    }
}

/// A file's device and inode: a file put in the log's place has other ones.
#[cfg(unix)]
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// The log of the tunnel named (or with id) `name`: its registry entry's, or, for a
/// tunnel that stopped, `logs/NAME.log`.
fn log_path(home: &Home, name: &str) -> Result<PathBuf> {
    // NAME names a file under logs/: never a path out of it.
    conduit_controlplane::config::tunnel_name(name).map_err(Usage)?;
    let entry = Registry::new(home).find(name);
    if let Some(p) = entry.as_ref().and_then(|e| e.log_file.clone()) {
        return Ok(p);
    }
    // Running under a supervisor, it logs through it: logs/NAME.log, if there is one,
    // is an earlier run's, and would be shown as if it were this one's.
    if let Some(s) = entry.as_ref().and_then(|e| e.supervisor) {
        return Err(Usage(format!(
            "tunnel {name:?} runs under `conduit up --foreground` (pid {}), which writes its \
             lines with its own (to its terminal or service journal, or to its --log-file): \
             read them there",
            s.pid
        ))
        .into());
    }
    // A tunnel that stopped: its own --log-file, if it was started with one.
    if let Some(p) = conduit_controlplane::spawn::own_log_file(home, name) {
        return Ok(p);
    }
    let p = home.logs().join(format!("{name}.log"));
    if p.is_file() {
        return Ok(p);
    }
    Err(Usage(format!(
        "no log for tunnel {name:?}: background tunnels (`conduit start` without \
         --foreground) log to {}; a foreground tunnel logs to its terminal, or to its \
         --log-file",
        home.logs().join("NAME.log").display()
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_last_lines_come_from_the_end_of_a_file_whatever_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        // Bytes that are not UTF-8 are shown as they are, not an error.
        std::fs::write(&path, b"ok\n\xff\nline\n").unwrap();
        for (n, want) in [
            (0, &b""[..]),
            (1, b"line\n"),
            (2, b"\xff\nline\n"),
            (9, b"ok\n\xff\nline\n"),
        ] {
            let (_, end) = read_end(&path, n).unwrap();
            assert_eq!(last_lines(&end, n), want, "-n {n}");
        }
        // A last line without its newline gets one; a long file is read from its end.
        let mut long = Vec::new();
        for i in 0..50_000 {
            writeln!(long, "line {i}").unwrap();
        }
        long.extend_from_slice(b"partial");
        std::fs::write(&path, &long).unwrap();
        let (mut f, end) = read_end(&path, 2).unwrap();
        assert!(end.len() < long.len() / 4, "{}", end.len());
        assert_eq!(last_lines(&end, 2), b"line 49999\npartial\n");
        assert_eq!(f.stream_position().unwrap(), long.len() as u64);
    }

    fn follower(path: &std::path::Path) -> Follower {
        let (f, text) = read(path).unwrap();
        Follower::new(f, &text)
    }

    #[test]
    fn a_growing_log_gives_what_was_added_a_separator_line_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(&path, "one\n").unwrap();
        let mut f = follower(&path);
        assert_eq!(f.poll(&path).unwrap(), b"");
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"two\n--- started again ---\nthree\n").unwrap();
        assert_eq!(
            f.poll(&path).unwrap(),
            b"two\n--- started again ---\nthree\n"
        );
        w.write_all(b"four\n").unwrap();
        assert_eq!(f.poll(&path).unwrap(), b"four\n");
    }

    #[test]
    fn a_log_replaced_by_a_longer_one_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(&path, "old 1\n").unwrap();
        let mut f = follower(&path);
        // Another file in its place, already longer than what was read.
        let tmp = dir.path().join("web.log.new");
        std::fs::write(&tmp, "new 1\nnew 2\nnew 3\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(f.poll(&path).unwrap(), b"new 1\nnew 2\nnew 3\n");
        assert_eq!(f.poll(&path).unwrap(), b"");
    }

    /// A restart moves the log to NAME.log.1 and starts a new one: the old run's
    /// last lines, written after the previous poll, come first.
    #[test]
    fn a_restart_gives_the_last_words_of_the_run_before_then_the_new_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(&path, "run 1 starts\n").unwrap();
        let mut f = follower(&path);
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        old.write_all(b"run 1 drains\n").unwrap();
        std::fs::rename(&path, dir.path().join("web.log.1")).unwrap();
        old.write_all(b"run 1 stopped\n").unwrap();
        std::fs::write(&path, "run 2 starts\n").unwrap();
        assert_eq!(
            f.poll(&path).unwrap(),
            b"run 1 drains\nrun 1 stopped\nrun 2 starts\n"
        );
        assert_eq!(f.poll(&path).unwrap(), b"");
    }

    #[test]
    fn a_log_truncated_and_written_past_where_it_was_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(&path, "12:00:00 old line\n").unwrap();
        let mut f = follower(&path);
        // The same file (inode), truncated and written again within one poll.
        std::fs::write(&path, "12:05:00 new line one\n12:05:01 new line two\n").unwrap();
        assert_eq!(
            f.poll(&path).unwrap(),
            b"12:05:00 new line one\n12:05:01 new line two\n"
        );
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(f.poll(&path).unwrap(), b"short\n");
    }
}
