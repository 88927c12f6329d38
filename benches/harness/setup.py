"""Everything a run needs before measuring: peer tools, builds, keys, machine facts.

Installs missing Debian packages when run as root (otherwise prints the command),
builds conduit and the load generator in release mode, installs rathole from
crates.io into benches/work (skipped with a note if that fails), makes the stunnel
certificates and conduit keys for this run.
"""

import os
import platform
import shutil
import subprocess
from pathlib import Path

# binary → Debian package
TOOLS = {"stunnel": "stunnel4", "socat": "socat", "haproxy": "haproxy", "iperf3": "iperf3",
         "redis-server": "redis-server", "nginx": "nginx", "openssl": "openssl",
         # rathole's TLS transport builds against OpenSSL (native-tls)
         "pkg-config": "pkg-config"}
# Debian packages with no binary to look for: (package, file it installs)
LIBS = {"libssl-dev": "/usr/include/openssl/ssl.h"}
RATHOLE_VERSION = "0.5.0"


class SetupError(RuntimeError):
    """Something the run needs is missing; the message says how to get it."""


def ensure_tools(install):
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)}
                     | {pkg for pkg, path in LIBS.items() if not Path(path).exists()})
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", *missing]
    if not install or os.geteuid() != 0:
        raise SetupError("missing tools; install them with:\n  "
                         f"sudo apt-get update && sudo {' '.join(cmd)}")
    print(f"harness: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(cmd, check=True, env=env)


def build(repo):
    """Release builds of conduit and loadgen; returns their paths."""
    print("harness: cargo build --release -p conduit -p conduit-loadgen")
    subprocess.run(["cargo", "build", "--release", "-p", "conduit", "-p", "conduit-loadgen"],
                   cwd=repo, check=True)
    return binaries(repo)


def binaries(repo):
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")) / "release"
    conduit, loadgen = target / "conduit", target / "loadgen"
    for b in (conduit, loadgen):
        if not b.exists():
            raise SetupError(f"{b} is missing: run without --no-build")
    return conduit, loadgen


def rathole(workdir):
    """(path to rathole, None) or (None, why it is skipped).

    `--locked` first, as published; rathole 0.5.0's lock file pins `time` 0.3.29,
    which current rustc rejects (E0282), so then without `--locked` (newest
    semver-compatible dependencies).
    """
    root = workdir / "rathole-tls"  # built with the tls feature (earlier runs: "rathole")
    binary = root / "bin" / "rathole"
    if binary.exists():
        return binary, None
    note = root / "INSTALL_NOTE"  # read by rathole_note() for the report
    log = workdir / "rathole-install.log"
    print(f"harness: cargo install rathole {RATHOLE_VERSION} (once, a few minutes; log {log})")
    base = ["cargo", "install", "rathole", "--version", RATHOLE_VERSION, "--no-default-features",
            "--features", "server,client,noise,tls", "--root", root]
    codes = []
    with open(log, "w") as out:
        for extra in (["--locked"], []):
            out.write(f"$ {' '.join(map(str, base + extra))}\n")
            out.flush()
            r = subprocess.run(base + extra, stdout=out, stderr=subprocess.STDOUT)
            codes.append(r.returncode)
            if r.returncode == 0 and binary.exists():
                note.write_text("installed with --locked\n" if extra else
                                "installed without --locked: rathole 0.5.0's lock file pins"
                                " time 0.3.29, which current rustc rejects (E0282)\n")
                return binary, None
    return None, f"`cargo install rathole` failed (exit codes {codes}); see {log}"


def rathole_note(binary):
    """How rathole was installed, for the report."""
    try:
        return (Path(binary).parent.parent / "INSTALL_NOTE").read_text().strip()
    except OSError:
        return ""


def baseline_note(binary):
    """Which build a `--baseline` binary is, for the report."""
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                             timeout=30).stdout
    except OSError as e:
        raise SetupError(f"--baseline {binary}: cannot run it ({e}); give the path of a"
                         " conduit binary, e.g. one built from an earlier commit") from e
    commit = next((line.split()[-1] for line in out.splitlines() if line.startswith("commit:")),
                  None)
    if not out.startswith("conduit ") or commit is None:
        raise SetupError(f"--baseline {binary}: `version` did not answer like conduit;"
                         " give the path of a conduit binary")
    return f"baseline build {commit}"


