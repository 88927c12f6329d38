//! The plain transport (`--transport plain`): the same guarantees about bytes, with
//! splice instead of TLS.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use conduit_proto::frame::Header;
use conduit_proto::message::{ChannelKind, Hello};
use conduit_proto::version::VersionRange;
use conduit_proto::{Event, FrameDecoder, Message, Secret};

use crate::both_engines;
use crate::faults::{Victim, killed_mid_answer, killed_mid_upload};
use crate::harness::{DEADLINE, Engine, Home, addr_in, assert_code, dead_port};
use crate::procfs::{close_wait, established, tcp_sockets_on_port, wait_until};
use crate::sources::{self, pattern, read_all_hashed, sha};
use crate::tunnel::{echo_back_to_back, server_closes_first_then_user};
use crate::users::wait_for_echo;

/// The arguments that put a router or a tunnel on the plain transport.
pub const PLAIN: &[&str] = &["--transport", "plain", "--token", "s3cret-token"];

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

both_engines!(
    plain_transport_moves_64_mib_each_way_intact,
    |engine: Engine| {
        const LEN: usize = 64 << 20;
        let home = Home::with_keys();
        let (source, seen) = sources::exchange(LEN);
        let (router, raddr) = home.router_with(engine, &[source.to_string()], PLAIN);
        let line = router.wait_stdout("router listening on");
        assert!(line.ends_with("plain transport)"), "{line}");
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), PLAIN);
        let conn = connect(taddr);
        let mut w = conn.try_clone().unwrap();
        let upload = pattern(5, LEN);
        let want_up = sha(&upload);
        let writer = thread::spawn(move || {
            w.write_all(&upload).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut r = conn;
        assert_eq!(
            read_all_hashed(&mut r).unwrap(),
            (LEN, sha(&pattern(2, LEN)))
        );
        writer.join().unwrap();
        assert_eq!(seen.recv_timeout(DEADLINE).unwrap(), (LEN, want_up));
    }
);

both_engines!(
    plain_transport_half_close_and_many_connections,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::reply_after_eof();
        let (_router, raddr) = home.router_with(engine, &[source.to_string()], PLAIN);
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), PLAIN);
        let workers: Vec<_> = (0..50u64)
            .map(|i| {
                thread::spawn(move || {
                    let req = pattern(i, 10_000 + i as usize);
                    let mut c = connect(taddr);
                    c.write_all(&req).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    let mut reply = String::new();
                    c.read_to_string(&mut reply).unwrap();
                    assert_eq!(
                        reply,
                        format!("received {} bytes sha256={}\n", req.len(), sha(&req))
                    );
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a connection failed");
        }
    }
);

both_engines!(
    plain_channels_carry_stream_after_stream,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (_router, raddr) = home.router_with(engine, &[source.to_string()], PLAIN);
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), PLAIN);
        const STREAMS: u64 = 300;
        let before = tcp_sockets_on_port(raddr.port());
        echo_back_to_back(taddr, STREAMS);
        // A channel that carried one stream and closed would leave its two ends
        // behind (one in TIME_WAIT for a minute): 600 new sockets on the router's
        // port. Reused channels are the pools' few (at most 8 idle per core,
        // 2 cores), each counted at both ends.
        let after = tcp_sockets_on_port(raddr.port());
        let new = after.difference(&before).count();
        assert!(
            new <= 2 * 8 * 2,
            "{new} new sockets on the router's port after {STREAMS} streams: \
             plain channels were not reused"
        );
    }
);

both_engines!(
    plain_bulk_and_small_streams_alternate_intact,
    |engine: Engine| {
        // A bulk direction goes on unframed and its channel closes after the stream;
        // the small streams around it stay framed on reused channels.
        let home = Home::with_keys();
        let source = sources::echo();
        let (_router, raddr) = home.router_with(engine, &[source.to_string()], PLAIN);
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), PLAIN);
        for i in 0..24u64 {
            let len = if i % 4 == 0 {
                8 << 20
            } else {
                100 + i as usize
            };
            let conn = connect(taddr);
            let mut w = conn.try_clone().unwrap();
            let writer = thread::spawn(move || {
                w.write_all(&pattern(i, len)).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut r = conn;
            assert_eq!(
                read_all_hashed(&mut r).unwrap(),
                (len, sha(&pattern(i, len))),
                "stream {i}"
            );
            writer.join().unwrap();
        }
    }
);

