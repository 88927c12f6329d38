//! `--proxy-protocol v1|v2`: each stream reaches the source behind a PROXY protocol
//! header that names the user's address and the tunnel's. nginx, a real consumer of
//! the header, reads it and answers with what it read; over TLS (both engines) and
//! the plain transport, from the command line and from a file. Each datagram of a
//! UDP tunnel reaches the source behind v2's datagram form, which Unbound reads.
//! `tests/run.sh` installs nginx and Unbound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;

use crate::harness::{DEADLINE, Engine, Home, Proc, assert_code, dead_port, dead_udp_port, have};
use crate::plain::PLAIN;

/// nginx on a free loopback port, its listener expecting a PROXY header (v1 or v2,
/// it tells them apart), answering each request with the addresses the header gave.
struct Nginx {
    _dir: tempfile::TempDir,
    _proc: Proc,
    addr: SocketAddr,
}

impl Nginx {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // nginx takes a port, not port 0.
        let port = dead_port();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1;\n\
             pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port} proxy_protocol;\n\
                 location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port \
             $proxy_protocol_server_addr $proxy_protocol_server_port\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let proc = Proc::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&path),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up once it answers a request behind a header of ours with what it read.
        let deadline = std::time::Instant::now() + DEADLINE;
        while ask_directly(addr).as_deref()
            != Some("HTTP/1.1 200 OK\r\n|127.0.0.9 1234 127.0.0.10 5678\n")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx does not answer on {addr}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self {
            _dir: dir,
            _proc: proc,
            addr,
        }
    }
}

/// One HTTP request to nginx at `addr` behind a PROXY v1 header naming 127.0.0.9:1234
/// to 127.0.0.10:5678: the status line and the body, joined by `|`; `None` if it
/// does not answer.
fn ask_directly(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(DEADLINE)).ok()?;
    c.write_all(b"PROXY TCP4 127.0.0.9 127.0.0.10 1234 5678\r\nGET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    Some(format!("{status}\r\n|{body}"))
}

/// One HTTP request through the tunnel at `taddr`: the body nginx answered, and
/// the user's own address (which the header should have named).
fn ask(taddr: SocketAddr) -> (String, SocketAddr) {
    let mut c = TcpStream::connect(taddr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    (body.to_owned(), me)
}

/// What nginx must have read: the user's address and port, then the tunnel's.
fn want(me: SocketAddr, taddr: SocketAddr) -> String {
    format!(
        "{} {} {} {}\n",
        me.ip(),
        me.port(),
        taddr.ip(),
        taddr.port()
    )
}

/// Both versions through one router; `transport`: the arguments that choose it on
/// both ends.
fn both_versions(engine: Engine, transport: &[&str]) {
    if !have("nginx", "-v") {
        return;
    }
    let nginx = Nginx::start();
    let home = Home::with_keys();
    let (_router, raddr) = home.router_with(engine, &[nginx.addr.to_string()], transport);
    for v in ["v1", "v2"] {
        let mut extra = vec!["--proxy-protocol", v, "--name", v];
        extra.extend_from_slice(transport);
        let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &nginx.addr.to_string(), &extra);
        // Several streams: a channel back from the pool carries the next one's header.
        for _ in 0..3 {
            let (body, me) = ask(taddr);
            assert_eq!(body, want(me, taddr), "{v}");
        }
        // `status` and `list` say so.
        let status = home.ok(&["status"]);
        assert!(
            status.contains(&format!("{taddr} → {} (PROXY {v} header)\n", nginx.addr)),
            "{status}"
        );
        let list: serde_json::Value =
            serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
        let me = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == v)
            .unwrap();
        assert_eq!(me["proxy_protocol"], v, "{list:#}");
    }
}

crate::both_engines!(
    the_source_reads_the_users_address_from_the_proxy_header,
    |engine: Engine| both_versions(engine, &[])
);

#[test]
fn the_proxy_header_rides_the_plain_transport_too() {
    both_versions(Engine::Epoll, PLAIN);
}

