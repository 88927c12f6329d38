//! A UDP flow on the router: a socket of its own, connected to the source (so only
//! the source's answers reach it), relayed to and from the client's channel until the
//! client ends the flow (see [`crate::datagram`]).

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use conduit_proto::version::SOURCE_REFUSALS;
use conduit_proto::{Message, PublicKey, Refusal};
use futures::channel::oneshot;
use futures::future::{Either, select};
use tracing::debug;

use super::{RouterCore, StreamOf, stopped};
use crate::SourceProtocol;
use crate::channel::Channel;
use crate::datagram::{Carrier, Deliver, Inbound, Sources, down, from_source};
use crate::limit::Permit;
use crate::net::{Socket, Udp};
use crate::plain::{send_best_effort, send_frame};
use crate::relay::{Side, Stop};
use crate::stats::{Closing, ErrorKind, Meter};
use crate::usage::NO_KEY;

impl RouterCore {
    /// Serves one `OpenDatagrams` on a TLS channel; true when the channel can carry
    /// another stream.
    pub(super) async fn datagram_flow(
        &self,
        ch: &mut Channel,
        peer: SocketAddr,
        target: String,
    ) -> bool {
        let target = Rc::<str>::from(target);
        let id = self.core.next_conn_id();
        let client = ch.peer_key;
        self.lookups(client.as_ref(), &target).await;
        let opened = self.open_flow(id, peer, client.as_ref(), &target);
        let Some(flow) = self.answer_open(ch, id, "flow", opened).await else {
            return false;
        };
        flow.tell_client_from(ch.version);
        let tunnel = ch.tunnel.clone();
        let of = StreamOf {
            id,
            peer,
            client,
            tunnel: &tunnel,
            target: &target,
        };
        let stop = {
            let Channel {
                sock,
                tls,
                decoder,
                backlog,
                ..
            } = &mut *ch;
            let (sock, tls) = (&*sock, &*tls);
            let from = Inbound::Tls {
                sock,
                tls,
                decoder,
                backlog,
            };
            self.relay_flow(&of, flow, from, Carrier::Tls(sock, tls))
                .await
                .err()
        };
        self.ended(ch, id, peer, &target, stop, "source socket")
            .await
    }

    /// Serves one `OpenDatagrams` on a plain channel that frames its streams
    /// (protocol 5, or `version`); `rest` is what was read with it. What was read
    /// past the flow's end when the channel can carry another stream.
    pub(super) async fn plain_datagram_flow(
        &self,
        sock: &Socket,
        of: &StreamOf<'_>,
        rest: Vec<u8>,
        version: u16,
    ) -> Option<Vec<u8>> {
        let client = of.client.as_ref();
        self.lookups(client, of.target).await;
        let flow = match self.open_flow(of.id, of.peer, client, of.target) {
            Ok(flow) => flow,
            Err(refusal) => {
                let _ = send_frame(sock, &Message::OpenFailed(refusal)).await;
                return None;
            }
        };
        if let Err(e) = send_frame(sock, &Message::Opened).await {
            debug!(conn = of.id, "channel failed before the flow started: {e}");
            self.failed_open(client, ErrorKind::Channel);
            return None;
        }
        flow.tell_client_from(version);
        let from = Inbound::Plain { sock, have: rest };
        match self.relay_flow(of, flow, from, Carrier::Plain(sock)).await {
            Ok(next) => Some(next),
            Err(stop) => {
                if let Some(notice) = stopped(of.id, of.peer, of.target, &stop, "source socket") {
                    send_best_effort(sock, &notice).await;
                }
                None
            }
        }
    }

