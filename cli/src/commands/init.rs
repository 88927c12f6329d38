//! `conduit init`: create a key pair.

use anyhow::Result;
use conduit_controlplane::{Home, keys};

use super::say;
use crate::args::InitArgs;

pub(crate) fn run(home: &Home, a: &InitArgs) -> Result<()> {
    let replacing = a.force && home.private_key(&a.name).exists();
    let pair = keys::generate(home, &a.name, a.force)?;
    eprintln!(
        "created {} (private, mode 0600) and {}",
        home.private_key(&a.name).display(),
        home.public_key(&a.name).display()
    );
    if replacing {
        eprintln!("conduit: note: {}", replaced(&a.name));
    }
    // A router's key is pinned by its tunnels; a client's key is admitted by routers
    // (a key not named router… may be either).
    if a.name.starts_with("router") {
        eprintln!(
            "public key (tunnels pin it: give this line to each tunnel as --router-key (quoted), or \
             [router] public_key in its file):"
        );
    } else {
        eprintln!(
            "public key (a client's: add this line to the router's authorized_clients to admit \
             it; a router's: tunnels pin it with --router-key):"
        );
    }
    say(format_args!("{} {}", pair.public(), a.name));
    Ok(())
}

/// What replacing the key `name` by hand leaves to do: processes running with the
/// old key keep it, and whoever trusts the old public key must be given the new one.
fn replaced(name: &str) -> String {
    let trust = if name.starts_with("router") {
        "tunnels pin the old public key and refuse this router once it runs with the new \
         one, until each pins the new one (--router-key, [router] public_key); to replace a \
         router's key without an outage, let the router announce its next key \
         ([router] key_rotation_days, or `kill -USR1 PID`)"
    } else {
        "routers admit the old public key only: add the new line to each router's \
         authorized_clients; `conduit keys rotate --tunnel NAME` replaces a running \
         tunnel's key with its router's help instead"
    };
    format!(
        "the old key {name} is gone; a router or tunnel running with it goes on with it until \
         restarted, and {trust}"
    )
}