both_engines!(
    plain_channels_reused_when_the_server_closes_first,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::answer_and_close();
        let (_router, raddr) = home.router_with(engine, &[source.to_string()], PLAIN);
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), PLAIN);
        server_closes_first_then_user(taddr, 300, 0);
        let loops: Vec<_> = (1..=8)
            .map(|t| thread::spawn(move || server_closes_first_then_user(taddr, 100, t)))
            .collect();
        for l in loops {
            l.join().expect("a request failed");
        }
    }
);

// A bulk direction goes on raw, ended by FIN alone; when a relay dies, the kernel
// closes its sockets, with a FIN unless told otherwise. That FIN must not pass for the
// end of the stream: the far end of a stream cut short by a killed relay sees a reset,
// never a clean end of a short stream.

both_engines!(
    a_router_killed_mid_bulk_answer_resets_the_user,
    |engine: Engine| {
        let (_router, tunnel) = killed_mid_answer(engine, PLAIN, Victim::Router);
        // A direction that went raw (a pipe's worth ready at once) resets the channel
        // when its relay dies; one still framed sees the channel end mid-stream. The
        // user is reset either way (checked above); which one depends on how the
        // source's answer arrived.
        crate::http::wait_for("the tunnel to log the cut channel", || {
            let e = tunnel.stderr();
            (e.contains("the channel to the router was reset: Connection reset by peer")
                || e.contains("the other end closed the channel mid-stream"))
            .then_some(())
        });
    }
);

both_engines!(
    a_tunnel_killed_mid_bulk_upload_resets_the_source,
    |engine: Engine| {
        let (router, _tunnel) = killed_mid_upload(engine, PLAIN, Victim::Tunnel);
        // The source is reset either way (checked above). As for the answer above:
        // an upload that went raw resets the channel when the tunnel dies; one still
        // framed (the bytes arrived in pieces, on a loaded machine) sees the channel
        // end mid-stream.
        crate::http::wait_for("the router to log the cut channel", || {
            let e = router.stderr();
            (e.contains(
                "plain stream ended: the channel from the tunnel was reset: Connection reset \
                 by peer",
            ) || e.contains("plain stream failed: the other end closed the channel mid-stream"))
            .then_some(())
        });
    }
);

#[test]
fn plain_transport_refuses_a_wrong_token_and_reports_a_dead_source() {
    let home = Home::with_keys();
    let source = format!("127.0.0.1:{}", dead_port());
    let (router, raddr) = home.router_with(Engine::Epoll, std::slice::from_ref(&source), PLAIN);
    let mut wrong = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source,
        &["--transport", "plain", "--token", "guess"],
    );
    let status = wrong.wait_exit();
    assert_eq!(status.code(), Some(77), "{}", wrong.stderr());
    assert!(
        wrong.stderr().contains("the token is wrong"),
        "{}",
        wrong.stderr()
    );

    let (tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source, PLAIN);
    let mut c = connect(taddr);
    let _ = c.write_all(b"hello");
    assert_eq!(crate::users::expect_end(&mut c), crate::users::End::Reset);
    router.wait_stderr(&format!("the router could not connect to source {source}"));
    tunnel.wait_stderr(&format!(
        "the router could not open the source: the router could not connect to source {source}"
    ));
}

/// Reads from `s` until `want` complete events have been decoded; payload is merged.
pub fn read_events(s: &mut TcpStream, d: &mut FrameDecoder, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let n = s.read(&mut buf).expect("the router answers");
        assert!(n > 0, "the router closed the channel early; got {got:?}");
        d.feed(&buf[..n], |ev| {
            got.push(match ev {
                Event::Data(b) => format!("Data {}", String::from_utf8_lossy(b)),
                Event::Datagram(b) => format!("Datagram {}", String::from_utf8_lossy(b)),
                Event::Message(m) => m.name().to_owned(),
            })
        })
        .expect("the router's frames decode");
    }
    got
}

