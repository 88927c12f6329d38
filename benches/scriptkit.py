"""What the standalone bench scripts (`limit_fairness.py`, `udp_limit_memory.py`)
share: a CONDUIT_HOME with a router's and a client's keys, conduit processes, and
the lines they print. Standard library only."""

import os
import subprocess
import sys
import tempfile
import threading
import time


def keyed_home(binary, prefix):
    """A new temporary CONDUIT_HOME holding a router key and a client key that the
    router admits; its path."""
    home = tempfile.mkdtemp(prefix=prefix)
    env = dict(os.environ, CONDUIT_HOME=home)
    run = lambda *args: subprocess.run([binary, *args], env=env, capture_output=True, text=True, check=True)
    run("init", "--name", "router")
    client = run("init").stdout.strip()
    path = os.path.join(home, "authorized_clients")
    with open(path, "w") as f:
        f.write(client + "\n")
    os.chmod(path, 0o600)
    return home


def conduit(binary, home, *args):
    """`conduit ARGS` in `home`, its output (stdout and stderr) readable line by line."""
    env = dict(os.environ, CONDUIT_HOME=home)
    return subprocess.Popen(
        [binary, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_line(proc, needle, deadline=30):
    """The first output line of `proc` that holds `needle`."""
    end = time.time() + deadline
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        if needle in line:
            return line
    sys.exit(f"no line with {needle!r} within {deadline}s")


def drain(proc):
    """Reads the rest of `proc`'s output, so a full pipe never stops it."""
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()


def address_in(line):
    """The last `host:port` word of a line such as `listening on 127.0.0.1:4000/udp (…)`."""
    words = [w.strip("(),").split("/")[0] for w in line.split()]
    return [w for w in words if ":" in w and w[-1:].isdigit()][-1]
