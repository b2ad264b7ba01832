#!/bin/bash
# Builds the C libraries of the static sealroot binary and prints their prefix.
#
# Debian ships no static archives of tpm2-tss, libcryptsetup or libdevmapper, so they are
# built from Debian's source packages (scripts/static-libs.sh has the versions and flags)
# into a cached prefix under target/static-deps.
#
# The build is hermetic: it runs in a minimal Debian 12 root made by debootstrap, into which
# only BUILD_PACKAGES are installed, never on the host. What the host happens to have cannot
# leak in, so a build dependency missing from the list fails on every machine, including the
# developer's. The root is cached as a tarball keyed by its inputs (suite, mirror, package
# list; scripts/debian-root.sh); each library build starts from a fresh copy of it.
# The Rust link stays on the host (scripts/build-static.sh), against this prefix alone.
#
# The Debian mirror (for debootstrap and the deb-src lists) is the one this machine's apt
# uses (scripts/debian-mirror.sh; SEALROOT_DEBIAN_MIRROR overrides it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/target/static-deps
SUITE=bookworm

# Everything the library build uses beyond debootstrap's minbase. Nothing else is there.
BUILD_PACKAGES="build-essential autoconf automake libtool libltdl-dev autoconf-archive
autopoint gettext pkg-config patch xz-utils bzip2 libmbedtls-dev libgpg-error-dev
libjson-c-dev uuid-dev libpopt-dev libblkid-dev"

# Debian source packages: tpm2-tss from trixie (bookworm's source is gone from the mirror).
SOURCES="tpm2-tss/trixie cryptsetup/bookworm lvm2/bookworm libgcrypt20/bookworm"

log() { printf 'static-deps: %s\n' "$*" >&2; }
fail() {
    log "$*"
    exit 1
}

"$ROOT/scripts/deps.sh" build static >&2
MIRROR=$("$ROOT/scripts/debian-mirror.sh")

# --- the build root: debootstrap minbase + BUILD_PACKAGES, cached as a tarball by
# scripts/debian-root.sh (unpacked below, only when the libraries are built)
# shellcheck disable=SC2086
ROOT_KEY=$("$ROOT/scripts/debian-root.sh" --key "$SUITE" $BUILD_PACKAGES)

# --- the sources, through a private apt configuration that lists deb-src entries only
apt_private() {
    apt-get -o Dir::Etc::SourceList="$DEPS/apt/sources.list" \
        -o Dir::Etc::SourceParts=/nonexistent \
        -o Dir::State::Lists="$DEPS/apt/lists" \
        -o Dir::Cache="$DEPS/apt/cache" \
        -o APT::Sandbox::User=root "$@"
}
mkdir -p "$DEPS/apt/lists/partial" "$DEPS/apt/cache/archives/partial" "$DEPS/dl"
sources_list="deb-src $MIRROR bookworm main
deb-src $MIRROR trixie main"
if [ "$(cat "$DEPS/apt/sources.list" 2>/dev/null)" != "$sources_list" ]; then
    echo "$sources_list" >"$DEPS/apt/sources.list"
    rm -f "$DEPS/apt/updated"
fi
if [ ! -e "$DEPS/apt/updated" ] || [ -n "$(find "$DEPS/apt/updated" -mmin +1440)" ]; then
    apt_private update -qq >&2 ||
        fail "step 'apt-get update (deb-src)' failed: does $MIRROR carry bookworm and trixie?"
    touch "$DEPS/apt/updated"
fi
# shellcheck disable=SC2086
versions=$(apt_private source --print-uris $SOURCES 2>/dev/null | awk '$2 ~ /\.dsc$/ { print $2 }' | sort)
[ "$(echo "$versions" | grep -c .)" -eq 4 ] ||
    fail "step 'find the source packages' failed: $MIRROR lists only: ${versions:-none}"

# The cache key: both scripts (flags, versions, package list), the patches, the Debian
# source versions and the build root.
KEY=$( (cat "$0" "$ROOT/scripts/static-libs.sh" "$ROOT"/scripts/patches/*.patch
    echo "$versions $ROOT_KEY") | sha256sum | cut -c1-16)
PREFIX=$DEPS/$KEY/prefix

if [ -e "$PREFIX/.complete" ]; then
    log "C libraries cached in $PREFIX"
    echo "$PREFIX"
    exit 0
fi

log "building the C libraries in a clean $SUITE root into $PREFIX (about 5 minutes)"
# Older caches (other flags or versions) are of no further use.
find "$DEPS" -mindepth 1 -maxdepth 1 -type d ! -name apt ! -name dl -exec rm -rf {} +
# shellcheck disable=SC2086
(cd "$DEPS/dl" && apt_private source --download-only -qq $SOURCES >&2) ||
    fail "step 'download the sources' failed (mirror $MIRROR)"

chroot_dir=$DEPS/$KEY/root
trap 'rm -rf "$chroot_dir"' EXIT
# shellcheck disable=SC2086
"$ROOT/scripts/debian-root.sh" "$SUITE" "$chroot_dir" $BUILD_PACKAGES ||
    fail "step 'the build root' failed (packages: BUILD_PACKAGES in $0)"
mkdir -p "$chroot_dir/build/dl" "$chroot_dir/build/patches"
cp "$DEPS"/dl/*.orig.tar.* "$chroot_dir/build/dl/"
cp "$ROOT"/scripts/patches/*.patch "$chroot_dir/build/patches/"
cp "$ROOT/scripts/static-libs.sh" "$chroot_dir/build/"
# The prefix has the same absolute path inside the root as outside, so the paths written
# into its .pc files hold on the host once it is moved out.
status=0
# /proc (for /dev/fd) is mounted in a private mount namespace: it goes away with the build,
# also when the build is killed.
unshare --mount --propagation private /bin/sh -c 'mount -t proc proc "$1/proc" && shift && exec "$@"' \
    sh "$chroot_dir" chroot "$chroot_dir" /usr/bin/env -i HOME=/root LC_ALL=C \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/bash /build/static-libs.sh "$PREFIX" "$(nproc)" ||
    status=$?
rm -rf "$DEPS/$KEY/logs"
cp -r "$chroot_dir/build/logs" "$DEPS/$KEY/logs" 2>/dev/null || true
[ "$status" -eq 0 ] || fail "building the C libraries failed (logs: $DEPS/$KEY/logs)"
mv "$chroot_dir$PREFIX" "$PREFIX"
# Whose code the binary carries, for the package's Built-Using field: the four sources
# built here, and the static archives taken from the root's -dev packages.
{
    for dsc in $versions; do
        basename "$dsc" .dsc | sed 's/_/ (= /; s/$/)/'
    done
    chroot "$chroot_dir" dpkg-query -W -f '${source:Package} (= ${source:Version})\n' \
        libjson-c-dev uuid-dev libmbedtls-dev libgpg-error-dev libblkid-dev
} | sort -u | paste -sd, | sed 's/,/, /g' >"$PREFIX/built-using"
touch "$PREFIX/.complete"
echo "$PREFIX"
