#!/bin/bash
# Builds the C libraries of the static sealroot binary and prints their prefix.
#
# Debian ships no static archives of tpm2-tss, libcryptsetup or libdevmapper, so they are
# built here from Debian's source packages into a cached prefix under target/static-deps.
# Choices (and why):
#   tpm2-tss 4.1.3 (trixie; bookworm's 3.2.1 source is gone from the mirror):
#     --enable-nodl   the TCTI loader links device/swtpm/mssim directly, no dlopen;
#     --with-crypto=mbed  mbedTLS instead of OpenSSL: smaller, and no OpenSSL 3 init cost.
#   cryptsetup 2.6.1 (bookworm), library only: libgcrypt crypto backend. It does XTS keyslot
#     decryption in userspace (nettle's backend needs the kernel's AF_ALG, which an initrd
#     may lack), and has no per-call lookup cost (OpenSSL 3.0's EVP_MD_fetch made the LUKS2
#     anti-forensic merge several ms slower). Bundled Argon2, no external token plugins,
#     no udev, no blkid, no selinux.
#     scripts/patches/cryptsetup-gcrypt-md-map-cache.patch caches digest name lookups
#     (libgcrypt scans all its OIDs per lookup; a keyslot open did 8000).
#   libgcrypt 1.10.1 (bookworm) with AES and the SHA family only: Debian's archive links
#     every cipher in, which alone made the binary 1.3 MB larger.
#     scripts/patches/tpm2-tss-mbed-ecdh-z-fixed-size.patch: the mbedTLS backend wrote the
#     ECDH secret without leading zeros, so 1 salted session in 256 failed (TPM_RC_AUTH_FAIL).
#   lvm2 2.03.16 (bookworm): only libdevmapper, without udev synchronisation.
# Nothing is written outside the repository except by apt-get (build dependencies); the
# source lists apt-get uses for `apt-get source` live under target/ too.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/target/static-deps
JOBS=$(nproc)

TSS=tpm2-tss/trixie
CRYPTSETUP=cryptsetup/bookworm
LVM2=lvm2/bookworm
GCRYPT=libgcrypt20/bookworm

# The upstream tarball of a source package, unpacked into $BUILD/NAME.
unpack() {
    mkdir -p "$BUILD/$1"
    local tarball
    tarball=$(find "$DEPS/dl" -name "$1_*.orig.tar.*" ! -name '*.asc' | head -n 1)
    tar -C "$BUILD/$1" --strip-components=1 -xf "$tarball"
}

log() { printf 'static-deps: %s\n' "$*" >&2; }

"$ROOT/scripts/deps.sh" build static >&2

# The cache key: this script (its flags and versions) and the Debian source versions.
apt_private() {
    apt-get -o Dir::Etc::SourceList="$DEPS/apt/sources.list" \
        -o Dir::Etc::SourceParts=/nonexistent \
        -o Dir::State::Lists="$DEPS/apt/lists" \
        -o Dir::Cache="$DEPS/apt/cache" \
        -o APT::Sandbox::User=root "$@"
}
mkdir -p "$DEPS/apt/lists/partial" "$DEPS/apt/cache/archives/partial" "$DEPS/dl"
cat >"$DEPS/apt/sources.list" <<EOF
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian trixie main
EOF
if [ ! -e "$DEPS/apt/updated" ] || [ -n "$(find "$DEPS/apt/updated" -mmin +1440)" ]; then
    apt_private update -qq >&2
    touch "$DEPS/apt/updated"
