#!/usr/bin/env bash
# Source-based line and region coverage of the whole test suite: the unit tests and
# the end-to-end tests, whose tunnel and router processes (the real binary, built
# instrumented) write their counters too. Not part of CI (it rebuilds everything
# instrumented in target/coverage and takes about as long as the suite).
#
#   tests/coverage.sh            # summary per file, and the total
#   tests/coverage.sh --html     # and target/coverage/llvm-cov/html/index.html
#
# Installs what it lacks: the suite's own tools (tests/setup.sh), cargo-llvm-cov,
# and llvm-cov / llvm-profdata of the LLVM version rustc is built on (rustup's
# llvm-tools component if present, else Debian's llvm-N package).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup.sh

command -v cargo-llvm-cov >/dev/null || cargo install cargo-llvm-cov --locked
# llvm-cov and llvm-profdata must match rustc's LLVM: rustup's llvm-tools component
# when installed (cargo-llvm-cov finds it), else Debian's llvm-N.
components=$(rustup component list --installed 2>/dev/null || true)
if ! grep -q '^llvm-tools' <<<"$components"; then
  llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\)\..*/\1/p')
  if ! command -v "llvm-cov-$llvm" >/dev/null || ! command -v "llvm-profdata-$llvm" >/dev/null; then
    echo "installing: llvm-$llvm (llvm-cov and llvm-profdata for rustc's LLVM $llvm)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "llvm-$llvm"
  fi
  export LLVM_COV="llvm-cov-$llvm" LLVM_PROFDATA="llvm-profdata-$llvm"
fi
export CARGO_TARGET_DIR="$PWD/target/coverage"

eval "$(cargo llvm-cov show-env --sh)"
# Continuous mode (`%c`): counters live in the profile file as the program runs, so
# the processes the tests stop with SIGKILL (most of them, through their handles)
# count too. On Linux it needs the counters relocated at run time.
export LLVM_PROFILE_FILE="$CARGO_LLVM_COV_TARGET_DIR/conduit-%p%c.profraw"
export RUSTFLAGS="${RUSTFLAGS:-} -Cllvm-args=-runtime-counter-relocation"
cargo llvm-cov clean --workspace

export CONDUIT_E2E_REQUIRE_TOOLS=1
status=0
cargo nextest run --workspace --no-fail-fast || status=$?

report=(--summary-only)
[ "${1:-}" = "--html" ] && report=(--html)
cargo llvm-cov report "${report[@]}" --ignore-filename-regex '(^|/)(benches|tests)/'
[ "${1:-}" = "--html" ] && echo "report: $CARGO_TARGET_DIR/llvm-cov/html/index.html"
# A failing test fails the run, after the report.
exit "$status"
