//! The file layer: read the TOML file, report every syntax error with its line and
//! column, and remember the line of every key so problems and `show` can point at it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{Origin, Problem, Report, Role};

/// What to say when `path`, a `role` file named by `flag`, does not exist.
pub fn missing(path: &Path, role: Role, flag: &str) -> String {
    if path.file_name().is_some_and(|n| n == "-") {
        return format!(
            "no configuration file at {}: `-` is a file name here, not standard input; give \
             a file on disk with {flag} FILE (`config validate` and `config show` also read \
             {flag} /dev/stdin)",
            path.display()
        );
    }
    let router = match role {
        Role::Client => "",
        Role::Router => " --router",
    };
    format!(
        "no configuration file at {0}: create it with `conduit config init{router} -f {0}` \
         (a documented starting file) or name another file with {flag} FILE",
        path.display()
    )
}

/// The most of a configuration file read: a file past it (or a device that never
/// ends, `-f /dev/urandom`) is no configuration.
const MAX_FILE: u64 = 4 << 20;

/// Reads `path` whole, or fails with `FileTooLarge` past `max` bytes.
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::ErrorKind::FileTooLarge.into());
    }
    Ok(bytes)
}

/// Opens `path` to read without waiting for a writer: a named pipe nobody writes
/// to would block the open, and the command, for good. Its reads block again (a
/// pipe with a writer, such as `-f <(…)`, gives what it is sent; one without, an
/// end of file at once).
#[cfg(unix)]
pub(crate) fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)?;
    fcntl(&file, FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(file)
}

#[cfg(not(unix))]
pub(crate) fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// A parsed configuration file.
#[derive(Debug)]
pub(crate) struct FileDoc {
    pub(crate) path: PathBuf,
    pub(crate) table: toml::Table,
    /// Key path (`router.port`, `tunnels[1]`, `tunnels[1].bind`) → 1-based line.
    lines: HashMap<String, usize>,
}

/// The text of `path`, a `role` file named by `flag`; `Err` holds why there is none
/// to check (no file, too large, not UTF-8).
pub fn text(path: &Path, role: Role, flag: &str) -> Result<String, Report> {
    let text = read_at_most(path, MAX_FILE).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => missing(path, role, flag),
            std::io::ErrorKind::FileTooLarge => format!(
                "{} is larger than {} MiB: not a Conduit configuration file (check -f)",
                path.display(),
                MAX_FILE >> 20
            ),
            _ => format!("cannot read {}: {e}", path.display()),
        };
        fatal(why)
    })?;
    String::from_utf8(text).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = at
            - before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        fatal(format!(
            "{}:{line}:{column}: not UTF-8 text (at byte offset {at}); save the file as UTF-8",
            path.display(),
        ))
    })
}

impl FileDoc {
    /// Reads and parses `path`, a `role` file named by `flag`; `Err` holds why there
    /// is nothing to check.
    pub(crate) fn read(path: &Path, role: Role, flag: &str) -> Result<Self, Report> {
        Self::parse(path, &text(path, role, flag)?)
    }

    /// No file: every key keeps its default unless the environment or a flag sets it.
    pub(crate) fn empty() -> Self {
        Self {
            path: PathBuf::new(),
            table: toml::Table::new(),
            lines: HashMap::new(),
        }
    }

    /// Parses `text`, the contents of `path`.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, Report> {
        let (doc, mut errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.span().map_or(usize::MAX, |s| s.start));
            let mut report = Report::default();
            for e in errors {
                let at = position(path, text, e.span());
                let what = e.span().and_then(|s| text.get(s)).map(str::trim);
                let message = match what {
                    // toml names no key: the span is the second one.
                    Some(key) if e.message() == "duplicate key" && !key.is_empty() => format!(
                        "{at}: invalid TOML: {key} appears twice (a key or table may appear only once); \
                         remove one of them"
                    ),
                    _ => format!("{at}: invalid TOML: {}; fix the syntax there", e.message()),
                };
                report.push(Problem::error("", message));
            }
            return Err(report);
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = position(path, text, e.span());
            let what = e.span().and_then(|s| text.get(s)).map(str::trim);
            let message = match what {
                // TOML's integers are 64-bit.
                Some(n) if e.message().starts_with("invalid type: integer") => format!(
                    "{at}: invalid TOML: {n} is outside what a TOML integer holds \
                     (±9223372036854775807); give a value in the key's range"
                ),
                _ => format!("{at}: invalid TOML: {}; fix the value there", e.message()),
            };
            fatal(message)
        })?;
        let mut lines = HashMap::new();
        walk(&LineIndex::new(text), doc.get_ref(), "", &mut lines);
        Ok(Self {
            path: path.to_owned(),
            table,
            lines,
        })
    }

    /// Where the value at `key_path` came from.
    pub(crate) fn origin(&self, key_path: &str) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line: self.lines.get(key_path).copied(),
        }
    }

    /// Resolves a path written in the file against the file's directory, its `.`
    /// parts and doubled slashes left out: one file written two ways
    /// (`keys/r.pub`, `./keys/r.pub`) is one path, and so one digest for `up`.
    pub(crate) fn resolve(&self, p: &str) -> String {
        let p = Path::new(p);
        let joined = match self.path.parent() {
            Some(dir) if !p.is_absolute() => dir.join(p),
            _ => p.to_owned(),
        };
        // `components` drops every `.` but a leading one.
        let tidy: PathBuf = joined.components().collect();
        tidy.display().to_string()
    }

    /// Resolves a router's pinned keys as written in the file: keys separated by `|`,
    /// each inline (`ed25519:…`, kept) or the path of a `.pub` file (resolved).
    pub(crate) fn resolve_keys(&self, keys: &str) -> String {
        keys.split('|')
            .map(|one| {
                let one = one.trim();
                if one.starts_with("ed25519:") || one.is_empty() {
                    one.to_owned()
                } else {
                    self.resolve(one)
                }
            })
            .collect::<Vec<_>>()
            .join("|")
    }
}