def rathole_noise_keys(binary):
    """A Noise static key pair from `rathole --genkey`."""
    out = subprocess.run([binary, "--genkey"], capture_output=True, text=True, check=True)
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    keys = {}
    for label, value in zip(lines, lines[1:]):
        if label.lower().startswith("private key"):
            keys["private"] = value
        elif label.lower().startswith("public key"):
            keys["public"] = value
    if set(keys) != {"private", "public"}:
        raise SetupError(f"unexpected `rathole --genkey` output: {out.stdout!r}")
    return keys


def stunnel_certs(workdir):
    """Self-signed Ed25519 certificates for both ends of the stunnel pair."""
    certs = {}
    for side in ("server", "client"):
        key, cert = workdir / f"stunnel-{side}.key", workdir / f"stunnel-{side}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", f"/CN=bench-stunnel-{side}"],
                       check=True, capture_output=True)
        certs[f"{side}_key"], certs[f"{side}_cert"] = key, cert
    return certs


def rathole_tls_identity(workdir):
    """The rathole server's TLS identity: a self-signed P-256 certificate for
    `localhost` in a PKCS#12 file (what rathole's `pkcs12` setting takes), and the
    certificate the client trusts."""
    key, cert = workdir / "rathole-tls.key", workdir / "rathole-tls.pem"
    pfx, password = workdir / "rathole-tls.pfx", "benchmark"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    subprocess.run(["openssl", "pkcs12", "-export", "-out", pfx, "-inkey", key, "-in", cert,
                    "-passout", f"pass:{password}"], check=True, capture_output=True)
    return {"pkcs12": pfx, "password": password, "cert": cert, "hostname": "localhost"}


def conduit_home(conduit, workdir):
    """A CONDUIT_HOME with router and client keys, the client authorized."""
    home = workdir / "conduit-home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CONDUIT_HOME=str(home))
    for name in ("router", "client"):
        subprocess.run([conduit, "init", "--name", name, "--force"], env=env, check=True,
                       capture_output=True)
    shown = subprocess.run([conduit, "keys", "show", "--name", "client"], env=env,
                           check=True, capture_output=True, text=True)
    (home / "authorized_clients").write_text(shown.stdout)
    return home


def conduit_router_help(conduit):
    r = subprocess.run([conduit, "router", "--help"], capture_output=True, text=True)
    return r.stdout


def commit(repo):
    """The checked-out commit, with "+dirty" when the tree has changes."""
    head = _line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


CRYPTO_FLAGS = ["aes", "pclmulqdq", "avx2", "vaes", "vpclmulqdq", "avx512f", "sha_ni"]


def machine_info():
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    mem = next(line.split(":", 1)[1].strip() for line in
               Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    return {
        "host": platform.node(), "cpu_model": model, "cores": os.cpu_count(),
        # What the TLS peers' AES-GCM runs on: OpenSSL (stunnel) is several times
        # faster with VAES and AVX-512, which moves the TLS ratios between hosts.
        "crypto_flags": [f for f in CRYPTO_FLAGS if f in flags],
        "memory": mem, "kernel": platform.release(), "uname_a": _line(["uname", "-a"]),
        "loadavg_start": Path("/proc/loadavg").read_text().strip(),
        "versions": {
            "stunnel": _line(["stunnel", "-version"], "stunnel "),
            "haproxy": _line(["haproxy", "-v"]), "socat": _line(["socat", "-V"], "version"),
            "iperf3": _line(["iperf3", "--version"]), "redis": _line(["redis-server", "--version"]),
            "nginx": _line(["nginx", "-v"]), "openssl": _line(["openssl", "version"]),
            "rustc": _line(["rustc", "--version"]),
        },
    }


def _line(cmd, containing=""):
    """The first line of a command's output (stdout, else stderr) containing a word."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout + "\n" + out.stderr).splitlines()
    return next((line.strip() for line in lines if containing in line and line.strip()), "?")
