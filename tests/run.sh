#!/usr/bin/env bash
# Runs Conduit's whole test suite, installing what a fresh machine lacks first
# (tests/setup.sh: Debian packages for the real-client and metrics tests,
# cargo-nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup.sh

# The files tests write (authorized_clients, .pub files) are refused by Conduit when
# their group may write them: the tests assume the usual umask, whatever this
# shell's is.
umask 022

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
