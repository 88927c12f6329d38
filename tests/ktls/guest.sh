#!/bin/busybox sh
# shellcheck shell=dash
#
# /init of the kernel-TLS test VM that tests/ktls/run.sh builds and boots.
# It runs under BusyBox ash as PID 1, with /bin/conduit, and checks over
# loopback that Conduit hands its TLS records to the kernel (kTLS) when it
# may, and not when `--kernel-tls false` says so, moving the same bytes either way.
#
# What it prints on the serial console is read by run.sh:
#   KTLS-CHECK ok NAME
#   KTLS-CHECK FAIL NAME: WHY
#   KTLS-DONE passed=N failed=M       (last; missing means the guest died)
# Whatever happens, the VM powers off at the end so that QEMU exits.

/bin/busybox --install -s /bin
export PATH=/bin

# PID 1 must not just exit (that is a kernel panic); power off instead, on
# every path, so the host sees QEMU end rather than its own timeout.
trap 'sync; poweroff -f' EXIT
trap 'exit 1' INT TERM

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
# The crypto API loads ciphers on demand through this helper; the kernel's
# default, /sbin/modprobe, does not exist here (applets live in /bin).
echo /bin/modprobe >/proc/sys/kernel/modprobe

# Each step may take this long under TCG before it counts as hung.
READY_SECS=60      # a router or client printing its readiness line
TRANSFER_SECS=120  # one nc transfer
STOP_SECS=15       # a process exiting after SIGTERM

BIG=/tmp/big.in
BIG_SIZE=16777216  # 16 MiB
MANY=20            # concurrent transfers in the `many` case ...
MANY_SIZE=262144   # ... of 256 KiB each
ECHO_PORT=7000
FIRST_PORT=7001    # a source that speaks first and answers after the user's EOF
TICK_PORT=7002     # a source that writes a line every 0.1 s and never ends

passed=0
failed=0
ok() { echo "KTLS-CHECK ok $1"; passed=$((passed + 1)); }
fail() { echo "KTLS-CHECK FAIL $1: $2"; failed=$((failed + 1)); }
now() { date +%s; }

# alive PID: the process exists and is not a zombie (an exited child stays
# visible to `kill -0` until it is waited for).
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}

# wait_for FILE REGEX PID: polls FILE every 0.1 s until a line matches REGEX;
# fails (setting $why) as soon as PID is gone, or after READY_SECS.
wait_for() {
    wf_end=$(($(now) + READY_SECS))
    until grep -qE "$2" "$1" 2>/dev/null; do
        if ! alive "$3"; then
            grep -qE "$2" "$1" 2>/dev/null && return 0
            why="$(basename "$1" .log) exited before printing /$2/"
            return 1
        fi
        if [ "$(now)" -ge "$wf_end" ]; then
            why="no /$2/ in $(basename "$1") after ${READY_SECS} s"
            return 1
        fi
        sleep 0.1
    done
}

# stop PID: SIGTERM, then SIGKILL if it has not exited within STOP_SECS; reaps it.
stop() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null
    st_end=$(($(now) + STOP_SECS))
    while alive "$1"; do
        if [ "$(now)" -ge "$st_end" ]; then
            echo "note: pid $1 ignored SIGTERM for ${STOP_SECS} s, killing it"
            kill -9 "$1" 2>/dev/null
            break
        fi
        sleep 0.1
    done
    wait "$1" 2>/dev/null
    return 0
}

# tls_stat FIELD: a counter of /proc/net/tls_stat (0 if absent). TlsTxSw and
# TlsRxSw count the sockets whose send/receive records the kernel has
# encrypted/decrypted in software, i.e. kTLS without a NIC offload.
tls_stat() {
    if [ -r /proc/net/tls_stat ]; then
        awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }' /proc/net/tls_stat
    else
        echo 0
    fi
}