/// A hand-made peer on a plain router's data channel (tunnel "rogue", the token of
/// [`PLAIN`]), past `Welcome`; with the decoder that read it.
pub fn welcomed_peer(raddr: std::net::SocketAddr) -> (TcpStream, FrameDecoder) {
    let mut peer = connect(raddr);
    let hello = Message::Hello(Hello {
        versions: VersionRange::ours(),
        channel: ChannelKind::Data,
        tunnel: "rogue".into(),
        token: Some(Secret::new("s3cret-token".into())),
        source: None,
    });
    peer.write_all(&hello.to_frame()).unwrap();
    let mut d = FrameDecoder::new();
    assert_eq!(read_events(&mut peer, &mut d, 1), ["Welcome"]);
    (peer, d)
}

/// The message of the first refusal (`Refused`, `OpenFailed`, `Reset`) the router
/// sends on `peer`.
fn read_refusal(peer: &mut TcpStream, d: &mut FrameDecoder) -> String {
    let mut refusal = None;
    let mut buf = [0u8; 4096];
    while refusal.is_none() {
        let n = peer.read(&mut buf).expect("the router answers");
        assert!(n > 0, "the router closed without a refusal");
        d.feed(&buf[..n], |ev| {
            if let Event::Message(
                Message::Refused(r) | Message::OpenFailed(r) | Message::Reset(r),
            ) = ev
            {
                refusal.get_or_insert_with(|| r.message.clone());
            }
        })
        .expect("the router's frames decode");
    }
    refusal.unwrap()
}

/// The router checks a tunnel's source when its link comes up (protocol 7), and each
/// stream all the same: a peer that names one source on its link (or none, as
/// clients of protocol 6 do) may still open no other.
#[test]
fn a_stream_to_a_source_outside_the_allow_list_is_refused_whatever_the_link_named() {
    let home = Home::with_keys();
    let (allowed, other) = (sources::echo(), sources::echo());
    let (router, raddr) = home.router_with(Engine::Epoll, &[allowed.to_string()], PLAIN);
    let mut ctl = connect(raddr);
    let hello = Message::Hello(Hello {
        versions: VersionRange::ours(),
        channel: ChannelKind::Control,
        tunnel: "rogue".into(),
        token: Some(Secret::new("s3cret-token".into())),
        source: Some(allowed.to_string()),
    });
    ctl.write_all(&hello.to_frame()).unwrap();
    assert_eq!(
        read_events(&mut ctl, &mut FrameDecoder::new(), 1),
        ["Welcome"]
    );
    let (mut peer, mut d) = welcomed_peer(raddr);
    let mut frames = Message::Open {
        target: other.to_string(),
    }
    .to_frame();
    frames.extend_from_slice(&Header::data(3));
    frames.extend_from_slice(b"abc");
    peer.write_all(&frames).unwrap();
    let why = format!(
        "source {other} is not allowed by the router's policy; to allow it, add `--allow {other}` to the router"
    );
    assert_eq!(read_refusal(&mut peer, &mut d), why);
    router.wait_stderr(&why);
}

/// Anyone with the token may speak the plain transport, so the router must hold its
/// own against a peer that breaks the framing mid-stream: that channel and its
/// source connection close, the reason is logged, and other streams go on.
#[test]
fn a_plain_peer_that_breaks_the_framing_mid_stream_is_cut_off() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.to_string()], PLAIN);
    let (mut peer, mut d) = welcomed_peer(raddr);
    // A well-formed stream's start: `Open` with the first payload.
    let mut frames = Vec::new();
    Message::Open {
        target: source.to_string(),
    }
    .encode(&mut frames);
    frames.extend_from_slice(&Header::data(3));
    frames.extend_from_slice(b"abc");
    peer.write_all(&frames).unwrap();
    assert_eq!(read_events(&mut peer, &mut d, 2), ["Opened", "Data abc"]);

    // A heartbeat where payload belongs.
    peer.write_all(&Message::Ping { nonce: 1 }.to_frame())
        .unwrap();
    let mut rest = Vec::new();
    match peer.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "the router sent {rest:?} instead of closing"
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    router.wait_stderr(
        "plain stream failed: protocol error: unexpected a control frame \
         (expected Data, Eof or Unframed, in the middle of a stream)",
    );

    // The source connection went with it: the router holds no connection at all.
    let pid = router.pid();
    wait_until("the router's connections all closed", || {
        let n = (established(pid), close_wait(pid));
        (n == (0, 0), n)
    });

    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), PLAIN);
    wait_for_echo(taddr, b"still serving");
}

