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

n=0
for v in $list; do n=$((n + 1)); done
sr_say "starting ($n volume(s))"
sr_preload_modules

# Volumes as crypttab names them (a bare UUID from rd.luks.* as UUID=); sealroot waits for
# them and the TPM.
set --
# Entries are SOURCE=NAME; a source may hold '=' itself (PARTUUID=…), a mapping name not.
for v in $list; do
    name=${v##*=}
    [ -e "/dev/mapper/$name" ] && continue
    source=${v%=*}
    case "$source" in
    /* | PARTUUID=* | LABEL=* | PARTLABEL=* | UUID=*) ;;
    *) source=UUID=$source ;;
    esac
    set -- "$@" "$source" "$name"
done
[ $# -gt 0 ] || exit 0
[ -d /run/cryptsetup ] || mkdir -p /run/cryptsetup
sr_unlock --wait "$TIMEOUT" --tpm-wait "$TPM_TIMEOUT" --askpass /sbin/sealroot-askpass -- "$@"
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
