#!/bin/bash
# The VM boot test: build the guest (tests/vm/build-guest.sh), then boot it through every
# scenario (tests/vm/e2e.py). Work files go to target/e2e.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$REPO/target/e2e
# Usage: run.sh [FLAVOUR...]  (default: all of initramfs-tools dracut-systemd dracut-nosystemd)
# E2E_KEEP_GUEST=1 (development): reuse a guest already built in target/e2e (its sealroot is
# then the one it was built with); only the flavours' work directories start afresh.
flavours=${*:-initramfs-tools dracut-systemd dracut-nosystemd}
if [ "${E2E_KEEP_GUEST:-}" = 1 ]; then
    for flavour in $flavours; do rm -rf "${WORK:?}/$flavour"; done
else
    rm -rf "$WORK"
fi
mkdir -p "$WORK"
status=0
built=""
for flavour in $flavours; do
    base=${flavour%%-*}
    [ "$base" = initramfs ] && base=initramfs-tools
    case " $built " in
    *" $base "*) ;;
    *)
        if [ "${E2E_KEEP_GUEST:-}" = 1 ] && [ -s "$WORK/guest-$base/disk.img" ]; then
            echo "e2e: reusing the $base guest in $WORK/guest-$base (E2E_KEEP_GUEST=1)" >&2
        else
            echo "e2e: building the $base guest" >&2
            "$REPO/tests/vm/build-guest.sh" "$WORK/guest-$base" "$base"
        fi
        built="$built $base"
        ;;
    esac
    echo "e2e: booting ($flavour)" >&2
    # The host seals offline with the same static binary the guest's `make install` took.
    E2E_SEALROOT=$REPO/target/static/sealroot \
        /usr/bin/python3 "$REPO/tests/vm/e2e.py" "$WORK/guest-$base" "$WORK/$flavour" "$flavour" || status=1
done
exit $status
