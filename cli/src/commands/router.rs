//! `conduit router`.

use std::sync::Arc;

use anyhow::Result;
use conduit_controlplane::{AllowList, Error, Home, Router, RouterSettings, Transport, keys};
use conduit_proto::Secret;
use conduit_proto::tls::AuthorizedClients;
use tracing::{info, warn};

use super::{dataplane_options, listen_addr, runtime, say, secs, shutdown_signal};
use crate::args::RouterArgs;

pub(crate) fn run(home: &Home, a: RouterArgs) -> Result<()> {
    let bind = listen_addr("--bind", &a.bind)?;
    let key_path = a.key.clone().unwrap_or_else(|| home.private_key("router"));
    let identity = keys::load_private(&key_path, "router")?;
    let auth_path = a
        .authorized_keys
        .clone()
        .unwrap_or_else(|| home.authorized_clients());
    let authorized = keys::load_authorized(&auth_path)?;
    let policy = AllowList::parse(&a.allow).map_err(|errs| Error::Config(errs.join("\n")))?;
    if authorized.is_empty() {
        warn!(
            "{} lists no client keys: every client will be refused",
            auth_path.display()
        );
    }
    if policy.is_empty() {
        warn!("no --allow rule: clients can connect but may open no source");
    }
    let transport = a.transport.into();
    if transport == Transport::Plain {
        if a.token.is_none() {
            warn!(
                "--transport plain without --token: anyone who can reach {bind} may open the allowed \
                 sources; use it only on a network that is already protected"
            );
        } else {
            warn!("--transport plain: traffic is not encrypted and client keys are not checked");
        }
    }
    let settings = RouterSettings {
        bind,
        identity,
        authorized: Arc::new(AuthorizedClients::new(authorized)),
        policy,
        token: a.token.map(Secret::new),
        transport,
        handshake_timeout: secs(10),
        connect_timeout: secs(10),
        idle_timeout: secs(300),
        dataplane: dataplane_options(&a.engine),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    runtime(threads)?.block_on(async move {
        let router = Router::bind(settings).await?;
        info!(
            key = %key_path.display(),
            clients = %auth_path.display(),
            "router up"
        );
        let plain = if transport == Transport::Plain {
            ", plain transport"
        } else {
            ""
        };
        say(format_args!(
            "router listening on {} ({} workers, {}{plain})",
            router.local_addr(),
            router.workers(),
            router.engine()
        ));
        router.run(shutdown_signal(), secs(a.drain_timeout)).await?;
        Ok::<_, anyhow::Error>(())
    })
}
