"""The relays under test, one class each, all with the same shape.

`Relay.start(sup, target_port)` starts the relay in front of a backend listening on
127.0.0.1:`target_port` and returns a `Running` with the port users connect to and
the pids whose CPU and memory count as the relay's. Relays that carry UDP also have
`start_udp(sup, target_port)`, the same for a UDP backend (`udp = True`). Every relay
runs on loopback with its defaults except where noted (TCP_NODELAY on, limits raised for 9 000 connections).
"""

import os
from contextlib import contextmanager

from .procs import free_port, free_udp_port, wait_listening, wait_udp_echo

START_TIMEOUT = 20.0  # seconds for a relay to come up


class Running:
    """A started relay: where users connect, which pids are the relay, how to stop."""

    def __init__(self, sup, port, procs, info=""):
        self.sup, self.port, self.procs = sup, port, list(procs)
        self.info = info  # what the relay said about itself (conduit: workers, engine)

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def check_alive(self):
        dead = [p for p in self.procs if not p.alive()]
        return ", ".join(f"{p.name} exited ({p.popen.returncode}), log {p.log_path}"
                         for p in dead) or None

    def stop(self):
        for p in reversed(self.procs):
            self.sup.stop(p)


@contextmanager
def _starting(sup):
    """Collects the processes of a relay being started; stops them if the start fails."""
    procs = []
    try:
        yield procs
    except BaseException:
        for p in reversed(procs):
            sup.stop(p)
        raise


class Relay:
    name = "?"
    security = "plain"  # "tls", "noise" or "plain": what protects the relayed leg
    note = ""  # a fact about this row for the report (how it was installed, limits)
    udp = False  # carries UDP (has start_udp)
    hops = 1  # relay processes a request passes through (a pair: 2)

    def skip_reason(self):
        """Why this relay cannot run here, or None."""
        return None

    def start(self, sup, target_port):
        raise NotImplementedError


class Direct(Relay):
    """No relay: the load generator talks to the backend (the ceiling)."""
    name, security = "direct", "none"
    hops = 0
    udp = True

    def start(self, sup, target_port):
        return Running(sup, target_port, [])

    def start_udp(self, sup, target_port):
        return Running(sup, target_port, [])


