#!/bin/sh
# Unlocks the sealroot volumes with the TPM (systemd unit or initqueue job). Volumes: the
# list built from /etc/crypttab, and rd.luks.uuid= / rd.luks.name= on the kernel command
# line, whose names win (they are the names the rest of this initrd waits for). A volume
# sealroot cannot open stays closed and the stock prompt follows. sealroot extends the fence
# PCR itself, also when unlocking failed. Always exits 0.

VOLUMES=/etc/sealroot/volumes
TIMEOUT=10
TPM_TIMEOUT=3
list=""

say() {
    echo "sealroot: $*" >/dev/console 2>/dev/null || echo "sealroot: $*"
    echo "<5>sealroot: $*" >/dev/kmsg 2>/dev/null || true
}

add() { # name source
    key=${2#UUID=}
    key=${key#luks-}
    case " $list " in *" $key="*) return ;; esac
    list="$list $key=$1"
}

for arg in $(cat /proc/cmdline); do
    case "$arg" in
    sealroot=off | rd.luks=0) exit 0 ;;
    sealroot.timeout=*) TIMEOUT=${arg#sealroot.timeout=} ;;
    sealroot.tpm-timeout=*) TPM_TIMEOUT=${arg#sealroot.tpm-timeout=} ;;
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

resolve() {
    case "$1" in
    /*) echo "$1" ;;
    PARTUUID=*) echo "/dev/disk/by-partuuid/${1#PARTUUID=}" ;;
    LABEL=*) echo "/dev/disk/by-label/${1#LABEL=}" ;;
    *) echo "/dev/disk/by-uuid/$1" ;;
    esac
}
uptime_s() { cut -d. -f1 /proc/uptime; }
disks_present() {
    for v in $list; do [ -e "$(resolve "${v%%=*}")" ] || return 1; done
}
tpm_present() { [ -e /dev/tpmrm0 ] || [ -e /dev/tpm0 ]; }

say "starting ($(echo $list | wc -w) volume(s))"
deadline=$(($(uptime_s) + TIMEOUT))
until disks_present || [ "$(uptime_s)" -ge "$deadline" ]; do sleep 0.1; done
deadline=$(($(uptime_s) + TPM_TIMEOUT))
until tpm_present || [ "$(uptime_s)" -ge "$deadline" ]; do sleep 0.1; done
if tpm_present; then
    say "devices ready, unlocking"
else
    say "no TPM device after ${TPM_TIMEOUT}s"
fi

set --
for v in $list; do
    name=${v#*=}
    [ -e "/dev/mapper/$name" ] && continue
    set -- "$@" "$(resolve "${v%%=*}")" "$name"
done
[ $# -gt 0 ] || exit 0
mkdir -p /run/cryptsetup
/usr/sbin/sealroot --kmsg unlock --askpass /sbin/sealroot-askpass "$@"
rc=$?
[ "$rc" -eq 0 ] || say "TPM unlock failed (exit $rc); falling back to the passphrase prompt"
exit 0
