"""CPU time and memory of a relay's processes, read from /proc.

A relay is one or more processes we started (conduit client + router, a stunnel
pair, one socat that forks a child per connection). Each reading covers those roots
and all their live descendants:

* CPU: utime + stime + cutime + cstime (children that exited and were reaped are
  folded into their parent's cutime/cstime by the kernel, so forked relays count).
* Memory: RSS (VmRSS) and PSS (from smaps_rollup). PSS splits shared pages between
  the processes that map them, so it does not count socat's shared libraries once
  per forked child; for a single-process relay the two grow alike.
"""

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def tree(roots):
    """`roots` and all their live descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry))
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


def cpu_seconds(roots):
    """User + system CPU seconds of the relay's process tree, reaped children included."""
    ticks = 0
    for pid in tree(roots):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        ticks += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return ticks / _TICKS


def memory_kib(roots):
    """{"rss_kib", "pss_kib", "processes", "threads"} summed over the relay's tree."""
    rss = pss = threads = 0
    pids = tree(roots)
    for pid in pids:
        try:
            statm = Path(f"/proc/{pid}/statm").read_text().split()
            rss += int(statm[1]) * _PAGE // 1024
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
            threads += int(_stat_fields(pid)[17])
        except (OSError, ValueError, IndexError):
            continue
    return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids), "threads": threads}


def fd_count(roots):
    """Open file descriptors of the relay's tree (a hint when a relay hits its limit)."""
    total = 0
    for pid in tree(roots):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total
