#!/usr/bin/env bash
# Runs every conduit-proto fuzz target for SECONDS seconds each (CI uses 60).
#
#   proto/fuzz/run-all.sh SECONDS
#
# For each target: replays the saved reproducers in regressions/<target>/ (each must
# pass), then fuzzes from corpus/<target>/ (grown and kept between runs) plus the
# committed seeds in seeds/<target>/. A target that fails does not stop the others;
# the script exits non-zero at the end if any failed, with each crashing input in
# artifacts/<target>/ and each log in logs/<target>.log.
#
# Environment:
#   FUZZ_SANITIZER  none (default; works on stable Rust) or address. address needs
#                   nightly flags (-Zsanitizer): on a stable toolchain this script sets
#                   RUSTC_BOOTSTRAP=1 for it. See README.md for why none is the default.
#   FUZZ_TARGETS    space-separated subset of targets (default: all, from `cargo fuzz list`).
set -euo pipefail

secs="${1:-}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 SECONDS   (time to fuzz each target)" >&2
    exit 64
fi
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 69
fi

sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ] && ! rustc --version | grep -q nightly; then
    # -Zsanitizer is a nightly flag; RUSTC_BOOTSTRAP=1 lets the stable compiler accept it.
    export RUSTC_BOOTSTRAP=1
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
mkdir -p logs
cargo fuzz build --sanitizer "$sanitizer"

summary=()
failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    if compgen -G "regressions/$t/*" >/dev/null; then
        echo "== $t: replaying regressions/$t"
        # -runs=0 executes every input of the given directories once, then exits.
        if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "regressions/$t" -- -runs=0 \
            >"logs/$t-regressions.log" 2>&1; then
            tail -n 40 "logs/$t-regressions.log"
            summary+=("$t: FAILED replaying regressions/$t (log: logs/$t-regressions.log)")
            failed=1
            continue
        fi
    fi
    echo "== $t: fuzzing for ${secs}s"
    corpora=("corpus/$t")
    [ -d "seeds/$t" ] && corpora+=("seeds/$t")
    # Bodies up to MAX_CONTROL_BODY (16 KiB) reach Message::decode; libFuzzer's
    # default 4096-byte inputs would never test the long ones.
    case "$t" in
        message_decode) max_len=16400 ;;
        *) max_len=4096 ;;
    esac
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$t" "${corpora[@]}" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
        >"logs/$t.log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -n1)
    tail -n 40 "logs/$t.log"
    if [ "$status" -ne 0 ]; then
        summary+=("$t: FAILED after ${execs:-?} executions (exit $status); input in artifacts/$t/, log in logs/$t.log")
        failed=1
    else
        summary+=("$t: ${execs:-?} executions in ${secs}s, no crash")
    fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
