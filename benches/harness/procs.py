"""Child processes of the harness: start, wait on conditions, stop, never leak.

Every process the harness starts goes through one `Supervisor`. Each child runs in its
own session (so a relay that forks, like socat or nginx, can be stopped as a group
through the handle of the process we started) and gets PR_SET_PDEATHSIG, so even a
SIGKILLed harness leaves nothing behind. `Supervisor.stop_all()` runs on normal exit,
on exceptions, on Ctrl-C and on SIGTERM.

Waiting is always on a condition with a deadline: a line printed, a port in LISTEN
state in /proc/net/tcp. No fixed sleeps stand in for synchronisation.
"""

import ctypes
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_POLL = 0.02  # seconds between checks of a condition


def _die_with_parent():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcError(RuntimeError):
    """A child failed to come up or misbehaved; the message says which and why."""


class Proc:
    """One started child: its Popen handle, its log file, its stdout lines if captured."""

    def __init__(self, name, popen, log_path, lines):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self._lines = lines  # queue of stdout lines, or None

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, n=15):
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def wait_line(self, pattern, timeout):
        """Returns the regex match of the first stdout line matching `pattern`."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcError(f"{self.name}: no line matching /{pattern}/ within {timeout}s;"
                                f" log {self.log_path}:\n{self.log_tail()}")
            try:
                # A child that exits still has its last lines in the pipe: only the
                # end-of-stdout marker from the pump says there is nothing more.
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # later waits see the end too
                try:
                    code = self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    code = "still running"
                raise ProcError(f"{self.name} closed stdout (exit status: {code}) before"
                                f" printing /{pattern}/; log {self.log_path}:\n{self.log_tail()}")
            m = rx.search(line)
            if m:
                return m

    def write_line(self, text):
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()


class Supervisor:
    """Owns every child process of one harness run."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._procs = []
        self._count = 0

    def spawn(self, name, argv, env=None, capture=False, stdin=False, cwd=None):
        """Starts `argv`; stderr (and stdout unless captured) go to a log file."""
        self._count += 1
        log_path = self.logdir / f"{self._count:04d}-{name}.log"
        log = open(log_path, "w")
        log.write(f"$ {' '.join(map(str, argv))}\n")
        log.flush()
        popen = subprocess.Popen(
            [str(a) for a in argv],
            stdout=subprocess.PIPE if capture else log,
            stderr=log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=env, cwd=cwd, text=True, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()  # the child holds its own copy
        lines = None
        if capture:
            lines = queue.Queue()
            threading.Thread(target=_pump, args=(popen.stdout, lines, log_path),
                             daemon=True).start()
        proc = Proc(name, popen, log_path, lines)
        self._procs.append(proc)
        return proc

    def stop(self, proc, timeout=10.0):
        """SIGTERM to the child's process group, then SIGKILL after `timeout`."""
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.popen.poll() is None:
            _signal_group(proc.popen, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.popen, signal.SIGKILL)
                proc.popen.wait(5)
        # Stragglers of the group (e.g. socat children mid-exit).
        _signal_group(proc.popen, signal.SIGKILL)
        for stream in (proc.popen.stdin, proc.popen.stdout):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
        return proc.popen.returncode

    def stop_all(self):
        for proc in list(reversed(self._procs)):
            try:
                self.stop(proc, timeout=5.0)
            except Exception as e:  # keep stopping the others
                print(f"harness: stopping {proc.name} (pid {proc.pid}): {e}")


def _signal_group(popen, sig):
    # The child leads its own session, so its process group id is its pid.
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(stream, lines, log_path):
    with open(log_path, "a") as log:
        for line in stream:
            log.write("[stdout] " + line)
            log.flush()
            lines.put(line.rstrip("\n"))
    lines.put(None)


def free_port():
    """A port the OS considers free right now (for tools that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port():
    """A UDP port the OS considers free right now."""
    with socket.socket(type=socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_udp_echo(port, timeout, procs=()):
    """Waits until a datagram sent to `port` comes back (the relay and the echo
    behind it are up); fails early if one of `procs` dies."""
    deadline = time.monotonic() + timeout
    with socket.socket(type=socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while True:
            for p in procs:
                if not p.alive():
                    raise ProcError(f"{p.name} exited with {p.popen.returncode} before"
                                    f" relaying UDP on {port}; log {p.log_path}:\n{p.log_tail()}")
            s.sendto(b"ready?", ("127.0.0.1", port))
            try:
                if s.recv(64) == b"ready?":
                    return
            except (TimeoutError, ConnectionRefusedError, socket.timeout):
                pass
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in procs)
                raise ProcError(f"no UDP echo through port {port} after {timeout}s ({names})")


def listening_ports():
    """Local TCP ports in LISTEN state, from /proc/net/tcp and tcp6."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port, timeout, procs=()):
    """Waits until something listens on `port`; fails early if one of `procs` dies."""
    deadline = time.monotonic() + timeout
    while port not in listening_ports():
        for p in procs:
            if not p.alive():
                raise ProcError(f"{p.name} exited with {p.popen.returncode} before listening"
                                f" on {port}; log {p.log_path}:\n{p.log_tail()}")
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in procs)
            raise ProcError(f"nothing listening on port {port} after {timeout}s ({names})")
        time.sleep(_POLL)


def run_tool(argv, timeout):
    """Runs a measuring tool (iperf3 client, loadgen) to completion; returns stdout.

    Raises ProcError with the tool's stderr when it fails or overruns `timeout`.
    """
    try:
        out = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired as e:
        raise ProcError(f"{argv[0]} {argv[1]} ran past {timeout}s") from e
    if out.returncode != 0:
        detail = (out.stderr.strip() or out.stdout.strip())[-600:]
        raise ProcError(f"{argv[0]} {argv[1]} exited with {out.returncode}: {detail}")
    return out.stdout
