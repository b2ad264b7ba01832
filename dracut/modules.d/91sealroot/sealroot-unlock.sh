#!/bin/sh
# Unlocks the sealroot volumes with the TPM (systemd unit or initqueue job). Volumes: the
# list built from /etc/crypttab, and rd.luks.uuid= / rd.luks.name= on the kernel command
# line, whose names win (they are the names the rest of this initrd waits for). A volume
# sealroot cannot open stays closed and the stock prompt follows. The fence PCR is extended
# on every path out of this script (share/boot.sh). Always exits 0.
# `sealroot-unlock --fence-only`: just that (the systemd unit's ExecStopPost, for when this
# script was killed or timed out).

# Without the library (a broken initrd) still fence, with the defaults.
if [ ! -r /usr/share/sealroot/boot.sh ]; then
    command env -i /usr/sbin/sealroot --kmsg fence
    exit 0
fi
. /usr/share/sealroot/boot.sh
if [ "$1" = --fence-only ]; then
    # After a normal run the fence is extended already.
    [ "${SERVICE_RESULT:-}" = success ] && SR_FENCED=1
    exit 0
fi

VOLUMES=/etc/sealroot/volumes
TIMEOUT=10
TPM_TIMEOUT=3
list=""

add() { # name source
    key=${2#UUID=}
    key=${key#luks-}
    case " $list " in *" $key="*) return ;; esac
    list="$list $key=$1"
}

for arg in $SR_CMDLINE; do
    case "$arg" in
    sealroot=off | rd.luks=0) exit 0 ;;
    sealroot.timeout=*) TIMEOUT=$(sr_uint "${arg#sealroot.timeout=}" 10 300) ;;
    sealroot.tpm-timeout=*) TPM_TIMEOUT=$(sr_uint "${arg#sealroot.tpm-timeout=}" 3 300) ;;
    rd.luks.name=*)
        v=${arg#rd.luks.name=}
        add "${v#*=}" "${v%%=*}"
        ;;
    rd.luks.uuid=*)
        v=${arg#rd.luks.uuid=}
        v=${v#luks-}
        add "luks-$v" "$v"
        ;;
    esac
done
if [ -s "$VOLUMES" ]; then
    while read -r name source; do
        case "$source" in
        UUID=*) add "$name" "$source" ;;
        *) list="$list $source=$name" ;;
        esac
    done <"$VOLUMES"
fi
[ -n "$list" ] || exit 0

# The device path in $sr_dev (no $(...): the wait loop asks ten times a second, and each fork
# costs in an early initrd).
resolve() {
    case "$1" in
    /*) sr_dev=$1 ;;
    PARTUUID=*) sr_dev=/dev/disk/by-partuuid/${1#PARTUUID=} ;;
    LABEL=*) sr_dev=/dev/disk/by-label/${1#LABEL=} ;;
    *) sr_dev=/dev/disk/by-uuid/$1 ;;
    esac
}
disks_present() {
    for v in $list; do
        resolve "${v%=*}"
        [ -e "$sr_dev" ] || return 1
    done
}
n=0
for v in $list; do n=$((n + 1)); done
sr_say "starting ($n volume(s))"
sr_preload_modules
sr_now
deadline=$((SR_NOW + TIMEOUT))
until disks_present || { sr_now && [ "$SR_NOW" -ge "$deadline" ]; }; do sleep 0.1; done
sr_now
deadline=$((SR_NOW + TPM_TIMEOUT))
until sr_tpm_present || { sr_now && [ "$SR_NOW" -ge "$deadline" ]; }; do sleep 0.1; done
if sr_tpm_present; then
    sr_say "devices ready, unlocking"
else
    sr_say "no TPM device after ${TPM_TIMEOUT}s"
fi

set --
# Entries are SOURCE=NAME; a source may hold '=' itself (PARTUUID=…), a mapping name not.
for v in $list; do
    name=${v##*=}
    [ -e "/dev/mapper/$name" ] && continue
    resolve "${v%=*}"
    set -- "$@" "$sr_dev" "$name"
done
[ $# -gt 0 ] || exit 0
[ -d /run/cryptsetup ] || mkdir -p /run/cryptsetup
sr_unlock --askpass /sbin/sealroot-askpass -- "$@"
# The fence holds now (sr_unlock). A mapping this run opened needs no systemd-cryptsetup@
# unit, which would only start to say "already active": its drop-in skips the unit when
# the mapping is marked here. A volume sealroot did not open is not marked: its unit runs
# and prompts as usual.
# (Flat names in /run: no mkdir to fork.)
while [ $# -ge 2 ]; do
    # A name from the command line with a slash would make the marker a path elsewhere.
    case "$2" in
    */* | '') ;;
    *) [ -e "/dev/mapper/$2" ] && : >"/run/sealroot-opened-$2" ;;
    esac
    shift 2
done
exit 0
