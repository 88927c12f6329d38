//! Opening channels to a router: the TLS handshake (or the plain transport's
//! setup), `Hello` and `Welcome`, and what a failure says; and the data channels the
//! workers ask for.

use std::sync::Arc;
use std::time::Duration;

use conduit_dataplane::{FromWorker, LinkEpoch};
use conduit_proto::version::{self, VersionRange};
use conduit_proto::{ChannelKind, Hello, Message, ProtoError, RefusalCode, TlsSession};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use super::{LinkStatus, Shared};
use crate::backoff::Backoff;
use crate::error::from_tls;
use crate::metrics::SetupError;
use crate::wire::{self, Wire, WireError};
use crate::{Error, Transport};

/// Opens a channel of `kind` to the router at `index` in the list, counting a
/// failure: the channel, past `Welcome`, and the protocol version the router chose.
pub(super) async fn open(
    shared: &Shared,
    kind: ChannelKind,
    index: usize,
) -> Result<(Wire, u16), Error> {
    open_over(shared, kind, index, None).await
}

/// [`open`], over `tcp` when the router's port has already accepted it.
pub(super) async fn open_over(
    shared: &Shared,
    kind: ChannelKind,
    index: usize,
    tcp: Option<TcpStream>,
) -> Result<(Wire, u16), Error> {
    let res = named(shared, index, open_at_inner(shared, kind, index, tcp).await);
    if let Err(e) = &res {
        let kind = match e {
            Error::Network { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
                SetupError::Timeout
            }
            Error::Network { .. } => SetupError::Unreachable,
            Error::Authentication(_) => SetupError::Unauthorized,
            Error::Tls(_) => SetupError::Tls,
            _ => SetupError::Protocol,
        };
        shared.counters.fail(kind);
    }
    res
}

/// Opens a channel of `kind` to the router at `index` in the list and completes
/// `Hello`/`Welcome`; returns it and the protocol version the router chose.
pub(super) async fn open_at(
    shared: &Shared,
    kind: ChannelKind,
    index: usize,
) -> Result<(Wire, u16), Error> {
    named(
        shared,
        index,
        open_at_inner(shared, kind, index, None).await,
    )
}

/// With several routers, a refusal names the one that refused.
fn named<T>(shared: &Shared, index: usize, res: Result<T, Error>) -> Result<T, Error> {
    let router = &shared.routers[index];
    res.map_err(|e| match e {
        Error::Authentication(m)
            if shared.routers.len() > 1 && !m.starts_with(&format!("router {router} ")) =>
        {
            Error::Authentication(format!("router {router}: {m}"))
        }
        e => e,
    })
}

async fn open_at_inner(
    shared: &Shared,
    kind: ChannelKind,
    index: usize,
    tcp: Option<TcpStream>,
) -> Result<(Wire, u16), Error> {
    let router = &shared.routers[index];
    let tcp = match tcp {
        Some(tcp) => tcp,
        None => wire::connect(router, shared.connect_timeout)
            .await
            .map_err(|e| Error::network(format!("cannot reach router {router}"), e))?,
    };
    let started = std::time::Instant::now();
    let setup = async {
        let mut w = match shared.transport {
            Transport::Tls => {
                let hint = shared.hint(index);
                Wire::handshake(tcp, TlsSession::client(shared.tls(index), hint.as_ref())?).await?
            }
            Transport::Plain => Wire::plain(tcp)?,
        };
        w.send(&Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: kind,
            tunnel: shared.name.clone(),
            token: shared.token.clone(),
            source: (kind == ChannelKind::Control).then(|| shared.source.clone()),
        }))
        .await?;
        let reply = w.recv().await?;
        Ok::<_, WireError>((w, reply))
    };
    let (w, reply) = match tokio::time::timeout(shared.handshake_timeout, setup).await {
        Err(_) => {
            return Err(Error::network(
                format!("router {router} did not complete the handshake"),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", shared.handshake_timeout),
                ),
            ));
        }
        Ok(Err(e)) => return Err(wire_error(shared, router, e)),
        Ok(Ok(x)) => x,
    };
    match reply {
        Some(Message::Welcome { version }) => {
            can_carry(shared.datagrams, version, router)?;
            shared.counters.handshakes.observe(started.elapsed());
            Ok((w, version))
        }
        Some(Message::Refused(r)) => Err(match r.code {
            RefusalCode::Unauthorized | RefusalCode::UnsupportedVersion => {
                Error::Authentication(format!("the router refused this client: {}", r.message))
            }
            // The router checked the source against its policy (protocol 7): no
            // stream of this tunnel would be served.
            RefusalCode::PolicyDenied => {
                Error::Authentication(format!("the router refused this tunnel: {}", r.message))
            }
            _ => Error::Protocol(format!("the router refused the channel: {}", r.message)),
        }),
        Some(other) => Err(Error::Protocol(format!(
            "the router answered Hello with {}",
            other.name()
        ))),
        None => Err(Error::Protocol(
            "the router closed the connection during setup".into(),
        )),
    }
}

