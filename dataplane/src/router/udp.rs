//! A UDP flow on the router: a socket of its own, connected to the source (so only
//! the source's answers reach it), relayed to and from the client's channel until the
//! client ends the flow (see [`crate::datagram`]).

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use futures::future::{Either, select};
use tracing::debug;

use super::RouterCore;
use crate::channel::Channel;
use crate::datagram::{Deliver, Sources, down, from_source};
use crate::net::Udp;
use crate::relay::{Side, Stop};
use crate::stats::{ErrorKind, Meter};
use crate::usage::NO_KEY;

impl RouterCore {
    /// Serves one `OpenDatagrams`; true when the channel can carry another stream.
    pub(super) async fn datagram_flow(
        &self,
        ch: &mut Channel,
        peer: SocketAddr,
        target: String,
    ) -> bool {
        let target = Rc::<str>::from(target);
        let core = &self.core;
        let id = core.next_conn_id();
        let client = ch.peer_key;
        let opened = self
            .admit(id, peer, client.as_ref(), &target)
            .and_then(|(addrs, permit)| match udp_connect(&addrs) {
                Ok(s) => Ok((s, Sources::new(addrs, id), permit)),
                Err(e) => {
                    let message =
                        format!("the router could not open a UDP socket to source {target}: {e}");
                    Err(self.refused(
                        id,
                        peer,
                        client.as_ref(),
                        ErrorKind::SourceUnreachable,
                        message,
                    ))
                }
            });
        let Some((source, sources, permit)) = self.answer_open(ch, id, "flow", opened).await else {
            return false;
        };
        let (counters, kill) = self.track(id, peer, client, &ch.tunnel, &target);
        let bandwidth = self.bandwidth_of(client.as_ref());
        let stop = {
            let Channel {
                sock,
                tls,
                decoder,
                backlog,
                ..
            } = &mut *ch;
            let (done_tx, done_rx) = oneshot::channel();
            let last = Cell::new(Instant::now());
            // The client's datagrams, until its Eof; then the source's answers already
            // read go back, followed by this side's Eof.
            let to_source = async {
                let r = down(
                    Side::Router,
                    sock,
                    tls,
                    decoder,
                    backlog,
                    Deliver {
                        sock: &source,
                        to: None,
                        sources: Some(&sources),
                    },
                    Meter {
                        conn: &counters.up,
                        core: &core.stats.bytes_up,
                        limit: bandwidth.as_ref().map(|b| &b.up),
                    },
                    &last,
                )
                .await;
                let _ = done_tx.send(());
                r
            };
            let to_client = from_source(
                &source,
                &sources,
                sock,
                tls,
                Meter {
                    conn: &counters.down,
                    core: &core.stats.bytes_down,
                    limit: bandwidth.as_ref().map(|b| &b.down),
                },
                done_rx,
            );
            let both = futures::future::try_join(to_source, to_client);
            futures::pin_mut!(both);
            match select(both, kill).await {
                Either::Left((Ok(_), _)) => None,
                Either::Left((Err(stop), _)) => Some(stop),
                Either::Right((why, _)) => Some(Stop::Killed(
                    why.unwrap_or_else(|_| "the router is stopping".to_owned()),
                )),
            }
        };
        self.untrack(id, client, stop.as_ref().map(Stop::kind));
        drop(permit);
        let reusable = self
            .ended(ch, id, peer, &target, stop, "source socket")
            .await;
        debug!(
            conn = id,
            client = %client.unwrap_or(NO_KEY),
            to_source = counters.up.get(),
            from_source = counters.down.get(),
            "udp flow closed"
        );
        reusable
    }
}

/// A UDP socket connected to the first of `addrs` (the balancer put the one to use
/// first): the kernel then delivers only that source's datagrams to it.
fn udp_connect(addrs: &[SocketAddr]) -> std::io::Result<Udp> {
    let addr = addrs.first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to send to")
    })?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(local)?;
    s.connect(addr)?;
    Udp::from_std(s)
}
