//! `conduit router`.

use std::sync::Arc;

use anyhow::Result;
use conduit_controlplane::{AllowList, Error, Home, Router, RouterSettings, keys};
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
    let settings = RouterSettings {
        bind,
        identity,
        authorized: Arc::new(AuthorizedClients::new(authorized)),
        policy,
        token: a.token,
        handshake_timeout: secs(a.handshake_timeout),
        connect_timeout: secs(10),
        idle_timeout: secs(300),
        max_connections: a.max_connections,
        dataplane: dataplane_options(&a.engine),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    runtime(threads)?.block_on(async move {
        let router = Router::bind(settings).await?;
        let signals = shutdown_signal();
        info!(
            key = %key_path.display(),
            clients = %auth_path.display(),
            "router up"
        );
        say(format_args!(
            "router listening on {} ({} workers, {})",
            router.local_addr(),
            router.workers(),
            router.engine()
        ));
        router.run(signals, secs(a.drain_timeout)).await?;
        Ok::<_, anyhow::Error>(())
    })
}