#[test]
fn a_file_tunnel_sends_the_proxy_header_it_names() {
    if !have("nginx", "-v") {
        return;
    }
    let nginx = Nginx::start();
    let home = Home::with_keys();
    let _cleanup = crate::manage::Cleanup(&home);
    let (_router, raddr) = home.router(Engine::Epoll, &[nginx.addr.to_string()]);
    let port = dead_port();
    let file = home.path().join("conduit.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"{}\"\nport = {}\npublic_key = \"{}\"\n\n\
             [[tunnels]]\nname = \"web\"\nsource = \"{}\"\nbind = \"127.0.0.1:{port}\"\n\
             proxy_protocol = \"v2\"\n",
            raddr.ip(),
            raddr.port(),
            home.public_key("router"),
            nginx.addr
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    home.ok(&["up", "-f", f]);
    let taddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (body, me) = ask(taddr);
    assert_eq!(body, want(me, taddr));
    home.ok(&["down", "-f", f]);
}

#[test]
fn a_udp_tunnel_refuses_the_proxy_headers_text_form() {
    let home = Home::with_keys();
    let (status, _, err) = home.run(&[
        "start",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        &home.public_key("router"),
        "--source",
        "127.0.0.1:53",
        "--bind",
        "127.0.0.1:0",
        "--protocol",
        "udp",
        "--proxy-protocol",
        "v1",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --proxy-protocol v1 has no form for UDP: a UDP tunnel sends v2's \
         before each datagram; use --proxy-protocol v2\n"
    );
}

/// Unbound, the DNS resolver, on a free loopback port where every datagram must
/// start with a PROXY v2 header (it drops those that do not), answering
/// `a.conduit.test` with 192.0.2.1 to the users its access control lets in: the
/// header's address must be allowed (127.0.0.2, not 127.0.0.3) and so must the
/// datagram's own (the router's, 127.0.0.1).
struct Unbound {
    _dir: tempfile::TempDir,
    _proc: Proc,
    addr: SocketAddr,
}

impl Unbound {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // Unbound takes a port, not port 0.
        let port = dead_udp_port();
        let conf = format!(
            "server:\n\
             \x20 username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n\
             \x20 pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  verbosity: 1\n\
             \x20 interface: 127.0.0.1@{port}\n  port: {port}\n  proxy-protocol-port: {port}\n\
             \x20 do-ip6: no\n  do-tcp: no\n  module-config: \"iterator\"\n\
             \x20 access-control: 0.0.0.0/0 refuse\n\
             \x20 access-control: 127.0.0.0/8 allow\n\
             \x20 access-control: 127.0.0.3/32 refuse\n\
             \x20 local-zone: \"conduit.test.\" static\n\
             \x20 local-data: \"a.conduit.test. IN A 192.0.2.1\"\n\
             remote-control:\n  control-enable: no\n"
        );
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).unwrap();
        let proc = Proc::spawn(Command::new("unbound").arg("-d").arg("-c").arg(&path));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up once it answers a query that carries its header itself.
        let sock = UdpSocket::bind("127.0.0.2:0").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x12\0\x0c\x7f\0\0\x02\x7f\0\0\x01".to_vec();
        header.extend_from_slice(&me.port().to_be_bytes());
        header.extend_from_slice(&port.to_be_bytes());
        crate::http::wait_for("unbound to answer", || {
            sock.send_to(&[&header[..], &query()].concat(), addr)
                .unwrap();
            let mut buf = [0u8; 512];
            sock.recv_from(&mut buf).ok().map(|_| ())
        });
        Self {
            _dir: dir,
            _proc: proc,
            addr,
        }
    }
}

/// A DNS query for the A record of `a.conduit.test`.
fn query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["a", "conduit", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What a user at `from` (a loopback address) gets from the tunnel at `taddr`:
/// the answer's response code and, if one came, the address answered.
fn resolve(from: &str, taddr: SocketAddr) -> (u8, Option<[u8; 4]>) {
    let sock = UdpSocket::bind(format!("{from}:0")).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.send_to(&query(), taddr).unwrap();
    let mut buf = [0u8; 512];
    let (n, answered_by) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer for {from}: {e}"));
    assert_eq!(answered_by, taddr);
    let answer = &buf[..n];
    assert_eq!(answer[..2], [0x12, 0x34], "the answer to the query sent");
    let rcode = answer[3] & 0x0f;
    let answers = u16::from_be_bytes([answer[6], answer[7]]);
    let a = (answers == 1).then(|| answer[n - 4..].try_into().unwrap());
    (rcode, a)
}

crate::both_engines!(
    each_datagram_of_a_udp_tunnel_carries_the_users_address_to_the_source,
    |engine: Engine| {
        if !have("unbound", "-V") {
            return;
        }
        let unbound = Unbound::start();
        let home = Home::with_keys();
        let (_router, raddr) = home.router(engine, &[unbound.addr.to_string()]);
        let (_tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &unbound.addr.to_string(),
            &["--protocol", "udp", "--proxy-protocol", "v2"],
        );
        // Unbound's access control sees each user's own address.
        for _ in 0..3 {
            assert_eq!(resolve("127.0.0.2", taddr), (0, Some([192, 0, 2, 1])));
        }
        const REFUSED: u8 = 5;
        assert_eq!(resolve("127.0.0.3", taddr), (REFUSED, None));
        let status = home.ok(&["status"]);
        assert!(
            status.contains(&format!(
                "{taddr}/udp → {} (PROXY v2 header; flows idle 60s ended)\n",
                unbound.addr
            )),
            "{status}"
        );
    }
);
