//! `conduit init`: create a key pair.

use anyhow::Result;
use conduit_controlplane::{Home, keys};

use super::say;
use crate::args::InitArgs;

pub(crate) fn run(home: &Home, a: &InitArgs) -> Result<()> {
    let pair = keys::generate(home, &a.name, a.force)?;
    eprintln!(
        "created {} (private, mode 0600) and {}",
        home.private_key(&a.name).display(),
        home.public_key(&a.name).display()
    );
    // A router's key is pinned by its tunnels; a client's key is admitted by routers
    // (a key not named router… may be either).
    if a.name.starts_with("router") {
        eprintln!(
            "public key (tunnels pin it: give this line to each tunnel as --router-key, or \
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