    /// Counts an opening flow, checks the allow-list and the limit, and opens the
    /// flow's socket: what the flow needs, or the refusal to send back.
    fn open_flow(
        &self,
        id: u64,
        peer: SocketAddr,
        client: Option<&PublicKey>,
        target: &str,
    ) -> Result<Flow, Refusal> {
        let (addrs, permit) = self.admit(id, peer, client, target, SourceProtocol::Udp)?;
        for member in crate::source_members(target) {
            self.core.usage.udp_source_used(member);
        }
        match udp_connect(&addrs, &self.spec.sockets) {
            Ok(s) => Ok(Flow {
                source: s,
                sources: Sources::new(
                    addrs,
                    id,
                    Some((self.spec.policy.clone(), target.to_owned())),
                ),
                permit,
            }),
            Err(e) => {
                let message =
                    format!("the router could not open a UDP socket to source {target}: {e}");
                Err(self.refused(id, peer, client, ErrorKind::SourceUnreachable, message))
            }
        }
    }

    /// Relays an opened flow, tracked in the connection table, until it ends: what a
    /// plain channel read past its end, or why it stopped.
    async fn relay_flow(
        &self,
        of: &StreamOf<'_>,
        flow: Flow,
        from: Inbound<'_>,
        to: Carrier<'_>,
    ) -> Result<Vec<u8>, Stop> {
        let core = &self.core;
        let Flow {
            source,
            sources,
            permit,
        } = flow;
        let (counters, kill) = self.track(of.id, of.peer, of.client, of.tunnel, of.target, true);
        let bandwidth = self.bandwidth_of(of.client.as_ref());
        let (done_tx, done_rx) = oneshot::channel();
        let last = Cell::new(Instant::now());
        // The client's datagrams, until its Eof; then the source's answers already
        // read go back, followed by this side's Eof.
        let to_source = async {
            let deliver = Deliver {
                sock: &source,
                to: None,
                from: None,
                sources: Some(&sources),
                dropped: &core.stats.datagrams_dropped,
            };
            let meter = Meter {
                conn: &counters.up,
                core: &core.stats.bytes_up,
                limit: bandwidth.as_ref().map(|b| &b.up),
                unanswered: None,
            };
            let r = down(Side::Router, from, deliver, meter, None, None, &last).await;
            let _ = done_tx.send(());
            r
        };
        let to_client = from_source(
            &source,
            &sources,
            to,
            Meter {
                conn: &counters.down,
                core: &core.stats.bytes_down,
                limit: bandwidth.as_ref().map(|b| &b.down),
                unanswered: None,
            },
            (&core.stats.udp_receive_drops, &core.stats.datagrams_dropped),
            done_rx,
        );
        let both = futures::future::try_join(to_source, to_client);
        futures::pin_mut!(both);
        let result = match select(both, kill).await {
            Either::Left((Ok((next, ())), _)) => Ok(next),
            Either::Left((Err(stop), _)) => Err(stop),
            Either::Right((why, _)) => {
                Err(Stop::Killed(why.unwrap_or_else(|_| {
                    Closing::killed("the router is stopping")
                })))
            }
        };
        self.untrack(of.id, of.client, result.as_ref().err().map(Stop::kind));
        drop(permit);
        debug!(
            conn = of.id,
            client = %of.client.unwrap_or(NO_KEY),
            to_source = counters.up.get(),
            from_source = counters.down.get(),
            "udp flow closed"
        );
        result
    }
}

/// What an admitted flow holds: its socket, connected to the first of its sources,
/// and its place under the router's connection limit.
struct Flow {
    source: Udp,
    sources: Sources,
    permit: Permit,
}

impl Flow {
    /// A client of protocol `version` is told when the flow's sources refuse its
    /// datagrams if it speaks [`SOURCE_REFUSALS`].
    fn tell_client_from(&self, version: u16) {
        if version >= SOURCE_REFUSALS {
            self.sources.tell_client();
        }
    }
}

/// A UDP socket connected to the first of `addrs` (the balancer put the one to use
/// first): the kernel then delivers only that source's datagrams to it.
fn udp_connect(addrs: &[SocketAddr], sockets: &crate::SocketOptions) -> std::io::Result<Udp> {
    let addr = addrs.first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to send to")
    })?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(local)?;
    crate::listener::size_udp_buffers(&socket2::SockRef::from(&s), sockets);
    s.connect(addr)?;
    Udp::from_std(s)
}
