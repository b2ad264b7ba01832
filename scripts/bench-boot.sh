#!/bin/bash
# make bench-boot: builds the benchmark's guest (tests/vm/bench-guest.sh), then boots it
# BENCH_BOOTS times per variant (tests/vm/bench_boot.py). Work files go to target/bench-boot.
# BENCH_KEEP_GUEST=1 (development): reuse the guest already built there. E2E_DEB: the package
# the guest installs (default: target/deb/sealroot_*_amd64.deb, `make deb`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$REPO/target/bench-boot
if [ "${BENCH_KEEP_GUEST:-}" = 1 ] && [ -s "$WORK/guest/disk.img" ]; then
    echo "bench-boot: reusing the guest in $WORK/guest (BENCH_KEEP_GUEST=1)" >&2
else
    rm -rf "$WORK"
    mkdir -p "$WORK"
    echo "bench-boot: building the guest" >&2
    deb=${E2E_DEB:-}
    [ -n "$deb" ] || deb=$(ls -t "$REPO"/target/deb/sealroot_*_amd64.deb 2>/dev/null | head -n 1)
    [ -s "$deb" ] || { echo "bench-boot: no sealroot .deb (run make deb, or set E2E_DEB)" >&2; exit 2; }
    "$REPO/tests/vm/bench-guest.sh" "$WORK/guest" "$deb"
fi
rm -rf "$WORK/run"
exec /usr/bin/python3 "$REPO/tests/vm/bench_boot.py" "$WORK/guest" "$WORK/run"