/// A tunnel name that could forge a line in the router's log (or a label nobody
/// chose) is refused, named escaped, and the router serves on.
#[test]
fn a_hello_with_a_name_that_is_no_name_is_refused() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.to_string()], PLAIN);
    let mut peer = connect(raddr);
    let hello = Message::Hello(Hello {
        versions: VersionRange::ours(),
        channel: ChannelKind::Control,
        tunnel: "evil\nINFO forged".into(),
        token: Some(Secret::new("s3cret-token".into())),
        source: None,
    });
    peer.write_all(&hello.to_frame()).unwrap();
    let refusal = read_refusal(&mut peer, &mut FrameDecoder::new());
    assert!(
        refusal
            .starts_with("the tunnel's name \"evil\\nINFO forged\" is not a valid name; use 1-64"),
        "{refusal}"
    );
    router.wait_stderr("tunnel=\"evil\\nINFO forged\"");
    assert!(
        !router
            .stderr()
            .lines()
            .any(|l| l.starts_with("INFO forged")),
        "{}",
        router.stderr()
    );
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), PLAIN);
    wait_for_echo(taddr, b"served on");
}

/// A tunnel and a router of different transports, and a tunnel pointed at a server
/// that is no router, are each told what is probably wrong and the fix; the tunnel,
/// which no router admitted yet, stops (exit 77), as `start` would report it. A peer
/// that only closes the connection is tried again.
#[test]
fn a_transport_mismatch_is_named_on_both_sides() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo().to_string();

    let (tls_router, raddr) = home.router(engine, std::slice::from_ref(&source));
    let mut plain_tunnel = home.tunnel_proc(engine, raddr, &source, PLAIN);
    plain_tunnel.wait_stderr(&format!(
        "router {raddr} answers in TLS, and this tunnel uses --transport plain: start the \
         tunnel without --transport plain, or run the router with --transport plain"
    ));
    tls_router.wait_stderr(
        "a client of the plain transport connected to this TLS router: start the tunnel \
         without --transport plain, or run the router with --transport plain",
    );
    assert_code(plain_tunnel.wait_exit(), 77, &plain_tunnel.stderr());

    let (plain_router, raddr) = home.router_with(engine, std::slice::from_ref(&source), PLAIN);
    let mut tls_tunnel = home.tunnel_proc(engine, raddr, &source, &[]);
    tls_tunnel.wait_stderr(&format!(
        "router {raddr} does not speak Conduit's TLS transport (is it a plain-transport \
         router, or not a Conduit router at all?): check --router and --transport"
    ));
    plain_router.wait_stderr(
        "a TLS client connected to this plain-transport router: start the tunnel with \
         --transport plain or run the router without it",
    );
    assert_code(tls_tunnel.wait_exit(), 77, &tls_tunnel.stderr());

    // An HTTP server where the router should be.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let haddr = http.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in http.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let mut at_http = home.tunnel_proc(engine, haddr, &source, &[]);
    at_http.wait_stderr(&format!(
        "router {haddr} does not speak Conduit's TLS transport (is it a plain-transport \
         router, or not a Conduit router at all?): check --router and --transport"
    ));
    assert_code(at_http.wait_exit(), 77, &at_http.stderr());

    // A forwarder whose router is not up yet accepts and closes: that is tried again.
    let forwarder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let faddr = forwarder.local_addr().unwrap();
    thread::spawn(move || {
        for c in forwarder.incoming().flatten() {
            drop(c);
        }
    });
    let mut early = home.tunnel_proc(engine, faddr, &source, &[]);
    early.wait_stderr(&format!(
        "router {faddr} closed the connection during the TLS handshake (a router stopping, or \
         a forwarder whose router is not up yet; if it stays so, check --router and \
         --transport); retrying in"
    ));
    assert!(early.running(), "{}", early.stderr());
    early.stop();
}

