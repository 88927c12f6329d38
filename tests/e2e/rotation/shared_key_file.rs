//! A key file two tunnels share, rotated by one of them through its own router: the
//! other tunnel goes back to the key its router admits, and has it authorize the
//! file's key (by itself, or when rotated by hand).

use crate::harness::{Engine, Home, Proc};
use crate::sources;
use crate::users::assert_echo;

/// What [`shared_key_file_rotated_through_another_router`] leaves running.
struct SharedKeyFile {
    home: Home,
    tb: Proc,
    tb_addr: std::net::SocketAddr,
    b_clients: std::path::PathBuf,
    old: String,
    new: String,
    _routers: Vec<Proc>,
    _ta: Proc,
}

/// Two routers of one home, each with a clients file of its own (both admitting
/// client.pub), tunnel `ta` through the first and `tb` (with `tb_args`) through the
/// second, both with the default key file; `ta`'s key is rotated, then the second
/// router restarts: `tb` tries the file's new key, which that router does not know,
/// and goes back to the old one, which it admits.
fn shared_key_file_rotated_through_another_router(tb_args: &[&str]) -> SharedKeyFile {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let authorized = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    let files = ["a.txt", "b.txt"].map(|f| {
        let path = home.path().join(f);
        std::fs::write(&path, &authorized).unwrap();
        path
    });
    let own = |i: usize| ["--authorized-keys", files[i].to_str().unwrap()];
    let (ra, a) = home.router_with(engine, &allow, &own(0));
    let (mut rb, b) = home.router_with(engine, &allow, &own(1));
    let (ta, _) = home.tunnel_with(engine, a, &source.to_string(), &["--name", "ta"]);
    let mut args = vec!["--name", "tb"];
    args.extend_from_slice(tb_args);
    let (mut tb, tb_addr) = home.tunnel_with(engine, b, &source.to_string(), &args);
    let old = home.public_key("client");

    home.ok(&["keys", "rotate", "--tunnel", "ta"]);
    let new = home.public_key("client");
    assert_ne!(new, old);
    assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), authorized);

    rb.stop();
    let (rb, _) = home.router_at(engine, &b.to_string(), &allow, &own(1));
    tb.wait_stderr(&format!(
        "router {b} does not admit the key the key file {} holds now, {new} (another tunnel \
         sharing the file rotated it through a router of its own): the router refused this \
         client's key {new}",
        home.key("client.key").display()
    ));
    tb.wait_stderr(&format!(
        "going back to the previous key {old}, which this tunnel used until now"
    ));
    tb.wait_stdout_count("connected to router", 2);
    assert!(tb.running(), "{}", tb.stderr());
    let [_, b_clients] = files;
    SharedKeyFile {
        home,
        tb,
        tb_addr,
        b_clients,
        old,
        new,
        _routers: vec![ra, rb],
        _ta: ta,
    }
}

/// The second router's clients file holds the old key dated and the new one.
fn authorizes_the_new_key(s: &SharedKeyFile) {
    let text = std::fs::read_to_string(&s.b_clients).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("expires=")
            && lines[0].ends_with(&format!(" {} client", s.old))
            && lines[1] == format!("{} client", s.new),
        "{text}"
    );
}

/// A tunnel whose router does not know the key another tunnel rotated the shared
/// key file to goes back to the key it still admits, instead of stopping, and has
/// its router authorize the file's key through a rotation of its own.
#[test]
fn a_tunnel_sharing_its_key_file_with_another_routers_tunnel_has_its_router_authorize_it() {
    let mut s = shared_key_file_rotated_through_another_router(&[]);
    s.tb.wait_stderr(
        ", and asking its routers to authorize the file's key (as `conduit keys rotate --tunnel \
         tb` does). To keep tunnels apart, give each a key file of its own (--key)",
    );
    s.tb.wait_stderr(&format!(
        "asking this tunnel's routers to authorize the key file's key {}",
        s.new
    ));
    s.tb.wait_stdout_count("connected to router", 3);
    authorizes_the_new_key(&s);
    assert_eq!(s.home.public_key("client"), s.new);
    assert_echo(s.tb_addr, b"with the new key");
    assert!(s.tb.running(), "{}", s.tb.stderr());
}

/// The same, for a tunnel that does not rotate its key by itself: it keeps serving
/// with the old key, says to rotate it, and `conduit keys rotate` then has its router
/// authorize the file's key.
#[test]
fn a_tunnel_sharing_its_key_file_keeps_its_admitted_key_until_rotated_by_hand() {
    let mut s = shared_key_file_rotated_through_another_router(&["--key-rotation-days", "0"]);
    s.tb.wait_stderr(
        "; to move it to the file's key, rotate it too (`conduit keys rotate --tunnel tb`: its \
         routers authorize that key). To keep tunnels apart, give each a key file of its own \
         (--key)",
    );
    assert_echo(s.tb_addr, b"with the old key");

    let out = s.home.ok(&["keys", "rotate", "--tunnel", "tb"]);
    assert!(
        out.starts_with(&format!(
            "tunnel \"tb\": key rotated to {}; the old key is admitted until ",
            s.new
        )),
        "{out}"
    );
    assert_eq!(s.home.public_key("client"), s.new);
    authorizes_the_new_key(&s);
    s.tb.wait_stdout_count("connected to router", 3);
    assert_echo(s.tb_addr, b"with the new key");
    assert!(s.tb.running(), "{}", s.tb.stderr());
}
