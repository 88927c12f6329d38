//! `[performance]` settings that change how the data plane runs, observed from
//! outside: the kernel buffer sizes of the relayed sockets (`ss -m`), the ready
//! channels `optimize_for = "latency"` keeps, and what `auto_tune` derives; with the
//! bytes still arriving whole.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home, have};
use crate::procfs::{nofile_of, wait_until};
use crate::sources::{self, pattern, read_all_hashed, sha};

/// (receive, send) buffer of each established TCP socket `ss` lists for `filter`
/// (such as `( sport = :80 )`), as the kernel accounts them: twice what was set.
fn socket_buffers(filter: &str) -> Vec<(u64, u64)> {
    let out = Command::new("ss")
        .args(["-tmnH", "state", "established", filter])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .split("skmem:(")
        .skip(1)
        .map(|s| {
            let field = |name: &str| {
                s.split([',', ')'])
                    .find_map(|f| f.strip_prefix(name)?.parse().ok())
                    .unwrap_or(0)
            };
            (field("rb"), field("tb"))
        })
        .collect()
}

/// How many of `seen` have exactly `want`.
fn count(seen: &[(u64, u64)], want: (u64, u64)) -> usize {
    seen.iter().filter(|&&b| b == want).count()
}

/// The hard open-file limit of `pid` (`None`: unlimited).
fn hard_nofile(pid: u32) -> Option<u64> {
    nofile_of(pid).1.parse().ok()
}

both_engines!(
    socket_buffers_latency_pool_and_auto_tune_take_effect,
    |engine: Engine| {
        if !have("ss", "-V") {
            return;
        }
        const LEN: usize = 16 << 20;
        let home = Home::with_keys();
        let source = sources::echo();
        let (router, raddr) = home.router_with(
            engine,
            &[source.to_string()],
            &[
                "--set",
                "performance.read_buffer_size=98304",
                "--set",
                "performance.write_buffer_size=49152",
                "--set",
                "performance.auto_tune=true",
            ],
        );
        let (_tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &source.to_string(),
            &[
                "--pool-size",
                "1",
                "--optimize-for",
                "latency",
                "--read-buffer-size",
                "20480",
                "--write-buffer-size",
                "12288",
            ],
        );
        let (client_sized, router_sized) = ((40960, 24576), (196608, 98304));

        // auto_tune sized the router's connection limit from its open-file limit.
        router.wait_stderr(&match hard_nofile(router.pid()) {
            Some(hard) => format!(
                "auto_tune: max_connections = {}: the open-file limit {hard}, less 256 for \
                 the process, at 2 per connection",
                (hard - 256) / 2
            ),
            None => "auto_tune: max_connections stays unlimited: the open-file limit is \
                     unlimited"
                .to_owned(),
        });

        // optimize_for = latency keeps 4 channels ready on each of the 2 workers in
        // spite of --pool-size 1, each sized on both ends; the control link is not a
        // relayed socket and keeps the kernel's sizes.
        let rport = raddr.port();
        let seen = wait_until("8 idle channels sized at the client", || {
            let b = socket_buffers(&format!("( dport = :{rport} )"));
            (count(&b, client_sized) == 8 && b.len() == 9, b)
        });
        assert_eq!(count(&seen, client_sized), 8, "{seen:?}");
        let seen = wait_until("8 channels sized at the router", || {
            let b = socket_buffers(&format!("( sport = :{rport} )"));
            (count(&b, router_sized) == 8, b)
        });
        assert_eq!(seen.len(), 9, "{seen:?}");

        // A user connection: its socket at the tunnel and the router's socket to the
        // source carry the sizes too.
        let mut conn = TcpStream::connect(taddr).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut hello = [0u8; 5];
        conn.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello");
        let user = socket_buffers(&format!("( sport = :{} )", taddr.port()));
        assert_eq!(user, vec![client_sized]);
        let to_source = socket_buffers(&format!("( dport = :{} )", source.port()));
        assert_eq!(to_source, vec![router_sized]);

        // One-record reads and small kernel buffers still move every byte.
        let mut w = conn.try_clone().unwrap();
        let writer = thread::spawn(move || {
            w.write_all(&pattern(7, LEN)).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        assert_eq!(
            read_all_hashed(&mut conn).unwrap(),
            (LEN, sha(&pattern(7, LEN)))
        );
        writer.join().unwrap();
    }
);
