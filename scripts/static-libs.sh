#!/bin/bash
# Runs inside the clean Debian 12 build root made by scripts/static-deps.sh (never on the
# host): builds the static C libraries of sealroot into PREFIX.
# Usage: static-libs.sh PREFIX JOBS   (sources in /build/dl, patches in /build/patches)
#
# Every command runs as a named step; a failing step prints its name and the end of its
# log. A build dependency missing from the root's package list therefore fails here, on
# every machine, under the name of the step that needed it.
#
# Choices (and why):
#   tpm2-tss 4.1.3 (trixie; bookworm's 3.2.1 source is gone from the mirror):
#     --enable-nodl   the TCTI loader links device/swtpm/mssim directly, no dlopen;
#     --with-crypto=mbed  mbedTLS instead of OpenSSL: smaller, and no OpenSSL 3 init cost.
#     --with-maxloglevel=warning  debug and trace logging are compiled out: at those levels
#       ESAPI prints the Unseal response and the session key that decrypts it.
#     patches/tpm2-tss-mbed-ecdh-z-fixed-size.patch: the mbedTLS backend wrote the ECDH
#     secret without leading zeros, so 1 salted session in 256 failed (TPM_RC_AUTH_FAIL).
#   cryptsetup 2.6.1 (bookworm), library only: libgcrypt crypto backend. It does XTS keyslot
#     decryption in userspace (nettle's backend needs the kernel's AF_ALG, which an initrd
#     may lack), and has no per-call lookup cost (OpenSSL 3.0's EVP_MD_fetch made the LUKS2
#     anti-forensic merge several ms slower). Bundled Argon2, no external token plugins,
#     no udev, no blkid, no selinux.
#     patches/cryptsetup-gcrypt-md-map-cache.patch caches digest name lookups (libgcrypt
#     scans all its OIDs per lookup; a keyslot open did 8000).
#   libgcrypt 1.10.1 (bookworm) with AES and the SHA family only: Debian's archive links
#     every cipher in, which alone made the binary 1.3 MB larger.
#   lvm2 2.03.16 (bookworm): only libdevmapper, without udev synchronisation.
#   json-c, libuuid, mbedTLS, libgpg-error, libblkid: Debian's own static archives, copied
#     from the root into PREFIX, so the link on the host needs none of their -dev packages.
#     (libblkid is sealroot's own: `unlock --wait` probes disks as udev does; cryptsetup is
#     still built without it.)
set -euo pipefail

PREFIX=$1
JOBS=$2
BUILD=/build/src
LOGS=/build/logs
mkdir -p "$BUILD" "$LOGS" "$PREFIX/lib/pkgconfig" "$PREFIX/include"

log() { printf 'static-deps: %s\n' "$*" >&2; }

# step NAME COMMAND...: runs COMMAND with its output in a log named after NAME.
step() {
    local name=$1 logfile
    shift
    logfile=$LOGS/$(printf '%s' "$name" | tr -c 'a-zA-Z0-9.-' '_').log
    if ! "$@" >"$logfile" 2>&1; then
        log "step '$name' failed; the last lines of its log:"
        tail -n 25 "$logfile" | sed 's/^/    /' >&2
        log "step '$name' failed. The build root has only the packages listed in" \
            "BUILD_PACKAGES (scripts/static-deps.sh); a missing build dependency belongs there."
        exit 1
    fi
}

# The upstream tarball of a source package, unpacked into $BUILD/NAME.
unpack() {
    local tarball
    tarball=$(find /build/dl -name "$1_*.orig.tar.*" ! -name '*.asc' | head -n 1)
    [ -n "$tarball" ] || { log "no source tarball for $1 in /build/dl"; exit 1; }
    mkdir -p "$BUILD/$1"
    step "$1: unpack" tar -C "$BUILD/$1" --strip-components=1 -xf "$tarball"
}

apply_patches() {
    local p
    for p in /build/patches/"$1"-*.patch; do
        step "$1: patch $(basename "$p")" patch -d "$BUILD/$1" -p1 -i "$p"
    done
}

