#!/usr/bin/env python3
"""What many UDP senders cost a tunnel under a bandwidth limit.

Starts a router and a UDP tunnel (`--protocol udp --bandwidth-limit RATE`) on
loopback, in a temporary CONDUIT_HOME, with a UDP echo source; then SENDERS user
sockets each send a SIZE-byte datagram every 50 ms (far more than the limit) for
SECONDS, reading back whatever is echoed. Prints the tunnel's and the router's
resident memory every 5 s, the echoed bytes a second, the datagrams the tunnel
counted as dropped, and how late the echoes came (each datagram carries its send
time).

    python3 benches/udp_limit_memory.py target/release/conduit
    python3 benches/udp_limit_memory.py target/release/conduit --senders 1

Not a test: it asserts nothing and its figures depend on the machine. Needs a
soft open-file limit above SENDERS (each sender is a socket).
"""

import argparse
import os
import socket
import struct
import subprocess
import threading
import time

from scriptkit import address_in, conduit, drain, keyed_home, wait_line


def echo_source():
    """A UDP echo on loopback; its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def serve():
        while True:
            d, peer = s.recvfrom(70000)
            s.sendto(d, peer)

    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dropped(binary, home):
    """The tunnel's `conduit_udp_datagrams_dropped_total`."""
    env = dict(os.environ, CONDUIT_HOME=home)
    out = subprocess.run(
        [binary, "stats", "--format", "prometheus"], env=env, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("conduit_udp_datagrams_dropped_total{"):
            return int(float(line.split()[-1]))
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", help="the conduit binary")
    ap.add_argument("--rate", type=int, default=100_000, help="bytes per second")
    ap.add_argument("--senders", type=int, default=3000)
    ap.add_argument("--size", type=int, default=60_000, help="bytes per datagram")
    ap.add_argument("--seconds", type=int, default=40)
    a = ap.parse_args()

    home = keyed_home(a.binary, "conduit-udp-limit-")

    sport = echo_source()
    router = conduit(a.binary, home, "router", "--bind", "127.0.0.1:0", "--allow", f"127.0.0.1:{sport}")
    tunnel = None
    try:
        raddr = address_in(wait_line(router, "router listening on"))
        drain(router)
        tunnel = conduit(
            a.binary, home, "start", "--foreground", "--name", "udp", "--protocol", "udp",
            "--router", raddr, "--router-key", os.path.join(home, "keys", "router.pub"),
            "--source", f"127.0.0.1:{sport}", "--bind", "127.0.0.1:0",
            "--bandwidth-limit", str(a.rate),
        )
        taddr = address_in(wait_line(tunnel, "listening on"))
        wait_line(tunnel, "connected to router")
        drain(tunnel)
        host, port = taddr.rsplit(":", 1)
        socks = []
        for _ in range(a.senders):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((host, int(port)))
            socks.append(s)
        pad = b"x" * max(0, a.size - 8)
        got, late = 0, []
        t0 = time.time()
        next_report = t0 + 5
        print(f"{a.senders} senders of {a.size}-byte datagrams every 50 ms, limit {a.rate} B/s:")
        while time.time() < t0 + a.seconds:
            for s in socks:
                try:
                    s.send(struct.pack("!d", time.time()) + pad)
                except OSError:
                    pass
                try:
                    while True:
                        d = s.recv(70000)
                        got += len(d)
                        late.append(time.time() - struct.unpack("!d", d[:8])[0])
                except OSError:
                    pass
            now = time.time()
            if now >= next_report:
                print(
                    f"  t={now - t0:5.1f} s  tunnel {rss_kib(tunnel.pid) / 1024:7.1f} MiB"
                    f"  router {rss_kib(router.pid) / 1024:7.1f} MiB",
                    flush=True,
                )
                next_report += 5
            time.sleep(0.05)
        secs = time.time() - t0
        late.sort()
        print(f"echoed {got / secs:,.0f} B/s ({got / secs / a.rate:.0%} of the limit)")
        print(f"tunnel counted {dropped(a.binary, home)} datagrams dropped")
        if late:
            pct = lambda p: late[min(len(late) - 1, int(p * len(late)))]
            print(f"echo delay: p50 {pct(0.5):.3f} s, p99 {pct(0.99):.3f} s, max {late[-1]:.3f} s")
    finally:
        for p in (tunnel, router):
            if p:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
