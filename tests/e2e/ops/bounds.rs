//! The API's bounds: a flood of idle connections to its port neither takes the router's
//! open files nor keeps an authorized request from being answered.

use std::net::TcpStream;

use super::{TOKEN, router_api};
use crate::harness::Home;
use crate::http::{curl, wait_for};
use crate::procfs::{established, open_fds};

/// Connections the API serves at once (`conduit_controlplane::serve::MAX_CONNECTIONS`).
const CAP: usize = 128;

#[test]
fn idle_connections_beyond_the_cap_wait_and_cost_the_router_no_files() {
    let home = Home::with_keys();
    let (router, _raddr, api) = router_api(&home, &["127.0.0.1:1".to_owned()], &[]);
    let pid = router.pid();
    let before = open_fds(pid);
    let port = api.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    // More idle connections than the cap, none of which ever sends a byte.
    let idle: Vec<TcpStream> = (0..CAP + 20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    wait_for("the router to take the connections it serves", || {
        (established(pid) >= CAP).then_some(())
    });
    // Answered once the idle ones holding the slots are closed for sending nothing.
    let a = curl("GET", &format!("{api}/api/v1/info"), Some(TOKEN), &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["role"], "router");
    // Never more than the cap of them open in the router (a few files of its own
    // come and go: probes, the history file).
    assert!(established(pid) <= CAP, "{}", established(pid));
    let now = open_fds(pid);
    assert!(
        now <= before + CAP + 8,
        "{now} files open, {before} before the flood"
    );
    drop(idle);
}