/// A plain router checks no client keys: it needs no authorized_clients file, and
/// does not warn that an empty one refuses every client.
#[test]
fn a_plain_router_needs_no_authorized_clients() {
    let home = Home::with_keys();
    let source = sources::echo();
    let clients = home.path().join("authorized_clients");
    std::fs::remove_file(&clients).unwrap();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.to_string()], PLAIN);
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), PLAIN);
    wait_for_echo(taddr, b"no keys checked");
    assert!(
        !router.stderr().contains("authorized"),
        "{}",
        router.stderr()
    );
    drop(router);

    // An empty one: no warning that every client will be refused.
    std::fs::write(&clients, "").unwrap();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.to_string()], PLAIN);
    let (_tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &[PLAIN, &["--name", "second"]].concat(),
    );
    wait_for_echo(taddr, b"still none");
    assert!(
        !router.stderr().contains("every client will be refused"),
        "{}",
        router.stderr()
    );
}

/// An HTTP request sent to a plain router's port is named as such in its log, not
/// as a frame of an unknown type.
#[test]
fn a_plain_router_names_an_http_request_sent_to_it() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.to_string()], PLAIN);
    let mut c = connect(raddr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: conduit\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let body = "this port is a Conduit router's, for Conduit tunnels only; its API is on its \
                --api-bind address\n";
    assert_eq!(
        answer,
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    );
    router.wait_stderr(
        "connection refused: a plain-text HTTP request: this port is a Conduit router, only \
         Conduit clients can use it",
    );
    assert_eq!(
        router.stderr_count("unknown frame type"),
        0,
        "{}",
        router.stderr()
    );
}

