//! `conduit keys show`: print a public key again. `conduit keys rotate`: have
//! running tunnels rotate their keys through their routers.

use anyhow::{Result, anyhow};
use conduit_controlplane::control::{self, pb};
use conduit_controlplane::registry::{Entry, Registry};
use conduit_controlplane::{Home, keys};

use super::tunnels::{chosen, time};
use super::{runtime, say};
use crate::args::RotateArgs;

pub(crate) fn show(home: &Home, name: &str) -> Result<()> {
    if let Some(path) = keys::restore_named_public(home, name)? {
        eprintln!(
            "{} was missing: written again from {}",
            path.display(),
            home.private_key(name).display()
        );
    }
    let key = keys::load_named_public(home, name)?;
    say(format_args!("{key} {name}"));
    Ok(())
}

pub(crate) fn rotate(home: &Home, a: &RotateArgs) -> Result<()> {
    let registry = Registry::new(home);
    let targets = chosen(&registry, a.all, a.tunnel.as_deref())?;
    if targets.is_empty() {
        say("no tunnels running");
        return Ok(());
    }
    runtime(1)?.block_on(async {
        let mut failures = Vec::new();
        let mut partial = Vec::new();
        for e in &targets {
            match rotate_one(e).await {
                Ok(r) if r.old_expires == 0 => say(format_args!(
                    "tunnel {:?}: took up key {} (another tunnel sharing its key file rotated it)",
                    e.name, r.key
                )),
                Ok(r) if r.old_expires < 0 => say(format_args!(
                    "tunnel {:?}: key rotated to {}; until when the router admits the old key is \
                     not known (its answer was not believable: see the tunnel's log)",
                    e.name, r.key
                )),
                Ok(r) => {
                    say(format_args!(
                        "tunnel {:?}: key rotated to {}; the old key is admitted until {}",
                        e.name,
                        r.key,
                        time(r.old_expires)
                    ));
                    for why in &r.not_authorized {
                        partial.push(format!(
                            "the key of tunnel {:?} was rotated, but the new key {} is not \
                             authorized by {why}; add it to that router's authorized_clients, \
                             or it refuses this tunnel",
                            e.name, r.key
                        ));
                    }
                }
                Err(why) => failures.push(format!("{} ({}): {why}", e.name, e.tunnel_id)),
            }
        }
        if !failures.is_empty() {
            partial.insert(
                0,
                format!("could not rotate the key of {}", failures.join("; ")),
            );
        }
        if partial.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("{}", partial.join("\n")))
        }
    })
}

async fn rotate_one(e: &Entry) -> Result<pb::RotateKeyResponse, String> {
    let mut c = control::connect(&e.control_socket)
        .await
        .map_err(|err| err.to_string())?;
    c.rotate_key(pb::RotateKeyRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| super::tunnels::control_failed(s.message()))
}
