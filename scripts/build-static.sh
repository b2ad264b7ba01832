#!/bin/bash
# Builds sealroot as one fully static x86_64 binary: target/static/sealroot.
# The C libraries come from scripts/static-deps.sh (built once in a clean Debian 12 root,
# then cached); the link runs here on the host against their prefix.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/static
log() { printf 'build-static: %s\n' "$*" >&2; }

PREFIX=$("$ROOT/scripts/static-deps.sh")

# --- sealroot itself
log "linking sealroot statically"
# The prefix alone: no .pc file (hence no -L path) of the host's -dev packages.
export PKG_CONFIG_LIBDIR="$PREFIX/lib/pkgconfig"
export PKG_CONFIG_PATH=""
export PKG_CONFIG_ALL_STATIC=1
export SEALROOT_STATIC_PREFIX="$PREFIX"
# --target keeps these flags away from build scripts and proc macros. Non-PIE: `file`
# then says "statically linked"; heap, stack and mmap stay randomized.
# GNU ld, not rust-lld: see build.rs.
export RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C linker-features=-lld"
cargo build --profile static --target x86_64-unknown-linux-gnu --features static --bin sealroot \
    --target-dir "$ROOT/target/static-build"
mkdir -p "$OUT"
install -m 755 "$ROOT/target/static-build/x86_64-unknown-linux-gnu/static/sealroot" "$OUT/sealroot"
strip --remove-section=.comment "$OUT/sealroot"
log "$(file -b "$OUT/sealroot" | cut -d, -f1-2), $(stat -c %s "$OUT/sealroot") bytes: $OUT/sealroot"
