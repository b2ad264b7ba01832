#!/bin/bash
# Unpacks a Debian root made by `debootstrap --variant=minbase --include=PACKAGES SUITE`
# into OUT_DIR. Usage: debian-root.sh SUITE OUT_DIR PACKAGE...
#                      debian-root.sh --key SUITE PACKAGE...   (prints the cache key only)
#
# The root is cached as a tarball under $SEALROOT_BUILD_CACHE (default
# /var/cache/sealroot-build), keyed by its inputs: the suite, the mirror, the sorted package
# list and this script. OUT_DIR gets a stamp file with that key: when it already holds the
# root of the same key nothing is done, and a root of another key is replaced. A directory
# without the stamp is never replaced (the script refuses instead).
#
# Concurrent callers are safe: building the tarball holds a lock in the cache dir (one per
# key) and unpacking holds OUT_DIR.lock; the tarball and OUT_DIR appear by rename, complete,
# so a killed run leaves only temporary directories, removed by the next run under the lock.
#
# The Debian mirror is the one this machine's apt uses (scripts/debian-mirror.sh;
# SEALROOT_DEBIAN_MIRROR overrides it); apt's proxy is handed to debootstrap.
set -euo pipefail

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
CACHE=${SEALROOT_BUILD_CACHE:-/var/cache/sealroot-build}
STAMP=.sealroot-debian-root

log() { printf 'debian-root: %s\n' "$*" >&2; }
fail() {
    log "$*"
    exit 1
}
usage() { fail "usage: debian-root.sh SUITE OUT_DIR PACKAGE... | debian-root.sh --key SUITE PACKAGE..."; }

key_only=""
if [ "${1:-}" = --key ]; then
    key_only=1
    shift
    [ $# -ge 1 ] || usage
    SUITE=$1
    shift
else
    [ $# -ge 2 ] || usage
    SUITE=$1
    OUT=${2%/}
    shift 2
fi
case "$SUITE" in '' | */* | *[[:space:]]*) fail "bad suite name '$SUITE'" ;; esac

# The package list, sorted and comma-separated (debootstrap's --include form).
packages=$(printf '%s\n' "$@" | tr ', ' '\n' | sed '/^$/d' | sort -u | paste -sd, -)
MIRROR=$("$SCRIPTS/debian-mirror.sh")
KEY=$( (printf '%s\n' "$SUITE" "$MIRROR" "$packages"
    sha256sum <"$SCRIPTS/debian-root.sh") | sha256sum | cut -c1-12)
if [ -n "$key_only" ]; then
    echo "$KEY"
    exit 0
fi
TARBALL=$CACHE/root-$SUITE-$KEY.tar

if [ -z "$OUT" ]; then
    fail "refusing OUT_DIR '/'"
fi
if [ "$(cat "$OUT/$STAMP" 2>/dev/null)" = "$KEY" ]; then
    exit 0
fi

# debootstrap does not read apt's configuration: hand it apt's proxy, if any.
if [ -z "${http_proxy:-}" ]; then
    eval "$(apt-config shell http_proxy Acquire::http::Proxy)"
    [ -z "${http_proxy:-}" ] || export http_proxy
fi

tmp_dirs=()
cleanup() {
    local d
    for d in "${tmp_dirs[@]}"; do rm -rf --one-file-system "$d"; done
}
trap cleanup EXIT

# --- OUT_DIR, under its own lock: unpacked next to it, then renamed into place
mkdir -p "$(dirname "$OUT")"
exec 8>"$OUT.lock"
flock 8
if [ "$(cat "$OUT/$STAMP" 2>/dev/null)" = "$KEY" ]; then
    exit 0 # another caller unpacked it while this one waited
fi
if [ -e "$OUT" ] && [ ! -e "$OUT/$STAMP" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo x)" ]; then
    fail "$OUT exists and is not a root made by this script (no $STAMP): refusing to replace it"
fi
rm -rf --one-file-system "$OUT".new.* # left by killed runs

# --- the tarball, under the key's lock in the cache dir
mkdir -p "$CACHE"
exec 9>"$CACHE/root-$SUITE-$KEY.lock"
flock 9
if [ ! -s "$TARBALL" ]; then
    rm -rf --one-file-system "$CACHE/root-$SUITE-$KEY".build.* # left by killed runs
    work=$(mktemp -d "$CACHE/root-$SUITE-$KEY.build.XXXXXX")
    tmp_dirs+=("$work")
    command -v debootstrap >/dev/null || PATH=$PATH:/usr/sbin:/sbin
    command -v debootstrap >/dev/null ||
        fail "step 'debootstrap $SUITE' failed: debootstrap is not installed (scripts/deps.sh test)"
    log "step 'debootstrap $SUITE': minbase + $packages from $MIRROR (once; cached in $TARBALL)"
    start=$SECONDS
    # In a private mount namespace: the /proc and /sys debootstrap mounts in the new root go
    # away with it, also when it is killed, so nothing stays mounted in the cache dir.
    if ! unshare --mount --propagation private \
        debootstrap --variant=minbase --include="$packages" "$SUITE" "$work/root" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 25 "$work/debootstrap.log" | sed 's/^/    /' >&2
        fail "step 'debootstrap $SUITE' failed (mirror $MIRROR; packages: $packages)"
    fi
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages
    tar -C "$work/root" -cf "$work/root.tar" . 2>"$work/tar.log" || {
        tail -n 25 "$work/tar.log" | sed 's/^/    /' >&2
        fail "step 'pack the $SUITE root' failed"
    }
    mv "$work/root.tar" "$TARBALL"
    log "debootstrap $SUITE took $((SECONDS - start)) s"
fi
exec 9>&-

new=$(mktemp -d "$OUT.new.XXXXXX")
tmp_dirs+=("$new")
tar -C "$new" -xf "$TARBALL" 2>"$new.log" || {
    tail -n 25 "$new.log" | sed 's/^/    /' >&2
    rm -f "$new.log"
    fail "step 'unpack the $SUITE root' failed ($TARBALL into $OUT)"
}
rm -f "$new.log"
chmod 755 "$new" # mktemp's 0700 would hide the root from unprivileged users inside it
echo "$KEY" >"$new/$STAMP"
rm -rf --one-file-system "$OUT"
mv "$new" "$OUT"