class Socat(Relay):
    """socat, forking a child per connection, plain TCP."""
    name = "socat"
    note = "one forked process per connection (UDP: per sender)"
    udp = True

    def start_udp(self, sup, target_port):
        port = free_udp_port()
        with _starting(sup) as procs:
            procs.append(sup.spawn("socat-udp", [
                "socat", f"UDP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                f"UDP4:127.0.0.1:{target_port}"]))
            wait_udp_echo(port, START_TIMEOUT, procs)
            return Running(sup, port, procs)

    def start(self, sup, target_port):
        port = free_port()
        with _starting(sup) as procs:
            procs.append(sup.spawn("socat", [
                "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay",
                f"TCP:127.0.0.1:{target_port},nodelay"]))
            wait_listening(port, START_TIMEOUT, procs)
            return Running(sup, port, procs)


class Haproxy(Relay):
    """haproxy in TCP mode with `option splice-auto`, plain TCP."""
    name = "haproxy"
    note = "maxconn 9200, maxpipes 700 (to fit 9 000 connections under 20 000 fds)"

    def __init__(self, workdir):
        self.workdir = workdir

    def start(self, sup, target_port):
        port = free_port()
        cfg = self.workdir / f"haproxy-{port}.cfg"
        # haproxy reserves 2 fds per connection plus 2 per splice pipe and refuses to
        # start above the fd hard limit (20 000 here): cap pipes so 9 000 conns fit.
        cfg.write_text(f"""global
    maxconn 9200
    maxpipes 700
defaults
    mode tcp
    maxconn 9200
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend bench
    bind 127.0.0.1:{port} backlog 4096
    default_backend target
backend target
    server s1 127.0.0.1:{target_port}
""")
        with _starting(sup) as procs:
            procs.append(sup.spawn("haproxy", ["haproxy", "-db", "-f", cfg]))
            wait_listening(port, START_TIMEOUT, procs)
            return Running(sup, port, procs)


class Stunnel(Relay):
    """A stunnel pair: client mode → TLS 1.3 (mutual, Ed25519 certs) → server mode."""
    name, security = "stunnel", "tls"
    hops = 2

    def __init__(self, workdir, certs):
        self.workdir, self.certs = workdir, certs

    def _conf(self, name, body):
        path = self.workdir / f"{name}.conf"
        path.write_text("foreground = yes\npid =\ndebug = 3\n"
                        "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n" + body)
        return path

    def start(self, sup, target_port):
        tls_port, port = free_port(), free_port()
        c = self.certs
        server = self._conf(f"stunnel-server-{tls_port}", f"""[bench]
accept = 127.0.0.1:{tls_port}
connect = 127.0.0.1:{target_port}
cert = {c['server_cert']}
key = {c['server_key']}
sslVersionMin = TLSv1.3
verifyPeer = yes
CAfile = {c['client_cert']}
""")
        client = self._conf(f"stunnel-client-{port}", f"""[bench]
client = yes
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{tls_port}
cert = {c['client_cert']}
key = {c['client_key']}
sslVersionMin = TLSv1.3
verifyPeer = yes
CAfile = {c['server_cert']}
""")
        with _starting(sup) as procs:
            procs.append(sup.spawn("stunnel-server", ["stunnel", server]))
            procs.append(sup.spawn("stunnel-client", ["stunnel", client]))
            wait_listening(tls_port, START_TIMEOUT, procs)
            wait_listening(port, START_TIMEOUT, procs)
            return Running(sup, port, procs)


class Rathole(Relay):
    """A rathole pair (server exposes the port, client sits next to the backend)."""
    hops = 2

    def __init__(self, workdir, binary, transport, missing_note, noise_keys=None, note="",
                 tls=None):
        self.workdir, self.binary, self.transport = workdir, binary, transport
        self.missing_note, self.noise_keys, self.note = missing_note, noise_keys, note
        self.tls = tls
        self.name = f"rathole-{transport}"
        self.security = transport if transport in ("noise", "tls") else "plain"

    udp = True

    def start_udp(self, sup, target_port):
        return self.start(sup, target_port, udp=True)

    def skip_reason(self):
        return self.missing_note

    def start(self, sup, target_port, udp=False):
        ctl, port = free_port(), (free_udp_port() if udp else free_port())
        transport = f'[{{}}.transport]\ntype = "{self.transport}"\n'
        kind = 'type = "udp"\n' if udp else ""
        server = self.workdir / f"rathole-server-{port}.toml"
        server.write_text(f"""[server]
bind_addr = "127.0.0.1:{ctl}"
{transport.format("server")}{self._noise("server")}{self._tls("server")}
[server.services.bench]
{kind}token = "benchmark-token"
bind_addr = "127.0.0.1:{port}"
""")
        client = self.workdir / f"rathole-client-{port}.toml"
        client.write_text(f"""[client]
remote_addr = "127.0.0.1:{ctl}"
{transport.format("client")}{self._noise("client")}{self._tls("client")}
[client.services.bench]
{kind}token = "benchmark-token"
local_addr = "127.0.0.1:{target_port}"
""")
        with _starting(sup) as procs:
            procs.append(sup.spawn("rathole-server", [self.binary, "--server", server]))
            wait_listening(ctl, START_TIMEOUT, procs)
            procs.append(sup.spawn("rathole-client", [self.binary, "--client", client]))
            # The server opens the service port once the client's control channel is up.
            if udp:
                wait_udp_echo(port, START_TIMEOUT, procs)
            else:
                wait_listening(port, START_TIMEOUT, procs)
            return Running(sup, port, procs)

    def _tls(self, side):
        if self.transport != "tls":
            return ""
        t = self.tls
        if side == "server":
            return (f'[server.transport.tls]\npkcs12 = "{t["pkcs12"]}"\n'
                    f'pkcs12_password = "{t["password"]}"\n')
        return (f'[client.transport.tls]\ntrusted_root = "{t["cert"]}"\n'
                f'hostname = "{t["hostname"]}"\n')

    def _noise(self, side):
        if self.transport != "noise":
            return ""
        # Noise_NK: the server has a static key that the client pins.
        keys = self.noise_keys
        if side == "server":
            return f'[server.transport.noise]\nlocal_private_key = "{keys["private"]}"\n'
        return f'[client.transport.noise]\nremote_public_key = "{keys["public"]}"\n'


class Conduit(Relay):
    """Conduit client + router, TLS 1.3 with Ed25519 raw public keys (or plain)."""
    hops = 2

    def __init__(self, binary, home, engine, transport="tls", help_text=""):
        self.binary, self.home, self.engine, self.transport = binary, home, engine, transport
        self.name = f"conduit-{engine}" if transport == "tls" else f"conduit-{transport}-{engine}"
        self.security = "tls" if transport == "tls" else "plain"
        self.help_text = help_text
        self.udp = True

    def twin(self, binary, note):
        """The same relay run with another build (`--baseline`), named RELAY@base."""
        other = Conduit(binary, self.home, self.engine, self.transport, self.help_text)
        other.name, other.note = self.name + "@base", note
        # Older builds carry UDP over TLS only: a baseline plain relay runs TCP alone.
        other.udp = self.transport == "tls"
        return other

    def skip_reason(self):
        if self.transport != "tls" and "--transport" not in self.help_text:
            return "`conduit router --help` lists no --transport option yet"
        return None

    def start_udp(self, sup, target_port):
        return self.start(sup, target_port, ["--protocol", "udp"])

    def start(self, sup, target_port, extra=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        env["CONDUIT_HOME"] = str(self.home)
        common = ["--io-engine", self.engine, "--drain-timeout", "1", "--log-level", "warn"]
        if self.transport != "tls":
            common += ["--transport", self.transport]
        with _starting(sup) as procs:
            router = sup.spawn("conduit-router", [
                self.binary, "router", "--bind", "127.0.0.1:0",
                "--allow", f"127.0.0.1:{target_port}", *common], env=env, capture=True)
            procs.append(router)
            m = router.wait_line(r"router listening on 127\.0\.0\.1:(\d+)", START_TIMEOUT)
            rport = int(m.group(1))
            # The plain transport authenticates nobody: a router key is refused there.
            pin = ["--router-key", self.home / "keys" / "router.pub"] if self.transport == "tls" else []
            client = sup.spawn("conduit-client", [
                self.binary, "start", "--foreground", "--name", "bench",
                "--router", f"127.0.0.1:{rport}", *pin, "--source", f"127.0.0.1:{target_port}",
                "--bind", "127.0.0.1:0", *common, *extra], env=env, capture=True)
            procs.append(client)
            m = client.wait_line(r"listening on 127\.0\.0\.1:(\d+) *(\(.*\))?", START_TIMEOUT)
            client.wait_line(r"connected to router", START_TIMEOUT)
            return Running(sup, int(m.group(1)), procs, info=(m.group(2) or "").strip("()"))
