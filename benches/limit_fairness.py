#!/usr/bin/env python3
"""How evenly streams share one tunnel's bandwidth limit.

Starts a router and a tunnel (`--bandwidth-limit RATE [--burst-limit BURST]`) on
loopback, in a temporary CONDUIT_HOME, with a source that sends SIZE bytes on each
connection; opens STREAMS downloads at once and prints when each one finished (in
seconds from its start) and how many bytes it got. Equal parts of the limit finish
together; the total time shows whether the rate holds.

    python3 benches/limit_fairness.py target/release/conduit
    python3 benches/limit_fairness.py target/release/conduit --burst 65536

Not a test: it asserts nothing and its times depend on the machine.
"""

import argparse
import os
import socket
import threading
import time

from scriptkit import address_in, conduit, drain, keyed_home, wait_line


def source(size):
    """A TCP source that sends `size` bytes on each connection; its port."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)

    def one(c):
        try:
            c.sendall(b"x" * size)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
        except OSError:
            pass
        c.close()

    def serve():
        while True:
            c, _ = lst.accept()
            threading.Thread(target=one, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lst.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", help="the conduit binary")
    ap.add_argument("--rate", type=int, default=2_000_000, help="bytes per second")
    ap.add_argument("--burst", type=int, default=0, help="bytes (0: a second's worth)")
    ap.add_argument("--size", type=int, default=4_000_000, help="bytes per download")
    ap.add_argument("--streams", type=int, default=4)
    a = ap.parse_args()

    home = keyed_home(a.binary, "conduit-fairness-")

    sport = source(a.size)
    router = conduit(a.binary, home, "router", "--bind", "127.0.0.1:0", "--allow", f"127.0.0.1:{sport}")
    tunnel = None
    try:
        raddr = address_in(wait_line(router, "router listening on"))
        drain(router)
        tunnel = conduit(
            a.binary, home, "start", "--foreground", "--router", raddr,
            "--router-key", os.path.join(home, "keys", "router.pub"),
            "--source", f"127.0.0.1:{sport}", "--bind", "127.0.0.1:0",
            "--bandwidth-limit", str(a.rate), "--burst-limit", str(a.burst),
        )
        taddr = address_in(wait_line(tunnel, "listening on"))
        wait_line(tunnel, "connected to router")
        drain(tunnel)
        host, port = taddr.rsplit(":", 1)
        done = {}

        def download(i):
            s = socket.create_connection((host, int(port)))
            t0, n = time.time(), 0
            while True:
                d = s.recv(65536)
                if not d:
                    break
                n += len(d)
            done[i] = (round(time.time() - t0, 2), n)

        threads = [threading.Thread(target=download, args=(i,)) for i in range(a.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times = sorted(done.values())
        total = a.streams * a.size
        print(f"{a.streams} downloads of {a.size} bytes under {a.rate} B/s (burst {a.burst or a.rate}):")
        for secs, n in times:
            print(f"  {secs:6.2f} s  {n} bytes")
        print(f"all {total} bytes in {times[-1][0]} s: {total / times[-1][0] / a.rate:.0%} of the rate")
    finally:
        for p in (tunnel, router):
            if p:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