fi
versions=$(apt_private source --print-uris "$TSS" "$CRYPTSETUP" "$LVM2" "$GCRYPT" 2>/dev/null | grep -o "[a-z0-9-]*_[^ ']*\.dsc" | sort)
KEY=$( (cat "$0" "$ROOT"/scripts/patches/*.patch; echo "$versions") | sha256sum | cut -c1-16)
PREFIX=$DEPS/$KEY/prefix
BUILD=$DEPS/$KEY/build

if [ -e "$PREFIX/.complete" ]; then
    log "C libraries cached in $PREFIX"
else
    log "building C libraries into $PREFIX (about 5 minutes the first time)"
    # Older caches (other flags or versions) are of no further use.
    find "$DEPS" -mindepth 1 -maxdepth 1 -type d ! -name apt ! -name dl -exec rm -rf {} +
    mkdir -p "$BUILD" "$PREFIX"
    (cd "$DEPS/dl" && apt_private source --download-only -qq "$TSS" "$CRYPTSETUP" "$LVM2" "$GCRYPT" >&2)
    export CFLAGS="-O2 -fPIC -ffunction-sections -fdata-sections"
    export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"

    # --- libdevmapper
    unpack lvm2
    (
        cd "$BUILD/lvm2"
        ./configure --prefix="$PREFIX" --enable-static_link --disable-udev_sync \
            --disable-udev-systemd-background-jobs --disable-selinux --disable-readline \
            --disable-blkid_wiping --disable-dmeventd --disable-cmdlib --disable-nls \
            --disable-dbus-service --disable-notify-dbus --disable-systemd-journal \
            --disable-app-machineid --with-thin=none --with-cache=none --with-vdo=none \
            --with-writecache=none --with-integrity=none >"$BUILD/lvm2.log" 2>&1
        make -j"$JOBS" -C libdm >>"$BUILD/lvm2.log" 2>&1
        install -D -m 644 libdm/ioctl/libdevmapper.a "$PREFIX/lib/libdevmapper.a"
        install -D -m 644 libdm/libdevmapper.h "$PREFIX/include/libdevmapper.h"
        version=$(cut -d' ' -f1 VERSION_DM)
        mkdir -p "$PREFIX/lib/pkgconfig"
        cat >"$PREFIX/lib/pkgconfig/devmapper.pc" <<EOF
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include
Name: devmapper
Description: device-mapper library (static, no udev sync)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -ldevmapper
Libs.private: -lm -lpthread
EOF
    )
    log "libdevmapper done"

    # --- libgcrypt, with only what LUKS2 and its keyslots use (Debian's links whole)
    unpack libgcrypt20
    (
        cd "$BUILD/libgcrypt20"
        ./configure --prefix="$PREFIX" --disable-shared --enable-static --with-pic \
            --enable-ciphers="aes chacha20" --enable-digests="sha1 sha256 sha512 blake2" \
            --enable-kdfs="pkdf2 s2k" --enable-pubkey-ciphers="" \
            --disable-doc --disable-jent-support --disable-large-data-tests \
            >"$BUILD/gcrypt.log" 2>&1
        make -j"$JOBS" >>"$BUILD/gcrypt.log" 2>&1
        make install >>"$BUILD/gcrypt.log" 2>&1
    )
    log "libgcrypt done"

    # --- libcryptsetup
    unpack cryptsetup
    (
        cd "$BUILD/cryptsetup"
        for p in "$ROOT"/scripts/patches/cryptsetup-*.patch; do
            patch -p1 <"$p" >"$BUILD/cryptsetup.log"
        done
        ./autogen.sh >>"$BUILD/cryptsetup.log" 2>&1
        ./configure --prefix="$PREFIX" --disable-shared --enable-static \
            --disable-cryptsetup --disable-veritysetup --disable-integritysetup \
            --disable-ssh-token --disable-external-tokens --disable-udev --disable-selinux \
            --disable-blkid --disable-nls --disable-asciidoc --disable-libargon2 \
            --with-crypto_backend=gcrypt --with-libgcrypt-prefix="$PREFIX" --with-tmpfilesdir="$PREFIX/lib/tmpfiles.d" \
            >>"$BUILD/cryptsetup.log" 2>&1
        make -j"$JOBS" >>"$BUILD/cryptsetup.log" 2>&1
        make install >>"$BUILD/cryptsetup.log" 2>&1
    )
    log "libcryptsetup done"

    # --- tpm2-tss
    unpack tpm2-tss
    (
        cd "$BUILD/tpm2-tss"
        # The source package is a git export: bootstrap wants `git describe` for VERSION.
        version=$(basename "$DEPS"/dl/tpm2-tss_*.orig.tar.* | sed 's/^tpm2-tss_//; s/\.orig.*//')
        sed -i "s/^git describe.*/echo $version > VERSION/" bootstrap
        for p in "$ROOT"/scripts/patches/tpm2-tss-*.patch; do
            patch -p1 <"$p" >"$BUILD/tss.log"
        done
        ./bootstrap >>"$BUILD/tss.log" 2>&1
        ./configure --prefix="$PREFIX" --enable-static --disable-shared --with-pic \
            --enable-nodl --disable-fapi --disable-policy --with-crypto=mbed \
            --disable-tcti-pcap --disable-tcti-libtpms --disable-tcti-cmd \
            --disable-tcti-spi-helper --disable-tcti-spi-ltt2go --disable-tcti-spidev \
            --disable-tcti-spi-ftdi --disable-tcti-i2c-helper --disable-tcti-i2c-ftdi \
            --disable-doxygen-doc --disable-log-file --disable-vendor \
            --with-udevrulesdir="$PREFIX/lib/udev/rules.d" \
            --with-sysusersdir="$PREFIX/lib/sysusers.d" \
            --with-tmpfilesdir="$PREFIX/lib/tmpfiles.d" \
            --with-runstatedir="$PREFIX/run" \
            >>"$BUILD/tss.log" 2>&1
        make -j"$JOBS" >>"$BUILD/tss.log" 2>&1
        # install-data-hook would create the tss user and chown /etc: install by hand.
        for lib in src/tss2-*/.libs/*.a .libs/*.a; do
            [ -e "$lib" ] && install -D -m 644 "$lib" "$PREFIX/lib/$(basename "$lib")"
        done
        mkdir -p "$PREFIX/include/tss2" "$PREFIX/lib/pkgconfig"
        cp include/tss2/*.h "$PREFIX/include/tss2/"
        cp lib/*.pc "$PREFIX/lib/pkgconfig/"
    )
    # 4.1.3 defines Tss2_Tcti_Info in every TCTI archive; linking several collides.
    for a in "$PREFIX"/lib/libtss2-tcti-*.a; do
        objcopy --localize-symbol=Tss2_Tcti_Info "$a"
    done
    log "tpm2-tss done"
    touch "$PREFIX/.complete"
fi

echo "$PREFIX"