/// Whether a router that negotiated protocol `version` can serve this tunnel: a UDP
/// tunnel needs [`version::DATAGRAMS`]. Not retried: the router must be upgraded.
pub(super) fn can_carry(datagrams: bool, version: u16, router: &str) -> Result<(), Error> {
    if datagrams && version < version::DATAGRAMS {
        return Err(Error::Authentication(format!(
            "router {router} speaks protocol {version}, and UDP tunnels need protocol {} or \
             later: upgrade conduit on the router",
            version::DATAGRAMS
        )));
    }
    Ok(())
}

pub(super) fn wire_error(shared: &Shared, router: &str, e: WireError) -> Error {
    match e {
        // Closed without a word: a router going away, or a port-forward whose router
        // is not up yet. Tried again.
        WireError::Tls(t) if t.closed_during_handshake() => Error::Protocol(format!(
            "router {router} closed the connection during the TLS handshake (a router \
             stopping, or a forwarder whose router is not up yet; if it stays so, check \
             --router and --transport)"
        )),
        // A setting to change, as a refusal is: a tunnel no router admitted yet stops
        // (`start` says why); one that has been up keeps trying (see `Shared::been_up`).
        WireError::Tls(t) if t.peer_not_tls() => Error::Authentication(format!(
            "router {router} does not speak Conduit's TLS transport (is it a plain-transport \
             router, or not a Conduit router at all?): check --router and --transport ({t})"
        )),
        // Not retried: the router's operator or this tunnel's must change a setting.
        WireError::Tls(t) if t.peer_refused_handshake() => Error::Authentication(format!(
            "router {router} refused the TLS handshake: it accepts none of the cipher suites \
             this tunnel offers ({}); offer one it accepts (--cipher-suites, or [security] \
             cipher_suites in the file), or leave the setting out to offer all (a server \
             that is not a Conduit router may refuse it the same way: check --router)",
            shared.suites
        )),
        WireError::Tls(t) => from_tls(t, &shared.our_key(), &shared.our_line()),
        WireError::Io(io) => Error::network(format!("connection to router {router} failed"), io),
        // The first frame the router sent, read as the plain transport's, is not one:
        // a TLS record (an alert: 0x15 0x03…, read as a frame's length) says a TLS router.
        WireError::Proto(p @ ProtoError::FrameTooLarge { len, .. })
            if shared.transport == Transport::Plain
                && (0x14..=0x17).contains(&(len >> 24))
                && (len >> 16) & 0xff == 0x03 =>
        {
            Error::Authentication(format!(
                "router {router} answers in TLS, and this tunnel uses --transport plain: start \
                 the tunnel without --transport plain, or run the router with --transport plain \
                 ({p})"
            ))
        }
        WireError::Proto(
            p @ (ProtoError::FrameTooLarge { .. } | ProtoError::UnknownFrameType(_)),
        ) if shared.transport == Transport::Plain => Error::Authentication(format!(
            "router {router} does not speak Conduit's plain transport (is it a TLS router, \
                 or not a Conduit router at all?): start the tunnel without --transport plain \
                 if the router runs without it, and check --router ({p})"
        )),
        WireError::Proto(p) => Error::Protocol(format!("router {router}: {p}")),
        WireError::Closed => Error::Protocol(format!(
            "router {router} closed the connection during setup"
        )),
    }
}

