#!/bin/bash
# Builds the VM test guest into OUT: a Debian 12 or 13 root, /etc/crypttab and /etc/fstab
# for an encrypted root, sealroot installed from its Debian package with apt (as a user
# would), initrds made inside that root (as an image builder would: the package's
# update-initramfs trigger, or dracut with and without its systemd module), and the root
# file system encrypted in place as a LUKS2 disk image.
# Usage: build-guest.sh OUT [initramfs-tools|dracut] [bookworm|trixie] DEB
# Outputs: disk.img vmlinuz kver boot/ (the root's /boot) passphrase uuid, and initrd.img (initramfs-tools) or
# initrd-systemd.img + initrd-nosystemd.img (dracut).
set -euo pipefail

OUT=$(realpath -m "$1")
FLAVOUR=${2:-initramfs-tools}
RELEASE=${3:-bookworm}
DEB=$(realpath "${4:?the sealroot .deb (make deb)}")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BASE=$("$REPO/tests/vm/guest-base.sh" "$FLAVOUR" "$RELEASE")
ROOT=$OUT/root

cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"
    done
    return 0
}
trap cleanup EXIT

rm -rf "$OUT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"

UUID=$(cat /proc/sys/kernel/random/uuid)
printf 'e2e passphrase' >"$OUT/passphrase"
install -m 600 "$OUT/passphrase" "$ROOT/etc/e2e-passphrase"
echo "$UUID" >"$OUT/uuid"
cat >"$ROOT/etc/crypttab" <<CRYPTTAB
# <name> <source> <key> <options>: 'sealroot' hands the volume to sealroot's initrd hook.
root UUID=$UUID none luks,discard,initramfs,sealroot
CRYPTTAB
echo "/dev/mapper/root / ext4 defaults 0 1" >"$ROOT/etc/fstab"
echo "e2e-guest" >"$ROOT/etc/hostname"
install -m 755 "$REPO/tests/vm/guest-init" "$ROOT/sbin/e2e-init"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$ROOT/$m"; done
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*)")

# Fails the build unless the initrd carries sealroot and its volume list.
require_sealroot() { # listing
    if ! grep -qx 'usr/sbin/sealroot' <<<"$1" || ! grep -qx 'etc/sealroot/volumes' <<<"$1"; then
        echo "build-guest: the initrd has no sealroot" >&2
        exit 1
    fi
}

# As a user would: apt installs the package file; its maintainer scripts enable the units,
# and its update-initramfs trigger rebuilds the initrd with sealroot in it.
install_deb() {
    cp "$DEB" "$ROOT/tmp/"
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        "/tmp/$(basename "$DEB")" >"$OUT/apt.log" 2>&1 || {
        cat "$OUT/apt.log" >&2
        exit 1
    }
    rm -f "$ROOT/tmp/$(basename "$DEB")"
}

case "$FLAVOUR" in
initramfs-tools)
    # The generic AES module too, for guests whose CPU has no AES-NI.
    printf '%s\n' virtio_pci virtio_blk dm_mod dm_crypt xts ecb aes_generic \
        >>"$ROOT/etc/initramfs-tools/modules"
    echo "COMPRESS=gzip" >"$ROOT/etc/initramfs-tools/conf.d/e2e"
    # The initrd the guest boots is the one the package's trigger made.
    install_deb
    require_sealroot "$(chroot "$ROOT" lsinitramfs "/boot/initrd.img-$KVER")"
    cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
    echo "root=/dev/mapper/root" >"$OUT/cmdline"
    ;;
dracut)
    # Not host-only: a chroot cannot see the target's devices; the root volume comes from
    # rd.luks.uuid= on the command line, as on image-built systems.
    cat >"$ROOT/etc/dracut.conf.d/e2e.conf" <<CONF
hostonly="no"
add_dracutmodules+=" crypt sealroot "
add_drivers+=" virtio_pci virtio_blk dm_mod dm_crypt xts ecb aes_generic "
omit_dracutmodules+=" plymouth lvm mdraid multipath nfs iscsi nbd fcoe fcoe-uefi btrfs resume network network-legacy "
compress="gzip"
CONF
    install_deb
    chroot "$ROOT" dracut --force --kver "$KVER" /boot/initrd-systemd.img >"$OUT/initrd.log" 2>&1 || {
        cat "$OUT/initrd.log" >&2
        exit 1
    }
    chroot "$ROOT" dracut --force --kver "$KVER" \
        --omit "systemd systemd-initrd dracut-systemd systemd-ask-password systemd-networkd" \
        /boot/initrd-nosystemd.img >>"$OUT/initrd.log" 2>&1 || {
        cat "$OUT/initrd.log" >&2
        exit 1
    }
    for v in systemd nosystemd; do
        require_sealroot "$(chroot "$ROOT" lsinitrd "/boot/initrd-$v.img" | awk '{print $NF}')"
        cp "$ROOT/boot/initrd-$v.img" "$OUT/initrd-$v.img"
    done
    echo "root=/dev/mapper/luks-$UUID rd.luks.uuid=$UUID" >"$OUT/cmdline"
    ;;
esac
cleanup
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
# The root's /boot as built (kernel, initrd, config): scenario 15 boots from an unencrypted
# /boot disk the harness makes of it.
cp -a "$ROOT/boot" "$OUT/boot"
echo "$KVER" >"$OUT/kver"

# ext4 with 4 KiB blocks (LUKS2 on a file uses 4 KiB sectors), 32 MiB left free at the end,
# then encrypted in place: no device-mapper needed on this host.
size_mb=$(( $(du -sm "$ROOT" | cut -f1) + 300 ))
truncate -s "${size_mb}M" "$OUT/disk.img"
mkfs.ext4 -q -b 4096 -d "$ROOT" -L e2e-root "$OUT/disk.img" "$((size_mb - 32))M"
cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M --sector-size 4096 \
    --uuid "$UUID" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$OUT/passphrase" --batch-mode "$OUT/disk.img" >&2
rm -rf "$ROOT"
echo "build-guest: $OUT ready (kernel $KVER)" >&2
