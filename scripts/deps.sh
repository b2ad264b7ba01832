#!/bin/sh
# Installs the Debian 12 packages a target needs, only those missing. Usage: deps.sh GROUP...
# Groups: build (compile sealroot), test (run the test suite), e2e, deb, fuzz (libFuzzer's
# C++), demo, bench.
set -eu

pkgs=""
for group in "$@"; do
    case "$group" in
        build) pkgs="$pkgs build-essential pkg-config libclang-dev libtss2-dev libcryptsetup-dev" ;;
        static) pkgs="$pkgs debootstrap file binutils" ;;
        test)  pkgs="$pkgs swtpm swtpm-tools cryptsetup-bin e2fsprogs tpm2-tools clevis clevis-luks clevis-tpm2 systemd openssl busybox-static strace age debootstrap pesign systemd-boot-efi" ;;
        e2e)   pkgs="$pkgs swtpm swtpm-tools cryptsetup-bin debootstrap qemu-system-x86 ovmf python3-pexpect python3-cryptography age e2fsprogs" ;;
        deb)   pkgs="$pkgs debhelper dpkg-dev lintian" ;;
        fuzz)  pkgs="$pkgs g++" ;;
        demo)  pkgs="$pkgs swtpm swtpm-tools cryptsetup-bin tpm2-tools" ;;
        bench) pkgs="$pkgs swtpm swtpm-tools cryptsetup-bin tpm2-tools clevis clevis-luks clevis-tpm2 systemd bc" ;;
        *) echo "deps.sh: unknown group $group" >&2; exit 2 ;;
    esac
done

missing=""
for p in $pkgs; do
    # dpkg-query answers for installed packages only; anything else is missing.
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed"; then
        case " $missing " in *" $p "*) ;; *) missing="$missing $p" ;; esac
    fi
done

if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: run as root (apt-get) or install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
