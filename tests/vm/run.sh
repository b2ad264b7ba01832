#!/bin/bash
# The VM boot test: build each guest (tests/vm/build-guest.sh, sealroot installed from its
# Debian package), then boot it through its scenarios (tests/vm/e2e.py). Work files go to
# target/e2e.
#
# Usage: run.sh [RELEASE/FLAVOUR...]   RELEASE: bookworm or trixie; FLAVOUR:
# initramfs-tools, dracut-systemd or dracut-nosystemd. Default: the matrix below.
# E2E_DEB: the package to install (default: target/deb/sealroot_*_amd64.deb, `make deb`).
# E2E_JOBS: how many cases boot at once (default 2: one TCG guest per host core).
# E2E_KEEP_GUEST=1 (development): reuse guests already built in target/e2e (their sealroot
# is then the one they were built with); only the cases' work directories start afresh.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$REPO/target/e2e

# Longest first, so that the two lanes end together. Which scenarios each case runs is
# e2e.py's choice: the full list on bookworm's initramfs-tools, fewer elsewhere.
DEFAULT_CASES="bookworm/initramfs-tools trixie/initramfs-tools bookworm/dracut-systemd
trixie/dracut-systemd bookworm/dracut-nosystemd trixie/dracut-nosystemd"
cases=${*:-$DEFAULT_CASES}
jobs=${E2E_JOBS:-2}

deb=${E2E_DEB:-}
if [ -z "$deb" ]; then
    # shellcheck disable=SC2012
    deb=$(ls -t "$REPO"/target/deb/sealroot_*_amd64.deb 2>/dev/null | head -1)
fi
[ -s "$deb" ] || { echo "e2e: no sealroot .deb (run make deb, or set E2E_DEB)" >&2; exit 2; }
for c in $cases; do
    case "$c" in
    bookworm/initramfs-tools | bookworm/dracut-systemd | bookworm/dracut-nosystemd) ;;
    trixie/initramfs-tools | trixie/dracut-systemd | trixie/dracut-nosystemd) ;;
    *) echo "e2e: unknown case $c (RELEASE/FLAVOUR)" >&2; exit 2 ;;
    esac
done

if [ "${E2E_KEEP_GUEST:-}" = 1 ]; then
    for c in $cases; do rm -rf "${WORK:?}/${c%%/*}-${c#*/}"; done
else
    rm -rf "$WORK"
fi
mkdir -p "$WORK"
echo "e2e: installing $(basename "$deb") into the guests; cases: $(tr '\n' ' ' <<<"$cases")" >&2

# The guest a case boots: one per release and initrd generator, built once (under a lock:
# two lanes may want it at the same time).
guest_for() { # case -> guest dir, built if missing
    local release=${1%%/*} flavour=${1#*/} base
    base=${flavour%%-*}
    [ "$base" = initramfs ] && base=initramfs-tools
    local dir=$WORK/guest-$release-$base
    (
        flock 9
        if [ ! -s "$dir/disk.img" ]; then
            echo "e2e: building the $release $base guest" >&2
            "$REPO/tests/vm/build-guest.sh" "$dir" "$base" "$release" "$deb" >&2
        fi
    ) 9>"$dir.lock"
    echo "$dir"
}

run_case() { # case
    local release=${1%%/*} flavour=${1#*/} guest
    guest=$(guest_for "$1") || return 1
    echo "e2e: booting ($release, $flavour)" >&2
    # The host seals offline with the same static binary the package carries.
    E2E_SEALROOT=$REPO/target/static/sealroot \
        /usr/bin/python3 "$REPO/tests/vm/e2e.py" "$guest" "$WORK/$release-$flavour" \
        "$flavour" "$release"
}

# Lanes take the next case from a shared queue (a counter under a lock); each line of a
# case's output is prefixed with its name. A case's failure is kept in its status file.
queue=$WORK/queue
# shellcheck disable=SC2086 # one case per word
printf '%s\n' $cases >"$queue"
echo 0 >"$queue.next"
lane() {
    local i c
    while true; do
        i=$(
            {
                flock 9
                n=$(cat "$queue.next")
                echo $((n + 1)) >"$queue.next"
                echo "$n"
            } 9>"$queue.lock"
        )
        c=$(sed -n "$((i + 1))p" "$queue")
        [ -n "$c" ] || return 0
        local status=$WORK/${c%%/*}-${c#*/}.status
        if run_case "$c" > >(sed -u "s|^|[$c] |") 2>&1; then
            echo pass >"$status"
        else
            echo fail >"$status"
        fi
    done
}

# Stopping the run stops every lane, guest and vTPM with it (one process group).
trap 'trap - TERM INT; kill 0' TERM INT
pids=()
for _ in $(seq "$jobs"); do
    lane &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done

status=0
for c in $cases; do
    result=$(cat "$WORK/${c%%/*}-${c#*/}.status" 2>/dev/null || echo "not run")
    echo "e2e: $c: $result" >&2
    [ "$result" = pass ] || status=1
done
exit $status