fn fatal(message: String) -> Report {
    Report {
        problems: vec![Problem::error("", message)],
        other_kind: 0,
    }
}

fn walk(at: &LineIndex<'_>, table: &DeTable<'_>, prefix: &str, lines: &mut HashMap<String, usize>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        lines.insert(path.clone(), at.line(k.span().start));
        walk_value(at, v.get_ref(), &path, lines);
    }
}

fn walk_value(at: &LineIndex<'_>, v: &DeValue<'_>, path: &str, lines: &mut HashMap<String, usize>) {
    match v {
        DeValue::Table(t) => walk(at, t, path, lines),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                lines.insert(item_path.clone(), at.line(item.span().start));
                walk_value(at, item.get_ref(), &item_path, lines);
            }
        }
        _ => {}
    }
}

/// `PATH:LINE:COLUMN` of the start of `span` in `text`, or `PATH` without one.
fn position(path: &Path, text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let (line, col) = LineIndex::new(text).line_col(span.start);
            format!("{}:{line}:{col}", path.display())
        }
        None => path.display().to_string(),
    }
}

/// The byte offset where each line of a text starts, found in one pass, so that the
/// line of any offset is a binary search: a file with a key on every one of its
/// lines costs time in proportion to its size, not to its size squared.
struct LineIndex<'a> {
    text: &'a str,
    /// Ascending; the first is 0, then one past every `\n`.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// 1-based line of byte `offset` (an offset past the end counts as the end).
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        // The count of line starts at or before `offset`; never 0, as 0 is one.
        self.starts.partition_point(|&s| s <= offset)
    }

    /// 1-based line and column (in characters) of byte `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line(offset);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(r: Report) -> Vec<String> {
        r.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_key_knows_its_line() {
        let text = "[router]\nhost = \"h\"\n\n[[tunnels]]\nname = \"a\"\n\n[[tunnels]]\nname = \"b\"\nbind = \"x\"\n";
        let doc = FileDoc::parse(Path::new("c.toml"), text).unwrap();
        let line = |p: &str| match doc.origin(p) {
            Origin::File { line, .. } => line,
            o => panic!("{o:?}"),
        };
        assert_eq!(line("router"), Some(1));
        assert_eq!(line("router.host"), Some(2));
        assert_eq!(line("tunnels[0].name"), Some(5));
        assert_eq!(line("tunnels[1].bind"), Some(9));
        assert_eq!(line("tunnels[1]"), Some(7));
        assert_eq!(line("nowhere"), None);
        assert_eq!(doc.origin("router.host").to_string(), "c.toml:2");
    }

    /// Lines and columns come from one table of line starts, found in one pass: the
    /// same answers as counting from the start of the text, for every offset.
    #[test]
    fn line_index_gives_the_line_and_column_of_every_offset() {
        let text = "a = 1\r\n\n[router]\nhost = \"réseau\"\nport = 2";
        let at = LineIndex::new(text);
        assert_eq!(at.starts, [0, 7, 8, 17, 34]);
        assert_eq!(at.line_col(0), (1, 1));
        assert_eq!(at.line_col(4), (1, 5));
        // The `\r` and the `\n` still belong to the line they end.
        assert_eq!(at.line_col(5), (1, 6));
        assert_eq!(at.line_col(6), (1, 7));
        assert_eq!(at.line_col(7), (2, 1));
        assert_eq!(at.line_col(8), (3, 1));
        assert_eq!(at.line_col(9), (3, 2));
        assert_eq!(at.line_col(17), (4, 1));
        // Columns count characters: `é` is two bytes, one column.
        let quote = text.rfind('"').unwrap();
        assert_eq!(at.line_col(quote), (4, 15));
        assert_eq!(at.line_col(34), (5, 1));
        // The last line has no `\n`; its end, and any offset past it, is its end.
        assert_eq!(at.line_col(text.len()), (5, 9));
        assert_eq!(at.line_col(text.len() + 10), (5, 9));
        assert_eq!(at.line(text.len() + 10), 5);
        for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
            assert_eq!(at.line_col(offset), (line, col), "offset {offset}");
            assert_eq!(at.line(offset), line, "offset {offset}");
        }
        assert_eq!(LineIndex::new("").line_col(0), (1, 1));
    }

    /// Keys deep in a long file, each on its own line, get that line (the walk uses
    /// the table of line starts).
    #[test]
    fn keys_and_items_on_many_lines_know_their_line() {
        let mut text = String::from("[[tunnels]]\nname = \"a\"\nallow_from = [\n");
        for _ in 0..1000 {
            text.push_str("  \"10.0.0.1\",\n");
        }
        text.push_str("]\nbind = \"127.0.0.1:1\"\n");
        let doc = FileDoc::parse(Path::new("c.toml"), &text).unwrap();
        let line = |p: &str| match doc.origin(p) {
            Origin::File { line, .. } => line,
            o => panic!("{o:?}"),
        };
        assert_eq!(line("tunnels[0].allow_from"), Some(3));
        assert_eq!(line("tunnels[0].allow_from[0]"), Some(4));
        assert_eq!(line("tunnels[0].allow_from[999]"), Some(1003));
        assert_eq!(line("tunnels[0].bind"), Some(1005));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = FileDoc::parse(Path::new("c.toml"), "[router]\nhost = \n").unwrap_err();
        assert_eq!(
            msgs(err),
            [
                "c.toml:2:8: invalid TOML: string values must be quoted, expected literal string; fix the syntax there"
            ]
        );
        let err = FileDoc::parse(Path::new("c.toml"), "a = 1\na = 2\n").unwrap_err();
        assert_eq!(
            msgs(err),
            [
                "c.toml:2:1: invalid TOML: a appears twice (a key or table may appear only \
                 once); remove one of them"
            ]
        );
        let err = FileDoc::parse(Path::new("c.toml"), "[router]\n[router]\n").unwrap_err();
        assert_eq!(
            msgs(err),
            [
                "c.toml:2:2: invalid TOML: router appears twice (a key or table may appear \
                 only once); remove one of them"
            ]
        );
        let err = FileDoc::parse(
            Path::new("c.toml"),
            "[router]\nport = 99999999999999999999\n",
        )
        .unwrap_err();
        assert_eq!(
            msgs(err),
            [
                "c.toml:2:8: invalid TOML: 99999999999999999999 is outside what a TOML integer \
                 holds (±9223372036854775807); give a value in the key's range"
            ]
        );
    }

    /// A named pipe nobody writes to reads as empty, at once: `config validate -f
    /// fifo` does not hang.
    #[cfg(unix)]
    #[test]
    fn a_pipe_without_a_writer_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_at_most(&path, MAX_FILE).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_file_that_is_not_utf8_is_named_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, b"[router]\nhost = \"r\xe9seau\"\n").unwrap();
        let err = FileDoc::read(&path, Role::Client, "-f").unwrap_err();
        assert_eq!(
            msgs(err),
            [format!(
                "{}:2:10: not UTF-8 text (at byte offset 18); save the file as UTF-8",
                path.display()
            )]
        );
    }

    #[test]
    fn a_missing_file_says_how_to_make_one() {
        let err =
            FileDoc::read(Path::new("/nonexistent/conduit.toml"), Role::Client, "-f").unwrap_err();
        assert_eq!(
            msgs(err),
            [
                "no configuration file at /nonexistent/conduit.toml: create it \
              with `conduit config init -f /nonexistent/conduit.toml` (a documented starting file) or name another file with -f FILE"
            ]
        );
        let err =
            FileDoc::read(Path::new("/nonexistent/r.toml"), Role::Router, "--config").unwrap_err();
        assert_eq!(
            msgs(err),
            ["no configuration file at /nonexistent/r.toml: create it \
              with `conduit config init --router -f /nonexistent/r.toml` (a documented starting file) or name another file with --config FILE"]
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let doc = FileDoc::parse(Path::new("/etc/conduit/c.toml"), "").unwrap();
        assert_eq!(doc.resolve("keys/a.key"), "/etc/conduit/keys/a.key");
        assert_eq!(doc.resolve("/k/a.key"), "/k/a.key");
        let doc = FileDoc::parse(Path::new("c.toml"), "").unwrap();
        assert_eq!(doc.resolve("./keys/a.key"), "./keys/a.key");
    }
}
