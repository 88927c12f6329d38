//! Command output on stdout.
//!
//! What a command prints is its result: output that cannot be written (a full disk,
//! a reader that went away) must fail the command, neither panic (as `print!` does)
//! nor vanish. [`say`] and [`write()`] keep the first write error and let the command
//! go on, so one that changes things (`down`, `kill`, `up`) finishes its work; the
//! dispatcher then turns the kept error into the exit status ([`check`]).
//!
//! Processes that run until stopped (`router`, `start --foreground`) [`announce`]
//! their lines instead: whoever launched them may have stopped reading, and that
//! must not stop a router or a tunnel.
//!
//! SIGPIPE stays ignored, as Rust sets it up, so a closed pipe is an EPIPE error
//! here (`conduit list | head -1`) and on every socket.

use std::fmt::Display;
use std::io::{self, Write};
use std::sync::OnceLock;

/// Standard output could not be written.
#[derive(Debug, Clone)]
pub(crate) struct StdoutError {
    kind: io::ErrorKind,
    why: String,
}

impl StdoutError {
    /// The reader went away (`| head`): the command ends without a word.
    pub(crate) fn reader_gone(&self) -> bool {
        self.kind == io::ErrorKind::BrokenPipe
    }
}

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to stdout: {}", self.why)
    }
}

impl std::error::Error for StdoutError {}

/// The first write to stdout that failed, for [`check`].
static FAILED: OnceLock<StdoutError> = OnceLock::new();

/// Writes `bytes` to stdout and flushes them; after a failed write, writes nothing.
/// The first error is kept for [`check`] and returned.
pub(crate) fn try_write(bytes: &[u8]) -> Result<(), StdoutError> {
    if let Some(e) = FAILED.get() {
        return Err(e.clone());
    }
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| {
            let e = StdoutError {
                kind: e.kind(),
                why: e.to_string(),
            };
            FAILED.get_or_init(|| e).clone()
        })
}

/// Prints `text` as it is.
pub(crate) fn write(text: impl Display) {
    let _ = try_write(text.to_string().as_bytes());
}

/// Prints a line right away (scripts and tests wait for these lines).
pub(crate) fn say(line: impl Display) {
    write(format_args!("{line}\n"));
}

/// Prints a line of a process that runs until stopped; a write error is ignored
/// (see the module's overview) and not kept.
pub(crate) fn announce(line: impl Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The first write error since the process started, if any.
pub(crate) fn check() -> Result<(), StdoutError> {
    FAILED.get().cloned().map_or(Ok(()), Err)
}
