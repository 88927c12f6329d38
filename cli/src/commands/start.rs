//! `conduit start`: a tunnel.

use anyhow::Result;
use conduit_controlplane::{ClientTunnel, Home, LinkStatus, TunnelSettings, keys};
use conduit_proto::Secret;

use super::{dataplane_options, listen_addr, remote_addr, runtime, say, secs, shutdown_signal};
use crate::args::StartArgs;
use crate::exit::Usage;

pub(crate) fn run(home: &Home, a: StartArgs) -> Result<()> {
    if !a.foreground {
        return Err(Usage(
            "background tunnels are not built yet: run `conduit start --foreground ...` \
             (and stop it with Ctrl-C)"
                .into(),
        )
        .into());
    }
    let bind = listen_addr("--bind", &a.bind)?;
    let router = remote_addr("--router", &a.router)?;
    let source = remote_addr("--source", &a.source)?;
    let router_key = keys::load_public(&a.router_key, "--router-key")?;
    let key_path = a.key.clone().unwrap_or_else(|| home.private_key("client"));
    let identity = keys::load_private(&key_path, "client")?;
    let name = a.name.clone().unwrap_or_else(|| match bind.port() {
        0 => "tunnel".to_owned(),
        p => format!("tunnel-{p}"),
    });
    let settings = TunnelSettings {
        name: name.clone(),
        router: router.clone(),
        router_key,
        identity,
        source,
        bind,
        token: a.token.map(Secret::new),
        pool_size: a.pool_size,
        connect_timeout: secs(10),
        handshake_timeout: secs(10),
        dataplane: dataplane_options(&a.engine),
    };
    runtime(1)?.block_on(async move {
        let tunnel = ClientTunnel::start(settings)?;
        say(format_args!(
            "tunnel {name:?} listening on {} ({} workers, {})",
            tunnel.local_addr(),
            tunnel.workers(),
            tunnel.engine()
        ));
        let mut status = tunnel.status();
        let announce = async move {
            loop {
                if status.changed().await.is_err() {
                    return;
                }
                if matches!(*status.borrow(), LinkStatus::Connected { .. }) {
                    say(format_args!("tunnel {name:?} connected to router {router}"));
                    return;
                }
            }
        };
        let announcer = tokio::spawn(announce);
        let res = tunnel.run(shutdown_signal(), secs(a.drain_timeout)).await;
        announcer.abort();
        res.map_err(anyhow::Error::from)
    })
}