# Copies a Debian -dev package's static archives, headers and .pc files into PREFIX.
import_dev_package() {
    local f rel
    dpkg-query -W "$1" >/dev/null 2>&1 || { log "step 'import $1' failed: $1 is not installed" \
        "in the build root; add it to BUILD_PACKAGES (scripts/static-deps.sh)"; exit 1; }
    dpkg -L "$1" | while read -r f; do
        [ -f "$f" ] || continue
        case "$f" in
        /usr/include/*)
            rel=${f#/usr/include/}
            install -D -m 644 "$f" "$PREFIX/include/$rel"
            ;;
        /usr/lib/*/pkgconfig/*.pc)
            # Debian's .pc files name /usr in several spellings: replace all four paths.
            {
                printf '%s\n' "prefix=$PREFIX" 'exec_prefix=${prefix}' 'libdir=${prefix}/lib' \
                    'includedir=${prefix}/include'
                grep -v -E '^(prefix|exec_prefix|libdir|includedir)=' "$f"
            } >"$PREFIX/lib/pkgconfig/$(basename "$f")"
            ;;
        /usr/lib/*.a) install -m 644 "$f" "$PREFIX/lib/" ;;
        esac
    done
}

export CFLAGS="-O2 -fPIC -ffunction-sections -fdata-sections"
export CPPFLAGS="-I$PREFIX/include"
export LDFLAGS="-L$PREFIX/lib"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
# libgcrypt.m4 (AM_PATH_LIBGCRYPT) from the libgcrypt built here, for cryptsetup's autogen.
export ACLOCAL_PATH="$PREFIX/share/aclocal"

# --- Debian's static archives
for pkg in libjson-c-dev uuid-dev libmbedtls-dev libgpg-error-dev libblkid-dev; do
    import_dev_package "$pkg"
done
log "json-c, libuuid, mbedTLS, libgpg-error, libblkid copied"

# --- libdevmapper
unpack lvm2
cd "$BUILD/lvm2"
step "lvm2: configure" ./configure --prefix="$PREFIX" --enable-static_link --disable-udev_sync \
    --disable-udev-systemd-background-jobs --disable-selinux --disable-readline \
    --disable-blkid_wiping --disable-dmeventd --disable-cmdlib --disable-nls \
    --disable-dbus-service --disable-notify-dbus --disable-systemd-journal \
    --disable-app-machineid --with-thin=none --with-cache=none --with-vdo=none \
    --with-writecache=none --with-integrity=none
step "lvm2: make libdm" make -j"$JOBS" -C libdm
install -D -m 644 libdm/ioctl/libdevmapper.a "$PREFIX/lib/libdevmapper.a"
install -D -m 644 libdm/libdevmapper.h "$PREFIX/include/libdevmapper.h"
cat >"$PREFIX/lib/pkgconfig/devmapper.pc" <<EOF
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include
Name: devmapper
Description: device-mapper library (static, no udev sync)
Version: $(cut -d' ' -f1 VERSION_DM)
Cflags: -I\${includedir}
Libs: -L\${libdir} -ldevmapper
Libs.private: -lm -lpthread
EOF
log "libdevmapper done"

# --- libgcrypt, with only what LUKS2 and its keyslots use (Debian's links whole)
unpack libgcrypt20
cd "$BUILD/libgcrypt20"
step "libgcrypt: configure" ./configure --prefix="$PREFIX" --disable-shared --enable-static \
    --with-pic \
    --enable-ciphers="aes chacha20" --enable-digests="sha1 sha256 sha512 blake2" \
    --enable-kdfs="pkdf2 s2k" --enable-pubkey-ciphers="" \
    --disable-doc --disable-jent-support --disable-large-data-tests
step "libgcrypt: make" make -j"$JOBS"
step "libgcrypt: make install" make install
log "libgcrypt done"

# --- libcryptsetup
unpack cryptsetup
apply_patches cryptsetup
cd "$BUILD/cryptsetup"
step "cryptsetup: autogen" ./autogen.sh
step "cryptsetup: configure" ./configure --prefix="$PREFIX" --disable-shared --enable-static \
    --disable-cryptsetup --disable-veritysetup --disable-integritysetup \
    --disable-ssh-token --disable-external-tokens --disable-udev --disable-selinux \
    --disable-blkid --disable-nls --disable-asciidoc --disable-libargon2 \
    --with-crypto_backend=gcrypt --with-libgcrypt-prefix="$PREFIX" \
    --with-tmpfilesdir="$PREFIX/lib/tmpfiles.d"
step "cryptsetup: make" make -j"$JOBS"
step "cryptsetup: make install" make install
log "libcryptsetup done"

# --- tpm2-tss
unpack tpm2-tss
apply_patches tpm2-tss
cd "$BUILD/tpm2-tss"
# The source package is a git export: bootstrap wants `git describe` for VERSION.
version=$(basename /build/dl/tpm2-tss_*.orig.tar.* | sed 's/^tpm2-tss_//; s/\.orig.*//')
sed -i "s/^git describe.*/echo $version > VERSION/" bootstrap
step "tpm2-tss: bootstrap" ./bootstrap
step "tpm2-tss: configure" ./configure --prefix="$PREFIX" --enable-static --disable-shared \
    --with-pic --enable-nodl --disable-fapi --disable-policy --with-crypto=mbed \
    --disable-tcti-pcap --disable-tcti-libtpms --disable-tcti-cmd \
    --disable-tcti-spi-helper --disable-tcti-spi-ltt2go --disable-tcti-spidev \
    --disable-tcti-spi-ftdi --disable-tcti-i2c-helper --disable-tcti-i2c-ftdi \
    --disable-doxygen-doc --disable-log-file --disable-vendor --with-maxloglevel=warning \
    --with-udevrulesdir="$PREFIX/lib/udev/rules.d" \
    --with-sysusersdir="$PREFIX/lib/sysusers.d" \
    --with-tmpfilesdir="$PREFIX/lib/tmpfiles.d" \
    --with-runstatedir="$PREFIX/run"
step "tpm2-tss: make" make -j"$JOBS"
# install-data-hook would create the tss user and chown /etc: install by hand.
for lib in src/tss2-*/.libs/*.a .libs/*.a; do
    [ -e "$lib" ] && install -D -m 644 "$lib" "$PREFIX/lib/$(basename "$lib")"
done
mkdir -p "$PREFIX/include/tss2"
cp include/tss2/*.h "$PREFIX/include/tss2/"
cp lib/*.pc "$PREFIX/lib/pkgconfig/"
# 4.1.3 defines Tss2_Tcti_Info in every TCTI archive; linking several collides.
for a in "$PREFIX"/lib/libtss2-tcti-*.a; do
    step "tpm2-tss: localize Tss2_Tcti_Info in $(basename "$a")" \
        objcopy --localize-symbol=Tss2_Tcti_Info "$a"
done
log "tpm2-tss done"
