# sealroot's boot-time shell library, sourced by the initramfs-tools local-top script and the
# dracut unlock script (POSIX sh: dash, busybox ash, bash). It fails closed: whatever
# happens — sealroot crashing, a usage error, `sealroot=off`, nothing to unlock — the fence
# PCR is extended before the script returns, so before any prompt and before switch-root.
#
# Trusted configuration comes from /etc/sealroot/initrd.conf, written by the initrd hook at
# build time (measured with the initrd). Kernel parameters are attacker input unless the
# policy binds the command line: they are validated, never evaluated, and never reach
# sealroot's environment.

SR_BIN=/usr/sbin/sealroot
SR_CONF=/etc/sealroot/initrd.conf
SR_FENCE_PCR=15
SR_SRK_HANDLE=0x81000001
SR_SRK_NAME=""
SR_TCTI=""
SR_FENCED=""
SR_LOG=warn

sr_say() {
    echo "sealroot: $*" >/dev/console 2>/dev/null || echo "sealroot: $*"
    echo "<5>sealroot: $*" >/dev/kmsg 2>/dev/null || true
}

# sr_uint VALUE DEFAULT MAX: VALUE if it is a decimal number up to MAX (no leading zeros:
# the shell's arithmetic would read them as octal or fail), else DEFAULT.
sr_uint() {
    case "$1" in
    '' | *[!0-9]* | ?????* | 0?*) echo "$2" ;;
    *) if [ "$1" -le "$3" ]; then echo "$1"; else echo "$2"; fi ;;
    esac
}

# Reads the trusted configuration; a malformed value keeps the safe default.
sr_config() {
    [ -r "$SR_CONF" ] || return 0
    while IFS='=' read -r key value; do
        case "$key" in
        fence_pcr) SR_FENCE_PCR=$(sr_uint "$value" 15 15) ;;
        srk_handle)
            case "$value" in
            0x81[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) SR_SRK_HANDLE=$value ;;
            esac
            ;;
        tcti)
            case "$value" in
            *[!A-Za-z0-9:/=,._-]*) ;;
            device:/dev/* | swtpm:* | mssim:*) SR_TCTI=$value ;;
            esac
            ;;
        srk_name)
            case "$value" in
            *[!0-9a-f]*) ;;
            000b????????????????????????????????????????????????????????????????) SR_SRK_NAME=$value ;;
            esac
            ;;
        esac
    done <"$SR_CONF"
}

# The kernel command line, read once for the library and the scripts (SR_CMDLINE): attacker
# input unless the policy binds it, only ever matched against fixed patterns.
SR_CMDLINE=""
read -r SR_CMDLINE 2>/dev/null </proc/cmdline

# `sealroot.debug` on the kernel command line: sealroot's debug log, in the kernel log with
# the boot's timestamps (`make bench-boot` splits the unlock with it). A fixed filter, never
# the command line's text; the debug log shows no secrets. libcryptsetup's own trace stays
# off: it would slow the step it measures.
sr_debug_flag() {
    case " $SR_CMDLINE " in
    *" sealroot.debug "*) SR_LOG=debug,libcryptsetup=info ;;
    esac
}

sr_tpm_present() { [ -n "$SR_TCTI" ] || [ -e /dev/tpmrm0 ] || [ -e /dev/tpm0 ]; }

# The TCTI in SR_TCTI_NOW (a variable, not $(...): in an early initrd every fork costs). No
# TPM device yet: the resource manager's, which `sealroot unlock --wait` waits for.
sr_tcti() {
    if [ -n "$SR_TCTI" ]; then
        SR_TCTI_NOW=$SR_TCTI
    elif [ -e /dev/tpmrm0 ] || [ ! -e /dev/tpm0 ]; then
        SR_TCTI_NOW=device:/dev/tpmrm0
    else
        SR_TCTI_NOW=device:/dev/tpm0
    fi
}

# dm-crypt and the cipher of LUKS2's default (aes-xts-plain64), loaded in the background
# while the script waits for the disk and the TPM: otherwise the first table load waits
# for them as the kernel looks the cipher up, module by module. A module this machine
# cannot use (aesni_intel without AES-NI) fails quietly; the kernel still loads what it
# needs on its own.
sr_preload_modules() {
    # systemd initrds load them from their start (sealroot-modules.service).
    [ ! -d /run/systemd/system ] || return 0
    command -v modprobe >/dev/null 2>&1 || return 0
    modprobe -q -a dm_crypt aesni_intel xts </dev/null >/dev/null 2>&1 &
}

# sealroot with a clean environment (no SEALROOT_TCTI, TSS2_LOG, … from the kernel command
# line) and an explicit TPM.
sr_run() {
    verb=$1
    shift
    # `command`: no shell function can stand in for env.
    sr_tcti
    command env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SEALROOT_LOG="$SR_LOG" \
        "$SR_BIN" --kmsg "$verb" --tcti "$SR_TCTI_NOW" "$@"
}

# Extends the fence once. When a TPM exists but the fence cannot be extended, the boot stops
# here: a prompt now would let the key be unsealed again later in this boot.
sr_fence() {
    [ -z "$SR_FENCED" ] || return 0
    [ -x "$SR_BIN" ] || return 0
    if sr_run fence --pcr "$SR_FENCE_PCR"; then
        SR_FENCED=1
        return 0
    fi
    if ! sr_tpm_present; then
        SR_FENCED=1
        return 0
    fi
    sr_say "cannot extend the fence PCR $SR_FENCE_PCR although a TPM is present: powering off instead of continuing to a prompt"
    sleep 10
    echo o >/proc/sysrq-trigger 2>/dev/null
    while :; do sleep 3600; done
}

# sr_unlock [--wait SECS --tpm-wait SECS] [--askpass PROG] -- VOLUME NAME...: waits for the
# volumes (crypttab's UUID=, PARTUUID=, LABEL=, PARTLABEL= or a path) and the TPM, unlocks,
# then makes sure the fence holds (sealroot extends it itself; after a crash or a usage
# error it has not). sealroot waits itself: its start and the TPM's opening overlap the
# wait, and it finds a UUID on the kernel's disk nodes before udev has linked them.
sr_unlock() {
    set -- --fence-pcr "$SR_FENCE_PCR" --srk-handle "$SR_SRK_HANDLE" "$@"
    if [ -n "$SR_SRK_NAME" ]; then
        set -- --srk-name "$SR_SRK_NAME" "$@"
    fi
    sr_run unlock "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        SR_FENCED=1
    else
        sr_say "TPM unlock failed (exit $rc); falling back to the passphrase prompt"
        sr_fence
    fi
    return 0
}

sr_config
sr_debug_flag
# Every way out of the sourcing script fences, normal or not.
trap 'sr_fence' EXIT
trap 'sr_fence; exit 1' INT TERM HUP
