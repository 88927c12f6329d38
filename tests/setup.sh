#!/usr/bin/env bash
# Installs what the test suite needs and a fresh machine lacks: Debian packages for
# the real-client, DNS, metrics and service-file tests, cargo-nextest, and (from
# PyPI) the schema checkers of the deployment-file tests. Used by tests/run.sh and
# tests/coverage.sh.
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
command -v unbound >/dev/null || need+=(unbound)   # reads the PROXY header in front of UDP datagrams
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# Schema checkers for the deployment files and workflows (tests/e2e/deploy.rs), from
# PyPI, in a virtual environment of their own under target/.
tools=target/pytools
if ! "$tools/bin/kubernetes-validate" --version >/dev/null 2>&1 ||
   ! "$tools/bin/check-jsonschema" --version >/dev/null 2>&1; then
  if ! python3 -m venv --clear "$tools" >/dev/null 2>&1; then
    # Debian's python3 leaves venv (ensurepip) to a package of its own.
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
    python3 -m venv --clear "$tools"
  fi
  "$tools/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 check-jsonschema==0.39.0
fi
