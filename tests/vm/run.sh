#!/bin/bash
# The VM boot test: build the guest (tests/vm/build-guest.sh), then boot it through every
# scenario (tests/vm/e2e.py). Work files go to target/e2e.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$REPO/target/e2e
rm -rf "$WORK"
mkdir -p "$WORK"
# Usage: run.sh [FLAVOUR...]  (default: all of initramfs-tools dracut-systemd dracut-nosystemd)
flavours=${*:-initramfs-tools dracut-systemd dracut-nosystemd}
status=0
built=""
for flavour in $flavours; do
    base=${flavour%%-*}
    [ "$base" = initramfs ] && base=initramfs-tools
    case " $built " in
    *" $base "*) ;;
    *)
        echo "e2e: building the $base guest" >&2
        "$REPO/tests/vm/build-guest.sh" "$WORK/guest-$base" "$base"
        built="$built $base"
        ;;
    esac
    echo "e2e: booting ($flavour)" >&2
    # The host seals offline with the same static binary the guest's `make install` took.
    E2E_SEALROOT=$REPO/target/static/sealroot \
        /usr/bin/python3 "$REPO/tests/vm/e2e.py" "$WORK/guest-$base" "$WORK/$flavour" "$flavour" || status=1
done
exit $status
