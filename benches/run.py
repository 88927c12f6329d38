#!/usr/bin/env python3
"""Benchmark Conduit side by side with peer relays on this machine.

    python3 benches/run.py            # full run (about 40 minutes)
    python3 benches/run.py --quick    # smoke run (a few minutes)

Writes benches/results/<date>-<host>.md and .json. See benches/README.md.
Not part of `cargo test` or CI: it measures, it never asserts timings.
"""

import argparse
import datetime
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import backends, measure, relays, report, setup
from harness.procs import Supervisor

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
MEASUREMENTS = ["latency", "throughput_1", "throughput_4", "connrate", "memory",
                "udp_latency", "udp_rate"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 2 s per run, 5 000 PINGs, 2 000 held connections")
    p.add_argument("--rounds", type=int, help="rounds (default 5; quick 1)")
    p.add_argument("--seconds", type=float, help="iperf3 and connection-rate duration (10; quick 2)")
    p.add_argument("--pings", type=int, help="PING round trips per latency run (50 000; quick 5 000)")
    p.add_argument("--concurrency", type=int, default=8, help="connection-rate workers (8)")
    p.add_argument("--hold", type=int, help="connections held for the memory test (9 000; quick 2 000)")
    p.add_argument("--hold-deadline", type=float, default=180.0,
                   help="seconds allowed to open the held connections (180)")
    p.add_argument("--only", help="comma-separated relay names to run (e.g. direct,conduit-uring)")
    p.add_argument("--measurements", help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    p.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install; print the command instead")
    p.add_argument("--skip-rathole", action="store_true", help="do not install or run rathole")
    p.add_argument("--baseline", type=Path, metavar="BIN",
                   help="another conduit binary (an earlier build): each Conduit relay runs"
                        " again with it as RELAY@base, interleaved with the rest, and the"
                        " report gives this build's ratios to it")
    p.add_argument("--out", type=Path, default=BENCHES / "results", help="results directory")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite the Markdown report of an earlier run's JSON")
    a = p.parse_args(argv)
    quick = a.quick
    a.rounds = a.rounds or (1 if quick else 5)
    a.seconds = a.seconds or (2.0 if quick else 10.0)
    a.pings = a.pings or (5_000 if quick else 50_000)
    a.hold = a.hold or (2_000 if quick else 9_000)
    a.measurements = a.measurements.split(",") if a.measurements else MEASUREMENTS
    unknown = set(a.measurements) - set(MEASUREMENTS)
    if unknown:
        p.error(f"unknown measurement(s) {', '.join(sorted(unknown))}")
    return a


def build_relays(a, conduit, workdir):
    certs = setup.stunnel_certs(workdir)
    home = setup.conduit_home(conduit, workdir)
    router_help = setup.conduit_router_help(conduit)
    rathole_bin, rathole_missing = (None, "--skip-rathole given") if a.skip_rathole \
        else setup.rathole(BENCHES / "work")
    noise_keys = setup.rathole_noise_keys(rathole_bin) if rathole_bin else None
    rnote = setup.rathole_note(rathole_bin) if rathole_bin else ""
    all_relays = [
        relays.Direct(), relays.Socat(), relays.Haproxy(workdir),
        relays.Stunnel(workdir, certs),
        relays.Rathole(workdir, rathole_bin, "tcp", rathole_missing, note=rnote),
        relays.Rathole(workdir, rathole_bin, "noise", rathole_missing, noise_keys, rnote),
        relays.Rathole(workdir, rathole_bin, "tls", rathole_missing, note=rnote,
                       tls=setup.rathole_tls_identity(workdir)),
        relays.Conduit(conduit, home, "uring"), relays.Conduit(conduit, home, "epoll"),
        relays.Conduit(conduit, home, "uring", "plain", router_help),
    ]
    if a.only:
        wanted = a.only.split(",")
        unknown = set(wanted) - {r.name for r in all_relays}
        if unknown:
            raise setup.SetupError(f"unknown relay(s) {', '.join(sorted(unknown))}; known:"
                                   f" {', '.join(r.name for r in all_relays)}")
        all_relays = [r for r in all_relays if r.name in wanted]
    if a.baseline:
        all_relays += [r.twin(a.baseline.resolve(), setup.baseline_note(a.baseline))
                       for r in all_relays if isinstance(r, relays.Conduit)]
    return all_relays


def summary(measurement, d):
    """One progress line for a sample."""
    def f(v, spec=".0f"):
        return "–" if v is None else format(v, spec)

    if measurement.startswith("throughput"):
        return f"{f(d['gbit_s'], '.2f')} Gbit/s, {f(d['cpu_s_per_gb'], '.2f')} CPU-s/GB"
    if measurement == "latency":
        return f"p50 {f(d['p50_us'])} µs, p99 {f(d['p99_us'])} µs, p99.9 {f(d['p999_us'])} µs"
    if measurement == "connrate":
        return (f"{f(d['conns_per_s'])} conn/s, p99 {f(d['request_p99_us'])} µs,"
                f" {f(d['failed_pct'], '.1f')}% failed")
    if measurement.startswith("udp"):
        return (f"{f(d['transactions_per_s'])} tx/s, p50 {f(d['p50_us'])} µs,"
                f" p99 {f(d['p99_us'])} µs, {f(d['lost_pct'], '.2f')}% lost")
    return f"{d['alive']}/{d['target']} alive, {f(d['pss_kib_per_conn'], '.1f')} KiB/conn (PSS)"


def run_rounds(a, sup, active, loadgen, workdir):
    _, redis_port = backends.start_redis(sup, workdir)
    _, nginx_port = backends.start_nginx(sup, workdir)
    a.loadgen = loadgen
    runners = {
        "latency": lambda r: measure.latency(sup, r, a, redis_port),
        "throughput_1": lambda r: measure.throughput(sup, r, a, 1),
        "throughput_4": lambda r: measure.throughput(sup, r, a, 4),
        "connrate": lambda r: measure.connrate(sup, r, a, nginx_port),
        "memory": lambda r: measure.memory(sup, r, a, redis_port),
        # One user with small datagrams: latency; eight users with 1,200-byte
        # datagrams (a DNS- or game-sized payload): transactions per second.
        "udp_latency": lambda r: measure.udp(sup, r, a, 1, 64),
        "udp_rate": lambda r: measure.udp(sup, r, a, 8, 1200),
    }
    samples = []
    for rnd in range(a.rounds):
        for measurement in a.measurements:
            shift = rnd % len(active)  # rotate the order so no relay always goes first
            for relay in active[shift:] + active[:shift]:
                if measurement.startswith("udp") and not relay.udp:
                    continue  # stunnel and haproxy relay TCP only
                t0 = time.monotonic()
                sample = {"round": rnd + 1, "measurement": measurement, "relay": relay.name}
                try:
                    sample.update(ok=True, data=runners[measurement](relay))
                    text = summary(measurement, sample["data"])
                except Exception as e:  # one failed sample must not end the run
                    sample.update(ok=False, error=f"{type(e).__name__}: {e}")
                    text = "FAILED: " + sample["error"].splitlines()[0]
                samples.append(sample)
                print(f"[round {rnd + 1}/{a.rounds}] {measurement:<12} {relay.name:<16}"
                      f" {text} ({time.monotonic() - t0:.1f} s)", flush=True)
    return samples


def main(argv):
    a = parse_args(argv)
    if a.render:
        md = a.render.with_suffix(".md")
        md.write_text(report.markdown(json.loads(a.render.read_text())))
        print(f"harness: report {md}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # relays inherit it
    stamp = datetime.datetime.now()
    workdir = BENCHES / "work" / f"run-{stamp:%Y%m%d-%H%M%S}-{os.getpid()}"
    workdir.mkdir(parents=True)
    try:
        setup.ensure_tools(install=not a.no_install)
        conduit, loadgen = setup.binaries(REPO) if a.no_build else setup.build(REPO)
        # The tree the binaries were built from: it may change while the run goes on.
        built_from = setup.commit(REPO)
        all_relays = build_relays(a, conduit, workdir)
    except (setup.SetupError, OSError, subprocess.CalledProcessError) as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    active = [r for r in all_relays if not r.skip_reason()]
    if not active:
        print("harness: no relay left to run", file=sys.stderr)
        return 2
    for r in all_relays:
        if r.skip_reason():
            print(f"harness: skipping {r.name}: {r.skip_reason()}")
    machine = setup.machine_info()
    sup = Supervisor(workdir / "logs")
    try:
        samples = run_rounds(a, sup, active, loadgen, workdir)
    finally:
        sup.stop_all()
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    meds = report.medians(samples, [r.name for r in active])
    run = {
        "date": f"{stamp:%Y-%m-%d}", "started": stamp.isoformat(timespec="seconds"),
        "machine": machine,
        "config": {"command": " ".join(["python3 benches/run.py", *argv]), "quick": a.quick,
                   "commit": built_from,
                   "rounds": a.rounds, "measurements": a.measurements,
                   "seconds": a.seconds, "pings": a.pings,
                   "concurrency": a.concurrency, "hold": a.hold,
                   "fd_limit": [hard, hard], "fd_soft_limit_before": soft},
        "relays": [{"name": r.name, "security": r.security, "hops": r.hops,
                    "skipped": bool(r.skip_reason()),
                    "note": _note(r, samples)} for r in all_relays],
        "medians": meds, "ratios": report.ratios(meds, active), "samples": samples,
    }
    md, js = report.write(run, a.out)
    print(f"harness: report {md}\nharness: raw data {js}\nharness: logs {workdir / 'logs'}")
    return 0


def _note(relay, samples):
    """Why a relay was skipped, or its static note and what it said about itself
    (conduit: workers and io engine)."""
    if relay.skip_reason():
        return "skipped: " + relay.skip_reason()
    infos = {s["data"].get("relay_info") for s in samples
             if s["relay"] == relay.name and s["ok"] and s["data"].get("relay_info")}
    return "; ".join(x for x in [relay.note, *sorted(infos)] if x)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("harness: interrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
