"""Medians, ratios and the Markdown report of one harness run.

Input: the run's samples, one per (round, measurement, relay), each either
{"ok": True, "data": {...}} or {"ok": False, "error": "..."}.
Output: `results/<date>-<host>[-quick].json` (everything, raw) and `.md` (medians
per relay and metric, then Conduit's ratios to each peer).
"""

import re
import json
import statistics
from pathlib import Path
from .setup import CRYPTO_FLAGS

# key, measurement, field, label, unit, which way is better
METRICS = [
    ("tput1", "throughput_1", "gbit_s", "Throughput, 1 stream", "Gbit/s", "higher"),
    ("tput4", "throughput_4", "gbit_s", "Throughput, 4 streams", "Gbit/s", "higher"),
    ("cpu1", "throughput_1", "cpu_s_per_gb", "Relay CPU, 1 stream", "CPU-s/GB", "lower"),
    ("cpu4", "throughput_4", "cpu_s_per_gb", "Relay CPU, 4 streams", "CPU-s/GB", "lower"),
    ("p50", "latency", "p50_us", "PING p50", "µs", "lower"),
    ("p99", "latency", "p99_us", "PING p99", "µs", "lower"),
    ("p999", "latency", "p999_us", "PING p99.9", "µs", "lower"),
    ("ping_cpu", "latency", "cpu_us_per_ping", "Relay CPU per PING", "µs", "lower"),
    ("ping_cpu_hop", "latency", "cpu_us_per_ping_hop", "Relay CPU per PING per relay process",
     "µs", "lower"),
    ("cps", "connrate", "conns_per_s", "New connections", "conn/s", "higher"),
    ("conn_p99", "connrate", "request_p99_us", "New-connection request p99", "µs", "lower"),
    ("conn_fail", "connrate", "failed_pct", "Failed new connections", "%", "lower"),
    ("tcp_p99", "connrate", "connect_p99_us", "connect() p99", "µs", "lower"),
    ("mem", "memory", "pss_kib_per_conn", "Memory per held connection (PSS)", "KiB", "lower"),
    ("mem_rss", "memory", "rss_kib_per_conn", "Memory per held connection (RSS)", "KiB", "lower"),
    ("alive", "memory", "alive", "Held connections alive at the end", "conns", "higher"),
    ("udp_p50", "udp_latency", "p50_us", "UDP round trip p50", "µs", "lower"),
    ("udp_p99", "udp_latency", "p99_us", "UDP round trip p99", "µs", "lower"),
    ("udp_tps", "udp_rate", "transactions_per_s", "UDP transactions, 8 users", "tx/s", "higher"),
    ("udp_rate_p99", "udp_rate", "p99_us", "UDP transaction p99, 8 users", "µs", "lower"),
    ("udp_cpu", "udp_rate", "cpu_us_per_tx", "Relay CPU per UDP transaction", "µs", "lower"),
    ("udp_lost", "udp_rate", "lost_pct", "UDP datagrams lost, 8 users", "%", "lower"),
]
# Ratios reported for each Conduit row against each peer.
RATIO_KEYS = ["tput1", "tput4", "cpu1", "cpu4", "p50", "p99", "ping_cpu_hop", "cps", "conn_p99", "mem",
              "udp_p50", "udp_tps", "udp_cpu"]
GROUPS = [("Throughput and CPU", ["tput1", "tput4", "cpu1", "cpu4"]),
          ("Latency", ["p50", "p99", "p999", "ping_cpu", "ping_cpu_hop"]),
          ("Connections", ["cps", "conn_p99", "conn_fail", "tcp_p99"]),
          ("Held connections", ["alive", "mem", "mem_rss"]),
          ("UDP (relays that carry it)", ["udp_p50", "udp_p99", "udp_tps", "udp_rate_p99",
                                          "udp_cpu", "udp_lost"])]
_BY_KEY = {m[0]: m for m in METRICS}


def medians(samples, relay_names):
    out = {}
    for relay in relay_names:
        row = {}
        for key, measurement, field, *_ in METRICS:
            values = [s["data"][field] for s in samples
                      if s["relay"] == relay and s["measurement"] == measurement and s["ok"]
                      and s["data"].get(field) is not None]
            row[key] = statistics.median(values) if values else None
            row[key + "_n"] = len(values)
        out[relay] = row
    return out


def ratios(meds, relays):
    """{conduit_row: {peer: {metric: conduit / peer}}}."""
    return _ratios(meds, [r.name for r in relays])


def _ratios(meds, names):
    # A `--baseline` build's row (RELAY@base) is a peer of the same row of this build.
    conduits = [n for n in names if n.startswith("conduit") and "@" not in n]
    peers = [n for n in names if not n.startswith("conduit") and n != "direct"]
    out = {}
    for c in conduits:
        out[c] = {}
        for p in peers + [n for n in names if n == c + "@base"]:
            out[c][p] = {k: (meds[c][k] / meds[p][k]
                             if meds[c].get(k) and meds[p].get(k) else None)
                         for k in RATIO_KEYS}
    return out


def _settings(cfg):
    """The load of each measurement the run made (all of them in reports of older runs)."""
    ran = cfg.get("measurements")
    parts = [
        ("throughput", f"iperf3 {cfg['seconds']} s per run"),
        ("latency", f"{cfg['pings']} PINGs per latency run"),
        ("connrate", f"connection rate {cfg['seconds']} s at concurrency {cfg['concurrency']}"),
        ("memory", f"{cfg['hold']} held connections"),
        ("udp", f"UDP {cfg['seconds']} s per run"),
    ]
    return "; ".join(text for key, text in parts
                     if ran is None or any(m.startswith(key) for m in ran))