/// Answers the workers' requests for channels.
pub(super) async fn make_channels(shared: Arc<Shared>, requests: flume::Receiver<FromWorker>) {
    while let Ok(FromWorker::WantChannels { core, count }) = requests.recv_async().await {
        for _ in 0..count {
            tokio::spawn(make_one(shared.clone(), core));
        }
    }
}

/// Makes one data channel for `core`, retrying while the router is away; out of file
/// descriptors, gives the request back to the worker instead.
pub(super) async fn make_one(shared: Arc<Shared>, core: usize) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut status = shared.status.subscribe();
    loop {
        // Wait for the control channel: it tells a dead router from a bad key.
        while !shared.link.is_up() {
            if matches!(*status.borrow_and_update(), LinkStatus::Refused { .. }) {
                return;
            }
            if status.changed().await.is_err() {
                return;
            }
        }
        let Some(slot) = shared.pick(core) else {
            // The link moves to another router right now.
            tokio::task::yield_now().await;
            continue;
        };
        let index = slot.router();
        let epoch = shared.link.current(index);
        let opened = tokio::select! {
            opened = open(&shared, ChannelKind::Data, index) => opened,
            () = link_left(&shared, epoch, &mut status) => {
                // A router that stopped answering holds the attempt for its whole
                // handshake timeout: given up, so the users waiting for a channel
                // get one of the next link.
                debug!(core, "data channel attempt abandoned: its router link is gone");
                continue;
            }
        };
        match opened {
            Ok((w, version)) => {
                match w.into_handoff(epoch, Some(slot), shared.name.clone(), version) {
                    Ok(h) => {
                        if !shared.dp.send_client_channel(core, h) {
                            debug!(core, "worker gone; channel dropped");
                        }
                        return;
                    }
                    Err(e) => debug!(core, "data channel unusable: {e}"),
                }
            }
            Err(e) if e.out_of_descriptors() => {
                // The worker logs it, tells its users, and asks again when it sees fit.
                let reason = format!(
                    "cannot open a channel to the router: {e}; the tunnel is out of file \
                     descriptors: raise its open-file limit (ulimit -n, or LimitNOFILE= in a \
                     systemd unit)"
                );
                shared.dp.no_channels(core, reason);
                return;
            }
            Err(e) => {
                // Not counted against its router while waiting to try again.
                drop(slot);
                debug!(core, "cannot open a data channel: {e}");
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Returns once the link of `epoch` is down or made again (told by `status`): a
/// channel still being made to it would be stale.
async fn link_left(shared: &Shared, epoch: LinkEpoch, status: &mut watch::Receiver<LinkStatus>) {
    while shared.link.is_current(epoch) {
        if status.changed().await.is_err() {
            // The tunnel is ending: the attempt ends with it.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_tunnel_refuses_a_router_without_datagrams_for_good() {
        let err = can_carry(true, 1, "10.2.0.1:9999").unwrap_err();
        assert_eq!(
            err.to_string(),
            "router 10.2.0.1:9999 speaks protocol 1, and UDP tunnels need protocol 2 or later: \
             upgrade conduit on the router"
        );
        assert!(!err.is_retryable());
        assert!(can_carry(true, version::DATAGRAMS, "r:1").is_ok());
        assert!(
            can_carry(false, 1, "r:1").is_ok(),
            "TCP tunnels speak protocol 1"
        );
    }
}
