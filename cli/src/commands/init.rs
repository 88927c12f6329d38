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
    eprintln!(
        "public key (give it to the other side; routers list client keys in authorized_clients):"
    );
    say(format_args!("{} {}", pair.public(), a.name));
    Ok(())
}
