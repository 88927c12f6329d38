//! `conduit keys show`: print a public key again.

use anyhow::Result;
use conduit_controlplane::{Home, keys};

use super::say;

pub(crate) fn show(home: &Home, name: &str) -> Result<()> {
    let path = home.public_key(name);
    let key = keys::load_public(&path.to_string_lossy(), "public key")?;
    say(format_args!("{key} {name}"));
    Ok(())
}
