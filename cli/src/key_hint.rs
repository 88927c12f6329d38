//! A `.pub` line given unquoted: `--router-key ed25519:… router` hands clap the key's
//! comment as an argument of its own, which it refuses as unexpected without a word
//! about why. `conduit init` prints that whole line for tunnels to pin, so this is
//! the likeliest way to get there.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// `note: …` when clap refused an unexpected argument that is the word right after
/// `--router-key KEY`.
pub(crate) fn for_error(e: &clap::Error) -> Option<String> {
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(unexpected)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let args: Vec<String> = std::env::args().collect();
    split_key(&args, unexpected)
}

/// The note for `args`, when `unexpected` follows a `--router-key` value.
fn split_key(args: &[String], unexpected: &str) -> Option<String> {
    let key = args
        .windows(2)
        .find_map(|w| match w[0].strip_prefix("--router-key=") {
            Some(key) if w[1] == unexpected => Some(key),
            _ => None,
        });
    let key = key.or_else(|| {
        args.windows(3)
            .find(|w| w[0] == "--router-key" && w[2] == unexpected)
            .map(|w| w[1].as_str())
    })?;
    Some(format!(
        "note: `{unexpected}` looks like the comment of the router key's line: quote the \
         whole line (--router-key \"{key} {unexpected}\"), give the key alone, or give the \
         path of the router's .pub file"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_key_comment_given_as_its_own_argument_is_named() {
        let note = "note: `router` looks like the comment of the router key's line: quote the \
                    whole line (--router-key \"ed25519:AAA= router\"), give the key alone, or \
                    give the path of the router's .pub file";
        for line in [
            "conduit start --router r:1 --router-key ed25519:AAA= router --source s:1",
            "conduit start --router-key=ed25519:AAA= router --source s:1",
        ] {
            assert_eq!(
                split_key(&args(line), "router").as_deref(),
                Some(note),
                "{line}"
            );
        }
        // Not after a key: no note.
        let line = args("conduit start --router r:1 router --router-key ed25519:AAA=");
        assert_eq!(split_key(&line, "router"), None);
        assert_eq!(split_key(&args("conduit list router"), "router"), None);
    }
}