sha() { sha256sum <"$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# echo_ready: the echo source answers (one round trip through it).
echo_ready() { [ "$(echo ping | timeout 5 nc 127.0.0.1 "$ECHO_PORT" 2>/dev/null)" = ping ]; }

# ---------------------------------------------------------------- setup ---
echo "guest: kernel $(uname -r), $(nproc) CPUs"
echo "guest: cpu flags of note: $(for f in aes pclmulqdq avx2; do grep -qw "$f" /proc/cpuinfo && printf '%s ' "$f"; done)"

export CONDUIT_HOME=/tmp/home
setup_why=
conduit version || setup_why="conduit does not run (missing shared library?)"
if [ -z "$setup_why" ]; then
    conduit init --name router >/tmp/init.log 2>&1 &&
        conduit init >>/tmp/init.log 2>&1 &&
        cp "$CONDUIT_HOME/keys/client.pub" "$CONDUIT_HOME/authorized_clients" ||
        setup_why="conduit init failed: $(tail -n 5 /tmp/init.log)"
fi

# The echo source. BusyBox's small nc (not its nc 1.10 clone): with -e and
# more than one -l it forks for every connection it accepts and runs PROG
# there with the connection as stdin and stdout. Its listen backlog is the
# number of -l given, so 32 of them leave room for the `many` case's
# concurrent connects (with -ll alone, some of 20 are reset).
nc -llllllllllllllllllllllllllllllll -p "$ECHO_PORT" -e cat &
echo_pid=$!
# The other source: a greeting before reading anything (the router's kernel
# seals it right behind OpenedKernel, so the client must not have read past
# that record), then, after the user's half-close, the sha256 of all it read
# (so the reply depends on every byte and on the EOF crossing the tunnel).
cat >/bin/first <<'SH'
#!/bin/sh
echo hello-first
sha256sum
SH
chmod +x /bin/first
nc -llllllllllllllllllllllllllllllll -p "$FIRST_PORT" -e /bin/first &
first_pid=$!
cat >/bin/ticks <<'SH'
#!/bin/sh
while echo tick; do sleep 0.1; done
SH
chmod +x /bin/ticks
nc -llllllll -p "$TICK_PORT" -e /bin/ticks &
ticks_pid=$!
echo_end=$(($(now) + READY_SECS))
until echo_ready; do
    if ! alive "$echo_pid" || [ "$(now)" -ge "$echo_end" ]; then
        setup_why="${setup_why:+$setup_why; }the nc echo source on :$ECHO_PORT does not answer"
        break
    fi
    sleep 0.1
done

# The payloads, made once with their sha256 beside them (FILE.sha): one
# large file, and distinct small ones.
payload() {
    head -c "$2" /dev/urandom >"$1"
    sha "$1" >"$1.sha"
}
payload "$BIG" "$BIG_SIZE"
mkdir -p /tmp/many
i=1
while [ "$i" -le "$MANY" ]; do
    payload "/tmp/many/$i.in" "$MANY_SIZE"
    i=$((i + 1))
done

if [ -z "$setup_why" ]; then ok setup; else fail setup "$setup_why"; fi

# kTLS itself: the point of this VM. The ciphers TLS 1.3 records may use are
# loaded up front too, so that a missing one shows here rather than as a
# quiet fallback to userspace TLS.
if ! modprobe tls; then
    fail modprobe-tls "modprobe tls failed: the kernel cannot do kTLS"
elif ! conduit version | grep -qx 'kernel TLS: yes'; then
    fail modprobe-tls "tls is loaded but conduit version says: $(conduit version | grep 'kernel TLS')"
else
    ok modprobe-tls
fi
for m in gcm aesni_intel ghash_clmulni_intel chacha20poly1305 chacha_x86_64 poly1305_x86_64; do
    modprobe "$m" 2>/dev/null || echo "note: modprobe $m failed"
done
echo "guest: modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
echo "guest: tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"

# ---------------------------------------------------------------- cases ---
# start_pair ROUTER_FLAGS CLIENT_FLAGS: a router and a client tunnel in $d,
# the client connected; sets rpid, cpid, cport; on failure sets $why.
start_pair() {
    # shellcheck disable=SC2086 # the flags are zero or more words
    conduit router --bind 127.0.0.1:0 --allow "127.0.0.1:$ECHO_PORT" \
        --allow "127.0.0.1:$FIRST_PORT" --allow "127.0.0.1:$TICK_PORT" \
        --log-level debug $1 \
        >"$d/router.log" 2>&1 &
    rpid=$!
    wait_for "$d/router.log" 'router listening on 127\.0\.0\.1:[0-9]+' "$rpid" || return 1
    rport=$(sed -n 's/.*router listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$d/router.log" | head -n 1)

    # shellcheck disable=SC2086
    conduit start --foreground --name t1 --router "127.0.0.1:$rport" \
        --router-key "$CONDUIT_HOME/keys/router.pub" --source "127.0.0.1:$source_port" \
        --bind 127.0.0.1:0 --log-level debug $2 >"$d/client.log" 2>&1 &
    cpid=$!
    wait_for "$d/client.log" 'listening on 127\.0\.0\.1:[0-9]+' "$cpid" || return 1
    cport=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$d/client.log" | head -n 1)
    wait_for "$d/client.log" 'connected to router' "$cpid" || return 1
}

# transfer FILE OUT: FILE through the tunnel to the echo source and back.
# BusyBox nc half-closes (shutdown SHUT_WR) when its stdin ends and keeps
# copying the socket to stdout until the far side closes, which `cat` at
# the source does once it has seen that EOF come through the tunnel.
# nc's exit status goes to OUT.rc (143: killed by `timeout`).
transfer() {
    timeout "$TRANSFER_SECS" nc 127.0.0.1 "$cport" <"$1" >"$2" 2>"$2.err"
    echo "$?" >"$2.rc"
}

# check_echo SENT GOT: sets $why unless GOT is byte for byte SENT.
check_echo() {
    if [ "$(size "$2")" -ne "$(size "$1")" ]; then
        why="echo of $(basename "$1") is $(size "$2") bytes, sent $(size "$1"); nc exit $(cat "$2.rc")$(
            [ "$(cat "$2.rc")" != 143 ] || echo " (timed out after ${TRANSFER_SECS} s)")$(
            [ ! -s "$2.err" ] || printf ', nc said: %s' "$(tr '\n' ' ' <"$2.err" | sed 's/ $//')")"
    elif [ "$(sha "$2")" != "$(cat "$1.sha")" ]; then
        why="echo of $(basename "$1") has the right size but other bytes"
    fi
}

transfer_big() {
    t0=$(now)
    transfer "$BIG" "$d/big.out"
    echo "[$name] 16 MiB echoed in $(($(now) - t0)) s"
    check_echo "$BIG" "$d/big.out"
    [ -z "$why" ]
}

# A router that keeps TLS in userspace: the 16 MiB echo, then the `many`
# echoes at once, which take fresh channels from the pool (a channel used once
# is never offered again: its socket already has the ULP). The client (one
# worker) offers kernel TLS once per router link: after the first `Opened` it
# stops asking, so the router declines exactly once.
transfer_declined() {
    transfer_big && transfer_many || return 1
    asked=$(grep -c 'kernel TLS asked for, TLS stays in userspace: kernel_tls is off on this router' "$d/router.log")
    [ "$asked" -eq 1 ] || why="the client offered kernel TLS $asked times to a router that declined (want 1)"
    [ -z "$why" ]
}

# The speaking-first source: its greeting, then the sha256 of the 16 MiB.
transfer_first() {
    transfer "$BIG" "$d/first.out"
    printf 'hello-first\n%s  -\n' "$(cat "$BIG.sha")" >"$d/first.want"
    if ! cmp -s "$d/first.want" "$d/first.out"; then
        why="the speaking-first source's reply is not greeting + sha256: got '$(head -c 200 "$d/first.out" | tr '\n' '|')', nc exit $(cat "$d/first.out.rc")"
    fi
    [ -z "$why" ]
}

# --proxy-protocol v1: the echo starts with the PROXY header the client sent
# ahead of the user's bytes (through kernel TLS, or in userspace after the
# router declined), naming the user's address and the tunnel's port; the user's
# bytes follow unchanged.
transfer_proxy() {
    f=/tmp/many/1.in
    transfer "$f" "$d/proxy.out"
    line=$(head -n 1 "$d/proxy.out")
    cr=$(printf '\r')
    case "$line" in
        "PROXY TCP4 127.0.0.1 127.0.0.1 "*" $cport$cr") ;;
        *) why="the echo does not start with the PROXY header: '$(printf %s "$line" | head -c 120 | tr -c '[:print:]' '?')'" ;;
    esac
    if [ -z "$why" ]; then
        tail -c +$((${#line} + 2)) "$d/proxy.out" >"$d/proxy.rest"
        echo 0 >"$d/proxy.rest.rc"
        : >"$d/proxy.rest.err"
        check_echo "$f" "$d/proxy.rest"
    fi
    [ -z "$why" ]
}

transfer_many() {
    t0=$(now)
    pids=
    i=1
    while [ "$i" -le "$MANY" ]; do
        transfer "/tmp/many/$i.in" "$d/$i.out" &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p"; done
    echo "[$name] $MANY x 256 KiB echoed concurrently in $(($(now) - t0)) s"
    bad=0
    first=
    i=1
    while [ "$i" -le "$MANY" ]; do
        why=
        check_echo "/tmp/many/$i.in" "$d/$i.out"
        if [ -n "$why" ]; then
            bad=$((bad + 1))
            [ -n "$first" ] || first=$why
        fi
        i=$((i + 1))
    done
    why=
    [ "$bad" -eq 0 ] || why="$bad of $MANY transfers wrong, e.g. $first"
    [ -z "$why" ]
}

# run_case NAME KIND SOCKETS ROUTER_FLAGS CLIENT_FLAGS
#   KIND:    big (one 16 MiB echo), many (MANY concurrent small echoes),
#            declined (big, then five short echoes, to a router that keeps TLS in
#            userspace), first (16 MiB to the source that speaks first) or
#            proxy (a small echo behind the PROXY v1 header the client sends)
#   SOCKETS: by how much TlsTxSw and TlsRxSw must each grow: the sockets whose
#            records the kernel sealed and opened, one per stream on each side
#            (client and router), 0 when TLS must stay in userspace
run_case() {
    name=$1
    d=/tmp/case-$name
    mkdir -p "$d"
    why=
    rpid=
    cpid=
    source_port=$ECHO_PORT
    [ "$2" != first ] || source_port=$FIRST_PORT
    # Read before the processes start: no socket may turn kTLS unnoticed.
    tx0=$(tls_stat TlsTxSw)
    rx0=$(tls_stat TlsRxSw)
    echo "[$name] tls_stat before: TlsTxSw=$tx0 TlsRxSw=$rx0"

    start_pair "$4" "$5" && "transfer_$2"

    tx1=$(tls_stat TlsTxSw)
    rx1=$(tls_stat TlsRxSw)
    echo "[$name] tls_stat after:  TlsTxSw=$tx1 TlsRxSw=$rx1 (TlsTxSw +$((tx1 - tx0)), TlsRxSw +$((rx1 - rx0)))"
    if [ -z "$why" ] && { [ $((tx1 - tx0)) -ne "$3" ] || [ $((rx1 - rx0)) -ne "$3" ]; }; then
        why="kernel TLS sockets: TlsTxSw +$((tx1 - tx0)), TlsRxSw +$((rx1 - rx0)), want +$3 each"
    fi
    # The tunnel counts its kernel-TLS streams too (one socket each side).
    if [ -z "$why" ]; then
        want="conduit_kernel_tls_streams_total{tunnel=\"t1\"} $(($3 / 2))"
        conduit stats --format prometheus >"$d/stats.prom" 2>&1
        grep -qxF "$want" "$d/stats.prom" ||
            why="conduit stats lacks '$want': $(grep kernel_tls "$d/stats.prom" || head -n 3 "$d/stats.prom")"
    fi
    # And `conduit status` says so in words.
    if [ -z "$why" ]; then
        n=$(($3 / 2))
        case "$5" in
            *"--kernel-tls false"*) want="kernel TLS off" ;;
            *) if [ "$n" -eq 1 ]; then want="kernel TLS on (1 stream so far)"
               else want="kernel TLS on ($n streams so far)"; fi ;;
        esac
        conduit status >"$d/status.txt" 2>&1
        grep -qF "$want" "$d/status.txt" ||
            why="conduit status lacks '$want': $(cat "$d/status.txt")"
    fi
    # A process that died during the case is a failure even if bytes got through.
    if [ -z "$why" ]; then
        alive "$rpid" || why="the router exited during the case"
        alive "$cpid" || why="the client exited during the case"
    fi

    stop "$cpid"
    stop "$rpid"
    if [ -z "$why" ]; then
        ok "$name"
    else
        fail "$name" "$why"
        for f in router client; do
            echo "---- last 30 lines of the $f log ($name)"
            tail -n 30 "$d/$f.log" 2>/dev/null
        done
        echo "---- /proc/net/tls_stat"
        cat /proc/net/tls_stat 2>/dev/null
        echo "----"
    fi
}