def _fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def markdown(run):
    meta, cfg, meds = run["machine"], run["config"], run["medians"]
    # Recomputed from the medians, so a report re-rendered with more ratio columns
    # than the run stored still has them all.
    rats = _ratios(meds, [n for n in meds
                          if n in run["ratios"] or not n.startswith("conduit") or "@" in n])
    relays = run["relays"]
    lines = [f"# Conduit benchmark: {run['date']} on {meta['host']}", ""]
    if cfg["quick"]:
        lines += ["> **Quick smoke run** (`--quick`): one round, short durations. It shows the",
                  "> harness works and gives rough orders of magnitude, not figures to quote.", ""]
    lines += [
        "Everything ran on one machine over loopback: the load generator, the backends and",
        "the relays share its cores, so absolute figures are lower than on separate hosts and",
        "relays that use more threads compete with the load generator. Compare rows, not",
        "absolute numbers. See `benches/README.md` for what each figure means.", "",
        *_busy_warning(meta),
        "## Machine", "",
        f"- CPU: {meta['cpu_model']}, {meta['cores']} cores; memory {meta['memory']}",
        *_crypto_line(meta),
        f"- `uname -a`: {meta['uname_a']}",
        f"- load average at start: {meta['loadavg_start']}; at end: {meta.get('loadavg_end')}",
        f"- {'; '.join(meta['versions'].values())}", "",
        "## Run", "",
        f"- command: `{cfg['command']}` at commit {cfg['commit']}",
        f"- {cfg['rounds']} round(s), relays interleaved round-robin within each measurement;"
        f" {_settings(cfg)}.",
        "", "| relay | protects the relayed leg with | relay processes in the path | notes |",
        "|---|---|---|---|",
    ]
    for r in relays:
        lines.append(f"| {r['name']} | {r['security']} | {r.get('hops', '–')} | {_note(r['note'])} |")
    for title, keys in GROUPS:
        if all(meds[r["name"]].get(k) is None for r in relays if not r["skipped"]
               for k in keys):
            continue  # a measurement this run left out
        lines += ["", f"## {title} (medians)", "",
                  "| relay | " + " | ".join(f"{_BY_KEY[k][3]} ({_BY_KEY[k][4]})" for k in keys)
                  + " |", "|---" * (len(keys) + 1) + "|"]
        for r in relays:
            if r["skipped"]:
                continue
            m = meds[r["name"]]
            lines.append(f"| {r['name']} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    lines += ["", "## Ratios", "",
              "Each cell is *Conduit row / peer*, medians over medians. Above 1 is better for",
              "throughput and connection rate; below 1 is better for CPU, latency and memory.", ""]
    for c, by_peer in rats.items():
        keys = [k for k in RATIO_KEYS if any(row[k] is not None for row in by_peer.values())]
        if not keys:
            continue
        lines += [f"### {c}", "",
                  "| peer | " + " | ".join(f"{_BY_KEY[k][3]}" for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for p, row in by_peer.items():
            if all(row[k] is None for k in keys):
                continue  # a peer with nothing in common with this run
            lines.append(f"| {c} / {p} | " + " | ".join(_fmt(row[k]) for k in keys) + " |")
        lines.append("")
    lines += _failures(run)
    return "\n".join(lines) + "\n"


def _busy_warning(meta):
    """A warning when other work kept the machine busy during the run."""
    loads = [float(m.split()[0]) for m in (meta["loadavg_start"], meta.get("loadavg_end") or "0")]
    if max(loads) <= meta["cores"]:
        return []
    return [f"**The machine was busy**: 1-minute load average {loads[0]:.1f} at the start and"
            f" {loads[1]:.1f} at the end on {meta['cores']} cores. Other work took CPU from the"
            " relays and the load generator; tails (p99, p99.9) suffer most.", ""]


def _failures(run):
    out = ["## Failures and notes", ""]
    bad = [s for s in run["samples"] if not s["ok"]]
    for s in bad:
        out.append(f"- round {s['round']}, {s['measurement']}, {s['relay']}: {s['error']}")
    for s in run["samples"]:
        d = s.get("data") or {}
        if s["ok"] and s["measurement"] == "memory" and d.get("alive") != d.get("target"):
            out.append(f"- round {s['round']}, memory, {s['relay']}: {d.get('opened')} of"
                       f" {d.get('target')} opened, {d.get('alive')} alive at the end;"
                       f" open error: {d.get('first_open_error')};"
                       f" check error: {d.get('first_check_error')}")
        if s["ok"] and s["measurement"] == "connrate" and d.get("errors"):
            out.append(f"- round {s['round']}, connrate, {s['relay']}: {d['errors']} failed"
                       f" connections, first: {d.get('first_error')}")
    if len(out) == 2:
        out.append("- none")
    return out


def write(run, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{run['date']}-{run['machine']['host']}" + ("-quick" if run["config"]["quick"] else "")
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    js.write_text(json.dumps(run, indent=1, default=str) + "\n")
    md.write_text(markdown(run))
    return md, js


def _note(note):
    """A relay's note with per-run ids taken out and repeats folded: every run of a
    Conduit relay reports its own tunnel id, which says nothing in a summary."""
    if not note:
        return ""
    seen = []
    for part in note.split("; "):
        part = re.sub(r"^id [\w-]+, ", "", part)
        if part not in seen:
            seen.append(part)
    return "; ".join(seen)


def _crypto_line(meta):
    """The machine's AES-GCM features, for runs that recorded them."""
    if "crypto_flags" not in meta:
        return []
    have = " ".join(meta["crypto_flags"]) or "none of " + " ".join(CRYPTO_FLAGS)
    return [f"- CPU features for AES-GCM: {have}"]
