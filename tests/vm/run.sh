#!/bin/bash
# The VM boot test: build the guest (tests/vm/build-guest.sh), then boot it through every
# scenario (tests/vm/e2e.py). Work files go to target/e2e.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$REPO/target/e2e
rm -rf "$WORK"
mkdir -p "$WORK"
echo "e2e: building the guest" >&2
"$REPO/tests/vm/build-guest.sh" "$WORK/guest"
echo "e2e: booting" >&2
/usr/bin/python3 "$REPO/tests/vm/e2e.py" "$WORK/guest" "$WORK/boots"
