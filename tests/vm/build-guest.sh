#!/bin/bash
# Builds the VM test guest into OUT (argument): a Debian 12 root with sealroot installed by
# `make install DESTDIR=`, /etc/crypttab and /etc/fstab for an encrypted root, an initrd made
# by update-initramfs inside that root (as an image builder would), and the root file system
# encrypted in place as a LUKS2 disk image. Outputs: disk.img vmlinuz initrd.img passphrase.
set -euo pipefail

OUT=$(realpath "$1")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BASE=$("$REPO/tests/vm/guest-base.sh")
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

make -C "$REPO" --no-print-directory install DESTDIR="$ROOT" PREFIX=/usr >&2

UUID=$(cat /proc/sys/kernel/random/uuid)
printf 'e2e passphrase' >"$OUT/passphrase"
install -m 600 "$OUT/passphrase" "$ROOT/etc/e2e-passphrase"
echo "$UUID" >"$OUT/uuid"
cat >"$ROOT/etc/crypttab" <<CRYPTTAB
# <name> <source> <key> <options>: 'sealroot' hands the volume to sealroot's initrd hook.
root UUID=$UUID none luks,discard,initramfs,sealroot
CRYPTTAB
echo "/dev/mapper/root / ext4 defaults 0 1" >"$ROOT/etc/fstab"
# TCG's CPU has no AES-NI: the generic AES module must be in the initrd.
printf '%s\n' virtio_pci virtio_blk dm_mod dm_crypt xts ecb aes_generic >>"$ROOT/etc/initramfs-tools/modules"
echo "COMPRESS=gzip" >"$ROOT/etc/initramfs-tools/conf.d/e2e"
echo "e2e-guest" >"$ROOT/etc/hostname"
install -m 755 "$REPO/tests/vm/guest-init" "$ROOT/sbin/e2e-init"

for m in proc sys dev dev/pts; do mount --bind "/$m" "$ROOT/$m"; done
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*)")
chroot "$ROOT" update-initramfs -c -k "$KVER" >"$OUT/update-initramfs.log" 2>&1 || {
    cat "$OUT/update-initramfs.log" >&2
    exit 1
}
contents=$(chroot "$ROOT" lsinitramfs "/boot/initrd.img-$KVER")
if ! grep -qx 'usr/sbin/sealroot' <<<"$contents" || ! grep -qx 'etc/sealroot/volumes' <<<"$contents"; then
    echo "build-guest: the initrd has no sealroot" >&2
    exit 1
fi
cleanup
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"

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
