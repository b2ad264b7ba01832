#!/bin/bash
# The boot benchmark's guest (make bench-boot): the VM suite's dracut guest (build-guest.sh),
# built from its Debian 12 root plus what the comparison needs: libtss2 (with tpm2-tools),
# which libcryptsetup's systemd-tpm2 token plugin loads, both in the initrd, and the
# benchmark's init (tests/vm/bench-init).
# One initrd serves both variants: the harness masks sealroot.service for systemd-cryptsetup.
# Usage: bench-guest.sh OUT DEB (the sealroot package, `make deb`). The extended root is
# cached next to the suite's (apt runs once).
set -euo pipefail

OUT=$(realpath -m "$1")
DEB=$(realpath "${2:?the sealroot .deb (make deb)}")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SEALROOT_E2E_CACHE:-/var/cache/sealroot-e2e}
BASE=$("$REPO/tests/vm/guest-base.sh" dracut bookworm)
# build-guest.sh takes its root from guest-base.sh, which looks in SEALROOT_E2E_CACHE under
# the same name: the extended root goes there, in a cache of its own.
BENCH_CACHE=$CACHE/bench
mkdir -p "$BENCH_CACHE"
TSS=$BENCH_CACHE/tss-$(basename "$BASE")
if [ ! -s "$TSS" ]; then
    work=$(mktemp -d "$BENCH_CACHE/build.XXXXXX")
    trap 'for m in dev sys proc; do umount -l "$work/root/$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
    mkdir "$work/root"
    tar -C "$work/root" -xf "$BASE"
    for m in proc sys dev; do mount --bind "/$m" "$work/root/$m"; done
    echo "bench-guest: installing tpm2-tools in the guest root (once)" >&2
    chroot "$work/root" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends tpm2-tools libtss2-tcti-device0 \
        >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; exit 1; }
    for m in dev sys proc; do umount -l "$work/root/$m"; done
    rm -rf "$work/root/var/cache/apt/archives/"*.deb
    tar -C "$work/root" -cf "$TSS.tmp" .
    mv "$TSS.tmp" "$TSS"
    rm -rf "$work"
    trap - EXIT
fi
# The benchmark's own files on top (cheap: no apt), under the name guest-base.sh prints.
root_tar=$BENCH_CACHE/$(basename "$BASE")
rm -f "$root_tar"
extra=$(mktemp -d /tmp/bench-guest.XXXXXX)
trap 'rm -rf "$extra"' EXIT
install -D -m 755 "$REPO/tests/vm/bench-init" "$extra/sbin/bench-init"
mkdir -p "$extra/etc/dracut.conf.d"
# The token plugin and the libraries it loads (dlopen: dracut cannot see them, nor the
# dependencies of listed ones), by hand: dracut's tpm2-tss module needs its systemd module,
# which the suite's second initrd (without systemd) omits.
lib=/usr/lib/x86_64-linux-gnu
echo "install_items+=\" $lib/cryptsetup/libcryptsetup-token-systemd-tpm2.so $lib/libtss2-esys.so.0 $lib/libtss2-sys.so.1 $lib/libtss2-rc.so.0 $lib/libtss2-mu.so.0 $lib/libtss2-tcti-device.so.0 \"" \
    >"$extra/etc/dracut.conf.d/bench.conf"
cp "$TSS" "$root_tar.tmp"
tar -C "$extra" -rf "$root_tar.tmp" ./sbin/bench-init ./etc/dracut.conf.d/bench.conf
mv "$root_tar.tmp" "$root_tar"
SEALROOT_E2E_CACHE=$BENCH_CACHE "$REPO/tests/vm/build-guest.sh" "$OUT" dracut bookworm "$DEB"
# A plugin or library missing from the initrd shows at the first systemd-cryptsetup boot: it
# prompts for the passphrase, which fails the benchmark.
