#!/usr/bin/env bash
# Checks Conduit's kernel-TLS (kTLS) offload inside a small VM:
#
#   tests/ktls/run.sh PATH/TO/conduit
#
# Machines whose kernel lacks kTLS (this project's CI among them) cannot test
# it directly, so this boots Debian's stock kernel, which has kTLS as the
# module tls.ko, under QEMU with software emulation (TCG: nested KVM is not
# to be relied on), with an initramfs of BusyBox, the given conduit binary
# and tests/ktls/guest.sh as /init. The guest runs the checks over loopback
# and prints a marker line for each; this script reads them from the serial
# log. Exit status 0 when every check passed.
#
# Runs on a Debian machine, as root or with sudo (for apt-get install). What it
# needs and lacks it gets: QEMU is installed; the kernel and BusyBox are taken from the system when their
# packages are installed, else downloaded once with `apt-get download` and
# unpacked under target/ktls-vm/ (never installed), where later runs find them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$repo/target/ktls-vm

# The checks the guest must report as passed; a missing one fails the run, so
# a guest that stops early or skips one cannot pass.
expected=(setup modprobe-tls offload router-off client-off many first epoll proxy proxy-declined cut)

say() { echo "ktls: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

[ $# -eq 1 ] || {
    echo "usage: $0 PATH/TO/conduit" >&2
    exit 2
}
{ [ -f "$1" ] && [ -x "$1" ]; } || die "$1 is not an executable file"
conduit=$(realpath "$1")
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo

# ------------------------------------------------------------------ tools ---
if ! command -v qemu-system-x86_64 >/dev/null; then
    say "installing qemu-system-x86"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86
fi

# installed PACKAGE: the package is installed (not merely known, or removed
# with its configuration left).
installed() {
    [ "$(dpkg-query -W -f '${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# fetch_deb PACKAGE: downloads PACKAGE's .deb into $cache/debs and prints its
# path. The package lists are refreshed only when the download fails, since
# on a fresh machine they can be missing or name versions the mirror dropped.
fetch_deb() {
    local dir=$cache/debs
    mkdir -p "$dir"
    rm -f "$dir/$1"_*.deb
    # apt's download sandbox user cannot write into target/: as root, download
    # as root (as anyone else, apt downloads as that user).
    local as=()
    [ -n "$sudo" ] || as=(-o APT::Sandbox::User=root)
    if ! (cd "$dir" && apt-get download -qq "${as[@]}" "$1") >&2; then
        $sudo apt-get update -qq
        (cd "$dir" && apt-get download -qq "${as[@]}" "$1") >&2
    fi
    local deb
    deb=$(find "$dir" -maxdepth 1 -name "$1_*.deb" | head -n 1)
    [ -n "$deb" ] || die "apt-get download $1 left no .deb"
    echo "$deb"
}

# BusyBox: the static build (the initramfs has no libc of its own for it).
if installed busybox-static; then
    busybox=/bin/busybox
else
    # Unpacked by a previous run, or now. (Under usr/bin/ on merged-/usr Debian.)
    find_busybox() { [ ! -d "$cache/busybox" ] || find "$cache/busybox" -path '*bin/busybox' -type f | head -n 1; }
    busybox=$(find_busybox)
    if [ -z "$busybox" ]; then
        say "downloading busybox-static into $cache"
        rm -rf "$cache/busybox"
        dpkg-deb -x "$(fetch_deb busybox-static)" "$cache/busybox"
        rm -f "$cache/debs"/busybox-static_*.deb
        busybox=$(find_busybox)
    fi
    { [ -n "$busybox" ] && [ -x "$busybox" ]; } || die "no busybox in the busybox-static package"
fi

# The kernel: Debian's linux-image-*-amd64 (6.1 on Debian 12), whose tls.ko
# and crypto modules go into the initramfs. kernel_from ROOT sets vmlinuz and
# moddir from a tree holding boot/vmlinuz-K and lib/modules/K (K: $kver).
kernel_from() {
    vmlinuz=$1/boot/vmlinuz-$kver
    moddir=$1/lib/modules/$kver
    [ -d "$moddir" ] || moddir=$1/usr/lib/modules/$kver
    # -r: an installed kernel's image is readable by root only.
    [ -r "$vmlinuz" ] && [ -f "$moddir/kernel/net/tls/tls.ko" ]
}
kver=
# 1. one installed on this machine,
for pkg in $(dpkg-query -W -f '${Package}\n' 'linux-image-[0-9]*-amd64' 2>/dev/null | sort -V -r); do
    if installed "$pkg"; then
        kver=${pkg#linux-image-}
        kernel_from "" && break
        kver=
    fi
done
# 2. else one a previous run unpacked,
if [ -z "$kver" ] && [ -d "$cache/kernel/boot" ]; then
    kver=$(find "$cache/kernel/boot" -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
    [ -n "$kver" ] && ! kernel_from "$cache/kernel" && kver=
fi
# 3. else the one linux-image-amd64 depends on, downloaded and partly unpacked.
if [ -z "$kver" ]; then
    image() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'; }
    pkg=$(image)
    [ -n "$pkg" ] || { $sudo apt-get update -qq && pkg=$(image); }
    [ -n "$pkg" ] || die "apt-cache depends linux-image-amd64 names no linux-image-*-amd64"
    kver=${pkg#linux-image-}
    say "downloading $pkg into $cache"
    deb=$(fetch_deb "$pkg")
    rm -rf "$cache/kernel"
    mkdir -p "$cache/kernel"
    # Only what the VM uses: the full module tree is ~400 MB unpacked. tar
    # complains about the patterns that match nothing (lib/ or usr/lib/).
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache/kernel" --wildcards \
        "./boot/vmlinuz-$kver" \
        "*/modules/$kver/modules.*" \
        "*/modules/$kver/kernel/net/tls/*" \
        "*/modules/$kver/kernel/crypto/*" \
        "*/modules/$kver/kernel/arch/x86/crypto/*" \
        "*/modules/$kver/kernel/lib/crypto/*" 2>/dev/null || true
    kernel_from "$cache/kernel" || die "$pkg did not unpack a kernel with tls.ko"
    rm -f "$deb"
fi
[ -n "$kver" ] || die "no kernel found"
say "kernel $kver ($vmlinuz), busybox $busybox"

# -------------------------------------------------------------- initramfs ---
mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp}

cp "$busybox" "$root/bin/busybox"
cp "$here/guest.sh" "$root/init"
chmod 755 "$root/init"

# conduit without its debug sections (it is 4x smaller so), and the shared
# libraries it links, at the paths the dynamic loader looks for them.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$root/bin/conduit" "$conduit"
else
    cp "$conduit" "$root/bin/conduit"
fi
# ldd prints "lib => /path (addr)" and, for the loader, "/path (addr)".
for lib in $(ldd "$conduit" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# The modules kTLS may need: tls itself and the kernel's ciphers (generic,
# x86-accelerated, and the library ones they use). modules.dep & co. are
# made for this subset by BusyBox's depmod, which modprobe in the guest reads.
kmods=$root/lib/modules/$kver
for sub in kernel/net/tls kernel/crypto kernel/arch/x86/crypto kernel/lib/crypto; do
    mkdir -p "$kmods/$(dirname "$sub")"
    cp -a "$moddir/$sub" "$kmods/$sub"
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ ! -f "$moddir/$f" ] || cp "$moddir/$f" "$kmods/"
done
"$busybox" depmod -b "$root" "$kver"

# A newc cpio, which is what the kernel unpacks; BusyBox's cpio since the
# cpio package may be missing.
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>"$work/cpio.err") | gzip -1 >"$work/initrd.gz" ||
    die "cpio failed: $(cat "$work/cpio.err")"
say "initramfs $(du -h "$work/initrd.gz" | cut -f1)"

# ------------------------------------------------------------------- boot ---
# TCG, with -cpu max so that the guest has AES-NI, PCLMUL and AVX2 (emulated)
# for rustls' and the kernel's AES-GCM; no NIC (loopback is all the checks
# use, and it spares the iPXE boot ROM); the guest's console is the serial
# port, logged to a file. The guest powers off when done; `timeout` bounds
# one that hangs.
log=$work/guest.log
say "booting the VM (TCG; the checks take a few minutes)"
start=$(date +%s)
rc=0
timeout 600 qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
    -nodefaults -display none -nic none -no-reboot \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -serial "file:$log" || rc=$?
took=$(($(date +%s) - start))
# Kept for a look after the run (the work directory goes). No log at all
# means QEMU did not start; its own message is above.
touch "$log"
tr -d '\r' <"$log" >"$cache/guest.log"
log=$cache/guest.log

# ---------------------------------------------------------------- verdict ---
grep -E '^(KTLS-CHECK|KTLS-DONE|\[[a-z-]+\] )' "$log" | sed 's/^/  /' >&2 || true
why=()
[ "$rc" = 0 ] || why+=("QEMU exited with status $rc$([ "$rc" != 124 ] || echo ' (the 600 s deadline)')")
grep -q '^KTLS-DONE' "$log" || why+=("the guest never printed KTLS-DONE (it died or hung)")
while read -r line; do
    why+=("${line#KTLS-CHECK FAIL }")
done < <(grep '^KTLS-CHECK FAIL' "$log" || true)
for name in "${expected[@]}"; do
    grep -qx "KTLS-CHECK ok $name" "$log" || grep -q "^KTLS-CHECK FAIL $name:" "$log" ||
        why+=("no result for the check $name")
done

if ((${#why[@]})); then
    say "---- last 80 lines of the guest log ($log)"
    tail -n 80 "$log" >&2
    say "----"
    for w in "${why[@]}"; do say "FAILED: $w"; done
    say "kTLS checks failed after ${took} s"
    exit 1
fi
say "all ${#expected[@]} kTLS checks passed in ${took} s (guest log: $log)"
