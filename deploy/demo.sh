#!/usr/bin/env bash
# A working Conduit tunnel on this machine: a sample web server (the "source"), a
# router allowed to reach it, and a client tunnel in front of it, all on loopback;
# then traffic through the tunnel, checked. Everything stops at the end (or on
# Ctrl-C); pass --keep to leave the tunnel running until Ctrl-C.
set -eEuo pipefail
# `set -e` alone would stop at a failing step without a word: name it.
trap 'echo "demo: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

keep=0
[ "${1:-}" = "--keep" ] && keep=1

command -v python3 >/dev/null || { echo "demo needs python3 (for the sample web server)"; exit 1; }
command -v curl >/dev/null || { echo "demo needs curl: apt-get install -y curl"; exit 1; }

echo "== building conduit (release)"
cargo build --release -p conduit --quiet
# Where cargo put it: CARGO_TARGET_DIR if set (relative to this directory, as cargo
# takes it), else ./target.
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
bin="$target/release/conduit"
[ -x "$bin" ] || { echo "demo: cargo built no binary at $bin; is CARGO_TARGET_DIR what cargo used?" >&2; exit 1; }

work=$(mktemp -d)
export CONDUIT_HOME="$work/home"
pids=()
cleanup() {
  status=$?
  if [ "$status" != 0 ]; then
    # Say why before the logs go: they live in the work directory removed below.
    for f in router client udp; do
      [ -s "$work/$f.log" ] && { echo "== $f log"; sed -e 's/^/  /' "$work/$f.log"; }
    done
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Waits (up to 30 s) until file $1 contains $2.
wait_for() {
  for _ in $(seq 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:"; cat "$1" "${1%.out}.log" 2>/dev/null; exit 1
}

# Waits (up to 30 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for a listener on 127.0.0.1:$1"; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== 1. keys (CONDUIT_HOME=$CONDUIT_HOME)"
"$bin" init --name router >/dev/null 2>&1
client_key=$("$bin" init --name client 2>/dev/null)
echo "$client_key" > "$CONDUIT_HOME/authorized_clients"
chmod 600 "$CONDUIT_HOME/authorized_clients"   # a file of trusted keys: only its owner writes it
echo "router key: $("$bin" keys show --name router)"
echo "client key: $client_key (authorized on the router)"

echo "== 2. the source: a web server on 127.0.0.1:$((src=$(free_port)))"
mkdir -p "$work/www"
echo "<h1>Hello through Conduit</h1>" > "$work/www/index.html"
head -c 50000000 /dev/urandom > "$work/www/big.bin"
(cd "$work/www" && exec python3 -m http.server "$src" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
wait_port "$src"

usrc=$(python3 -c 'import socket; s=socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "   and a UDP service: an echo on 127.0.0.1:$usrc/udp"
python3 - "$usrc" <<'PY' >/dev/null 2>&1 &
import socket, sys
s = socket.socket(type=socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(b"echo: " + d, a)
PY
pids+=($!)

echo "== 3. the router (allowed to reach only those two sources)"
"$bin" router --bind "127.0.0.1:$(free_port)" --allow "127.0.0.1:$src" --allow "127.0.0.1:$usrc" \
  >"$work/router.out" 2>"$work/router.log" &
pids+=($!)
wait_for "$work/router.out" "router listening on"
cat "$work/router.out"
router=$(grep -o '127.0.0.1:[0-9]*' "$work/router.out" | head -1)

echo "== 4. the client tunnel"
"$bin" start --foreground --name demo --router "$router" \
  --router-key "$CONDUIT_HOME/keys/router.pub" --source "127.0.0.1:$src" \
  --bind 127.0.0.1:0 >"$work/client.out" 2>"$work/client.log" &
pids+=($!)
client_pid=$!
wait_for "$work/client.out" "connected to router"
cat "$work/client.out"
tunnel=$(grep -o '127.0.0.1:[0-9]*' "$work/client.out" | head -1)

echo "== 5. traffic through the tunnel (user -> $tunnel -> TLS 1.3 -> $router -> 127.0.0.1:$src)"
echo "\$ curl http://$tunnel/"
curl -sS "http://$tunnel/"
echo "\$ curl http://$tunnel/big.bin   (50 MB, checked by SHA-256)"
curl -sS -o "$work/got.bin" -w "%{size_download} bytes in %{time_total}s\n" "http://$tunnel/big.bin"
want=$(sha256sum < "$work/www/big.bin" | cut -d' ' -f1)
got=$(sha256sum < "$work/got.bin" | cut -d' ' -f1)
if [ "$want" = "$got" ]; then echo "sha256 matches: $got"; else echo "SHA-256 MISMATCH"; exit 1; fi

echo "== 6. a UDP tunnel to the UDP service (--protocol udp)"
"$bin" start --foreground --name demo-udp --protocol udp --router "$router" \
  --router-key "$CONDUIT_HOME/keys/router.pub" --source "127.0.0.1:$usrc" \
  --bind 127.0.0.1:0 >"$work/udp.out" 2>"$work/udp.log" &
pids+=($!)
wait_for "$work/udp.out" "connected to router"
cat "$work/udp.out"
utunnel=$(grep -o '127.0.0.1:[0-9]*' "$work/udp.out" | head -1)
python3 - "${utunnel##*:}" <<'PY'
import socket, sys
s = socket.socket(type=socket.SOCK_DGRAM)
s.settimeout(10)
for d in [b"hello over UDP", b"x" * 60000]:
    s.sendto(d, ("127.0.0.1", int(sys.argv[1])))
    got, _ = s.recvfrom(65535)
    assert got == b"echo: " + d, "the echo differs"
    print(f"sent {len(d)} bytes, got {len(got)} back: {got[:20]!r}...")
PY
"$bin" list

echo "== router log"
sed -e 's/^/  /' "$work/router.log"
if [ "$keep" = 1 ]; then
  echo "== the tunnel is up: try  curl http://$tunnel/   (Ctrl-C stops everything)"
  wait "$client_pid"
fi
echo "== done: stopping router, tunnel and source"
