"""One measurement = start a relay in front of a backend, drive load, stop the relay.

Each function returns a flat dict of numbers (plus a few strings) for one sample;
`run.py` collects samples per relay and `report.py` takes medians.
"""

import json
import time

from . import backends, procstat
from .procs import ProcError, run_tool


def _relay_status(running):
    dead = running.check_alive()
    if dead:
        raise ProcError(f"relay died during the measurement: {dead}")


def throughput(sup, relay, cfg, streams):
    """iperf3 for cfg.seconds with `streams` parallel streams, and the relay's CPU-s/GB."""
    server, port = backends.start_iperf3(sup)
    try:
        running = relay.start(sup, port)
        try:
            cpu0 = procstat.cpu_seconds(running.pids)
            out = run_tool(["iperf3", "--client", "127.0.0.1", "--port", running.port,
                            "--time", cfg.seconds, "--parallel", streams, "--json",
                            "--connect-timeout", "5000"], timeout=cfg.seconds + 60)
            cpu1 = procstat.cpu_seconds(running.pids)
            _relay_status(running)
        finally:
            running.stop()
    finally:
        sup.stop(server)
    data = json.loads(out)
    if data.get("error"):
        raise ProcError(f"iperf3: {data['error']}")
    received = data["end"]["sum_received"]
    gb = received["bytes"] / 1e9
    cpu = cpu1 - cpu0
    return {
        "gbit_s": received["bits_per_second"] / 1e9,
        "gb_moved": gb,
        "relay_cpu_s": cpu if running.pids else None,
        "cpu_s_per_gb": cpu / gb if running.pids and gb > 0 else None,
        "relay_info": running.info,
    }


def latency(sup, relay, cfg, redis_port):
    """redis PING round trips over one connection through the relay."""
    running = relay.start(sup, redis_port)
    warmup = cfg.pings // 10
    try:
        cpu0 = procstat.cpu_seconds(running.pids)
        out = run_tool([cfg.loadgen, "ping", "--addr", f"127.0.0.1:{running.port}",
                        "--requests", cfg.pings, "--warmup", warmup],
                       timeout=300)
        cpu1 = procstat.cpu_seconds(running.pids)
        _relay_status(running)
    finally:
        running.stop()
    lat = json.loads(out)["latency"]
    # Every PING, warm-up included, passed through the relay while the CPU was read.
    per_ping = 1e6 * (cpu1 - cpu0) / (cfg.pings + warmup) if running.pids else None
    return {
        "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"],
        "mean_us": lat["mean_us"], "max_us": lat["max_us"], "count": lat["count"],
        "cpu_us_per_ping": per_ping,
        "cpu_us_per_ping_hop": per_ping / relay.hops if per_ping is not None else None,
        "relay_info": running.info,
    }


def connrate(sup, relay, cfg, nginx_port):
    """New connections per second (connect, HTTP request, response, close)."""
    running = relay.start(sup, nginx_port)
    try:
        out = run_tool([cfg.loadgen, "connrate", "--addr", f"127.0.0.1:{running.port}",
                        "--concurrency", cfg.concurrency, "--seconds", cfg.seconds],
                       timeout=cfg.seconds + 60)
        _relay_status(running)
    finally:
        running.stop()
    data = json.loads(out)
    return {
        "conns_per_s": data["conns_per_s"], "ok": data["ok"], "errors": data["errors"],
        "failed_pct": 100.0 * data["errors"] / max(1, data["ok"] + data["errors"]),
        "first_error": data["first_error"],
        "connect_p99_us": data["connect"].get("p99_us"),
        "request_p50_us": data["request"].get("p50_us"),
        "request_p99_us": data["request"].get("p99_us"),
        "relay_info": running.info,
    }


def memory(sup, relay, cfg, redis_port):
    """Memory growth of the relay with cfg.hold connections held open through it."""
    running = relay.start(sup, redis_port)
    try:
        before = procstat.memory_kib(running.pids)
        gen = sup.spawn("loadgen-hold", [
            cfg.loadgen, "hold", "--addr", f"127.0.0.1:{running.port}", "--conns", cfg.hold,
            "--open-deadline", cfg.hold_deadline], capture=True, stdin=True)
        try:
            held = json.loads(gen.wait_line(r'^\{.*"event":"held".*\}$',
                                            cfg.hold_deadline + 60).group(0))
            settle = time.monotonic()
            after = procstat.memory_kib(running.pids)
            fds = procstat.fd_count(running.pids)
            dead = running.check_alive()
            gen.write_line("check")
            final = json.loads(gen.wait_line(r'^\{.*"kind":"hold".*\}$', 120).group(0))
            check_s = time.monotonic() - settle
        finally:
            sup.stop(gen)
    finally:
        running.stop()
    opened = final["opened"]
    per = (lambda k: (after[k] - before[k]) / opened if opened and running.pids else None)
    return {
        "target": cfg.hold, "opened": opened, "alive": final["alive"],
        "failed_to_open": final["failed_to_open"], "open_seconds": held["open_seconds"],
        "first_open_error": final["first_open_error"],
        "first_check_error": final["first_check_error"],
        "relay_died": dead, "check_seconds": check_s,
        "pss_kib_per_conn": per("pss_kib"), "rss_kib_per_conn": per("rss_kib"),
        "rss_before_kib": before["rss_kib"], "rss_after_kib": after["rss_kib"],
        "pss_before_kib": before["pss_kib"], "pss_after_kib": after["pss_kib"],
        "relay_processes": after["processes"], "relay_threads": after["threads"],
        "relay_fds": fds, "relay_info": running.info,
    }


def udp(sup, relay, cfg, users, size):
    """UDP transactions through the relay: `users` users, each sending a `size`-byte
    datagram and waiting for its echo, for cfg.seconds; the relay's CPU per
    transaction."""
    echo, port = backends.start_udp_echo(sup, cfg.loadgen)
    try:
        running = relay.start_udp(sup, port)
        try:
            cpu0 = procstat.cpu_seconds(running.pids)
            out = run_tool([cfg.loadgen, "udp", "--addr", f"127.0.0.1:{running.port}",
                            "--users", users, "--size", size, "--seconds", cfg.seconds],
                           timeout=cfg.seconds + 60)
            cpu1 = procstat.cpu_seconds(running.pids)
            _relay_status(running)
        finally:
            running.stop()
    finally:
        sup.stop(echo)
    data = json.loads(out)
    lat, answered = data["latency"], data["answered"]
    return {
        "transactions_per_s": data["transactions_per_s"], "answered": answered,
        "lost": data["lost"],
        "lost_pct": 100.0 * data["lost"] / max(1, answered + data["lost"]),
        "p50_us": lat.get("p50_us"), "p99_us": lat.get("p99_us"),
        "p999_us": lat.get("p999_us"),
        "cpu_us_per_tx": (1e6 * (cpu1 - cpu0) / answered
                          if running.pids and answered else None),
        "relay_info": running.info,
    }