run_case offload big 2 "" ""
run_case router-off declined 0 "--kernel-tls false" "--workers 1"
run_case client-off big 0 "" "--kernel-tls false"
run_case many many $((2 * MANY)) "" ""
run_case first first 2 "" ""
run_case epoll big 2 "--io-engine epoll" "--io-engine epoll"
run_case proxy proxy 2 "" "--proxy-protocol v1"
run_case proxy-declined proxy 0 "--kernel-tls false" "--workers 1 --proxy-protocol v1"

# The router dies (SIGKILL) in the middle of a kernel-TLS stream: its kernel
# closes the channel with a bare FIN (the channel has nothing unread: the user
# sends nothing), and the client must take that for what it is, a truncated
# stream, and abort the user's connection rather than end it cleanly. BusyBox
# nc exits alike on a reset and an EOF, so the client's log line is what
# tells the two apart.
case_cut() {
    name="cut"
    d=/tmp/case-$name
    mkdir -p "$d"
    why=
    rpid=
    cpid=
    source_port=$TICK_PORT
    tx0=$(tls_stat TlsTxSw)
    if start_pair "" ""; then
        # stdin is a FIFO opened read-write: it never ends and never has
        # bytes, so nc only reads.
        mkfifo "$d/quiet"
        timeout "$TRANSFER_SECS" nc 127.0.0.1 "$cport" <>"$d/quiet" >"$d/out" 2>"$d/err" &
        ncpid=$!
        cut_end=$(($(now) + READY_SECS))
        until [ "$(grep -c tick "$d/out" 2>/dev/null)" -ge 3 ]; do
            if [ "$(now)" -ge "$cut_end" ]; then
                why="no ticks through the tunnel after ${READY_SECS} s"
                break
            fi
            sleep 0.1
        done
        if [ -z "$why" ]; then
            [ $(($(tls_stat TlsTxSw) - tx0)) -eq 2 ] || why="the stream did not go through kernel TLS"
        fi
        kill -9 "$rpid"
        wait "$rpid" 2>/dev/null
        rpid=
        # nc ends when the client closes the user's connection; it should not
        # take anything like the transfer deadline.
        wait "$ncpid"
        rc=$?
        echo "[$name] nc exit $rc after the router was killed; nc said: $(tr '\n' ' ' <"$d/err")"
        if [ -z "$why" ] && ! grep -q 'user connection closed: .*without TLS close_notify (stream truncated)' "$d/client.log"; then
            why="the client did not report the cut stream as truncated (nc exit $rc)"
        fi
    fi
    stop "$cpid"
    if [ -z "$why" ]; then
        ok "$name"
    else
        fail "$name" "$why"
        tail -n 30 "$d/client.log" 2>/dev/null
    fi
}
case_cut

stop "$echo_pid"
stop "$first_pid"
stop "$ticks_pid"
echo "KTLS-DONE passed=$passed failed=$failed"