/// The plain transport checks no keys, so it needs none: on a machine where
/// `conduit init` never ran, a plain router serves a tunnel started in the
/// foreground, one started in the background and one brought up from a file, none
/// given a router key; no key file is written, and the router's API names no key. The TLS transport still asks for the
/// router's key, and says how to give it.
#[test]
fn the_plain_transport_needs_no_keys() {
    let home = Home::empty();
    let _cleanup = KillAll(&home);
    let source = sources::echo().to_string();
    let (_router, raddr, api) = crate::ops::router_api(&home, std::slice::from_ref(&source), PLAIN);
    // It presents no key.
    let info = crate::ops::get(&api, "/api/v1/info");
    assert_eq!(
        info["data"]["public_key"],
        serde_json::Value::Null,
        "{info}"
    );
    let raddr = raddr.to_string();
    let start = |name: &str, extra: &[&str]| -> Vec<String> {
        let fixed = [
            "start", "--router", &raddr, "--source", &source, "--name", name,
        ];
        let rest = ["--bind", "127.0.0.1:0", "--io-engine", "epoll"];
        (fixed.iter().chain(&rest).chain(extra))
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |v: Vec<String>| home.run(&v.iter().map(String::as_str).collect::<Vec<_>>());

    let fg = start("fg", &[&["--foreground"], PLAIN].concat());
    let foreground = home.spawn(&fg.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = addr_in(&foreground.wait_stdout("listening on"));
    foreground.wait_stdout("connected to router");
    wait_for_echo(addr, b"in the foreground, no keys");

    let (status, _, err) = run(start("bg", PLAIN));
    assert_code(status, 0, &err);
    wait_for_echo(bind_of(&home, "bg"), b"in the background, no keys");

    let file = home.path().join("plain.toml");
    let port = raddr.rsplit_once(':').unwrap().1;
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"127.0.0.1\"\nport = {port}\ntransport = \"plain\"\n\n\
             [security]\ntoken = \"s3cret-token\"\n\n\
             [performance]\nworkers = 1\nio_engine = \"epoll\"\n\n\
             [[tunnels]]\nname = \"filed\"\nsource = \"{source}\"\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (status, _, err) = home.run(&["config", "validate", "-f", file]);
    assert_code(status, 0, &err);
    let (status, _, err) = home.run(&["up", "-f", file]);
    assert_code(status, 0, &err);
    wait_for_echo(bind_of(&home, "filed"), b"from a file, no keys");
    assert!(!home.path().join("keys").exists());

    // TLS: the router's key is needed.
    let (status, out, err) = run(start("tls", &[]));
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "conduit: error: --router-key is missing: give the router's public key (what its \
         `conduit init` printed) or the path of its .pub file, or set CONDUIT_ROUTER_KEY \
         (only --transport plain, which checks no keys, goes without)\n"
    );

    // Plain: a router key given would read as the router being authenticated, and is
    // refused (a file's too, by `config validate` and `up`).
    let key = "ed25519:Ik6aDp1Rj7l1nB6ucjJJOXsn0sIBvlvSFwzC7xE0Zmk=";
    let (status, out, err) = run(start("keyed", &[PLAIN, &["--router-key", key]].concat()));
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "conduit: error: --router-key (or CONDUIT_ROUTER_KEY) applies to TLS only: \
         --transport plain checks no router key (only --token), so the router would not be \
         authenticated; leave the key out, or drop --transport plain to pin the router\n"
    );
    let text = std::fs::read_to_string(file).unwrap().replace(
        "transport = \"plain\"\n",
        &format!("transport = \"plain\"\npublic_key = \"{key}\"\n"),
    );
    std::fs::write(file, text).unwrap();
    let (status, _, err) = home.run(&["config", "validate", "-f", file]);
    assert_code(status, 64, &err);
    assert!(
        err.starts_with(
            "error: router.public_key: applies to TLS only: transport = \"plain\" checks no \
             router key (only security.token), so the router would not be authenticated; \
             remove it, or remove transport = \"plain\" to pin the router ("
        ),
        "{err}"
    );
}

struct KillAll<'a>(&'a Home);

impl Drop for KillAll<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

/// Where the running tunnel `name` listens, as `conduit list` says.
fn bind_of(home: &Home, name: &str) -> std::net::SocketAddr {
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
    let bind = list.as_array().unwrap().iter().find(|t| t["name"] == name);
    bind.unwrap()["bind"].as_str().unwrap().parse().unwrap()
}

/// A router's transport may come from its file (`[router] transport = "plain"`), as
/// its other settings do: a packaged router runs `--config` alone.
#[test]
fn a_router_file_can_choose_the_plain_transport() {
    let home = Home::with_keys();
    let source = sources::echo();
    let file = home.path().join("router.toml");
    std::fs::write(
        &file,
        "[router]\ntransport = \"plain\"\ntoken = \"s3cret-token\"\n",
    )
    .unwrap();
    let (router, raddr) = home.router_with(
        Engine::Epoll,
        &[source.to_string()],
        &["--config", file.to_str().unwrap()],
    );
    let line = router.wait_stdout("router listening on");
    assert!(line.ends_with("plain transport)"), "{line}");
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), PLAIN);
    wait_for_echo(taddr, b"through a router whose file chose plain");
    // The flag still wins over the file.
    let (_tls, taddr) = {
        let home = Home::with_keys();
        let file = home.path().join("router.toml");
        std::fs::write(&file, "[router]\ntransport = \"plain\"\n").unwrap();
        let (r, raddr) = home.router_with(
            Engine::Epoll,
            &[source.to_string()],
            &["--config", file.to_str().unwrap(), "--transport", "tls"],
        );
        let line = r.wait_stdout("router listening on");
        assert!(!line.contains("plain"), "{line}");
        let t = home.tunnel(Engine::Epoll, raddr, &source.to_string());
        ((home, r, t.0), t.1)
    };
    wait_for_echo(taddr, b"tls by the flag");
}
