#!/usr/bin/env bash
# Runs Conduit's whole test suite, installing what a fresh machine lacks first
# (Debian packages for the real-client and metrics tests, cargo-nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)    # a DNS server behind the UDP tunnel test
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v promtool >/dev/null || need+=(prometheus)   # promtool checks the metrics format
command -v openssl >/dev/null || need+=(openssl)
command -v prlimit >/dev/null || need+=(util-linux)
command -v ss >/dev/null || need+=(iproute2)
command -v systemd-analyze >/dev/null || need+=(systemd)   # checks the service units
command -v nginx >/dev/null || need+=(nginx)   # reads the PROXY protocol header a tunnel sends
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# The real-client tests fail (instead of skipping) if a tool is missing here.
export CONDUIT_E2E_REQUIRE_TOOLS=1
cargo nextest run --workspace --no-fail-fast "$@"
cargo test --workspace --doc

# Kernel TLS offload: this machine's kernel may lack kTLS, so the offload is
# checked inside a VM that boots Debian's kernel (QEMU, software emulation),
# with the same binary the end-to-end tests ran. It takes that kernel from
# Debian's archive, so it runs on Debian (this project's CI) and says so
# elsewhere.
if grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
  cargo build --bin conduit
  tests/ktls/run.sh target/debug/conduit
else
  echo "NOTE: not run: the kernel-TLS check (tests/ktls/run.sh) boots Debian's kernel package, and this is not Debian" >&2
fi
