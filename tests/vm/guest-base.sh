#!/bin/bash
# A Debian guest root for the VM boot tests, made by debootstrap and cached outside the
# repository (keyed by its inputs), so later runs do not download again.
# Usage: guest-base.sh [initramfs-tools|dracut] [bookworm|trixie]. Prints the path of the
# cached tarball.
#
# The dracut flavour is what an image builder does on Debian: dracut replaces
# initramfs-tools as the package providing linux-initramfs-tool, installed with apt in the
# target root (debootstrap alone cannot pick dracut over initramfs-tools).
set -euo pipefail

FLAVOUR=${1:-initramfs-tools}
SUITE=${2:-bookworm}
CACHE=${SEALROOT_E2E_CACHE:-/var/cache/sealroot-e2e}
# The mirror this machine's apt uses (a local mirror works too).
MIRROR=$("$(dirname "$0")/../../scripts/debian-mirror.sh")
case "$FLAVOUR" in
initramfs-tools)
    INCLUDE=linux-image-cloud-amd64,initramfs-tools,cryptsetup-initramfs,udev,kmod,e2fsprogs,procps
    LATER=""
    ;;
dracut)
    INCLUDE=udev,kmod,e2fsprogs,procps,cryptsetup-bin,systemd
    LATER="dracut linux-image-cloud-amd64 cryptsetup"
    # trixie's systemd 257 ships systemd-cryptsetup (the initrd's unlock unit for the
    # comparison and the stock path) as its own package.
    [ "$SUITE" = bookworm ] || LATER="$LATER systemd-cryptsetup"
    ;;
*) echo "guest-base: unknown flavour $FLAVOUR" >&2; exit 2 ;;
esac
case "$SUITE" in
bookworm | trixie) ;;
*) echo "guest-base: unknown release $SUITE (bookworm or trixie)" >&2; exit 2 ;;
esac
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$INCLUDE" "$LATER" "v1" | sha256sum | cut -c1-12)
TARBALL=$CACHE/guest-$SUITE-$FLAVOUR-$KEY.tar

if [ ! -s "$TARBALL" ]; then
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "guest-base: debootstrap $SUITE (about 2 minutes, once)" >&2
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    if [ -n "$LATER" ]; then
        for m in proc sys dev; do mount --bind "/$m" "$work/root/$m"; done
        trap 'for m in dev sys proc; do umount -l "$work/root/$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
        # shellcheck disable=SC2086
        chroot "$work/root" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends $LATER >"$work/apt.log" 2>&1 ||
            { tail -20 "$work/apt.log" >&2; exit 1; }
        for m in dev sys proc; do umount -l "$work/root/$m"; done
    fi
    rm -rf "$work/root/var/cache/apt/archives/"*.deb
    tar -C "$work/root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
echo "$TARBALL"
