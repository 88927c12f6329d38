"""The services behind the relays: iperf3 (bulk), redis-server (PING), nginx (HTTP),
and `loadgen udp-echo` (UDP).

They run on loopback ports chosen by the OS and are not measured: their CPU and
memory are never counted as a relay's.
"""

from .procs import free_port, wait_listening

TIMEOUT = 20.0


def start_iperf3(sup):
    """A one-off iperf3 server (one test, then it exits): a failed test cannot wedge
    the next one. Returns (proc, port)."""
    port = free_port()
    p = sup.spawn("iperf3-server", ["iperf3", "--server", "--one-off", "--bind", "127.0.0.1",
                                    "--port", port])
    wait_listening(port, TIMEOUT, [p])
    return p, port


def start_redis(sup, workdir):
    """redis-server without persistence, room for 10 000 clients. Returns (proc, port)."""
    port = free_port()
    p = sup.spawn("redis-server", [
        "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--maxclients", "10000", "--protected-mode", "no",
        "--daemonize", "no", "--dir", workdir, "--tcp-backlog", "4096"])
    wait_listening(port, TIMEOUT, [p])
    return p, port


def start_nginx(sup, workdir):
    """nginx answering every request with a fixed 200, no access log. Returns (proc, port)."""
    port = free_port()
    root = workdir / "nginx"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(f"""worker_processes auto;
worker_rlimit_nofile 20000;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    p = sup.spawn("nginx", ["nginx", "-p", root, "-c", conf, "-g", "daemon off;"])
    wait_listening(port, TIMEOUT, [p])
    return p, port


def start_udp_echo(sup, loadgen):
    """A UDP echo (`loadgen udp-echo`, two threads). Returns (proc, port)."""
    p = sup.spawn("udp-echo", [loadgen, "udp-echo", "--port", "0"], capture=True)
    port = int(p.wait_line(r'"listening":(\d+)', TIMEOUT).group(1))
    return p, port
