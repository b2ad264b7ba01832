#!/bin/bash
# A Debian 12 guest root for the VM boot tests, made by debootstrap and cached outside the
# repository (keyed by its inputs), so later runs do not download again.
# Prints the path of the cached tarball.
set -euo pipefail

CACHE=${SEALROOT_E2E_CACHE:-/var/cache/sealroot-e2e}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
INCLUDE=linux-image-cloud-amd64,initramfs-tools,cryptsetup-initramfs,udev,kmod,e2fsprogs,procps
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$INCLUDE" "v1" | sha256sum | cut -c1-12)
TARBALL=$CACHE/guest-$SUITE-$KEY.tar

if [ ! -s "$TARBALL" ]; then
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "guest-base: debootstrap $SUITE (about 2 minutes, once)" >&2
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work/root/var/cache/apt/archives/"*.deb
    tar -C "$work/root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
echo "$TARBALL"
