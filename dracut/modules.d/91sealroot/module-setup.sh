#!/bin/bash
# dracut module: unlock TPM-sealed LUKS2 volumes with sealroot before the passphrase prompt,
# in systemd initrds (sealroot.service, before cryptsetup-pre.target) and in initrds
# without systemd (an initqueue job that runs before cryptroot-ask). Volumes come from
# /etc/crypttab entries marked `sealroot` or `tpm2-device=…` and, at boot, from
# rd.luks.uuid= / rd.luks.name= on the kernel command line.

check() {
    require_binaries /usr/sbin/sealroot || return 1
    # Hosts that mark a crypttab entry get it; otherwise only when asked for
    # (add_dracutmodules+=" sealroot ").
    if [[ $hostonly ]] && grep -qsE '^[^#]*[[:space:]](.*,)?(sealroot|tpm2-device=[^,[:space:]]*)(,|[[:space:]]|$)' \
        "${dracutsysrootdir-}"/etc/crypttab; then
        return 0
    fi
    return 255
}

depends() {
    echo crypt
    return 0
}

installkernel() {
    # Needed even when this host's hardware is not detected (image builds in a chroot).
    hostonly='' instmods tpm_crb tpm_tis tpm_tis_core dm_mod dm_crypt \
        aesni_intel aes_generic xts ecb cbc sha256_generic essiv
}

install() {
    inst_binary /usr/sbin/sealroot
    inst_script "$moddir/sealroot-unlock.sh" /sbin/sealroot-unlock
    inst_script "$moddir/sealroot-askpass.sh" /sbin/sealroot-askpass
    inst_multiple cut wc sleep cat awk env
    inst_simple /usr/share/sealroot/boot.sh /usr/share/sealroot/boot.sh

    mkdir -p "$initdir/etc/sealroot"
    # The trusted configuration, measured with this initrd; a bad one fails the build
    # (dracut ignores install()'s return value: stop it here).
    if ! /usr/sbin/sealroot initrd-config >"$initdir/etc/sealroot/initrd.conf"; then
        dfatal "sealroot: /etc/sealroot/sealroot.conf is invalid (see above); not building an initrd that would ignore it"
        exit 1
    fi
    if [[ -r "${dracutsysrootdir-}/etc/crypttab" ]]; then
        awk '
            /^[[:space:]]*(#|$)/ { next }
            {
                n = split($4, opts, ",")
                for (i = 1; i <= n; i++)
                    if (opts[i] == "sealroot" || opts[i] ~ /^tpm2-device=/) { print $1, $2; break }
            }' "${dracutsysrootdir-}/etc/crypttab" >"$initdir/etc/sealroot/volumes"
    fi

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/sealroot.service" "$systemdsystemunitdir/sealroot.service"
        $SYSTEMCTL -q --root "$initdir" enable sealroot.service
        # dm-crypt and AES-XTS loaded once udevd runs, in parallel with its coldplug and
        # the wait for the disk: loaded when the disk appears (under TCG, aesni_intel's
        # self-tests take a second), and off sealroot's path. Not earlier: from the start
        # of the initrd the load took the CPU from what starts udevd, and the disk came
        # later. Nothing waits for it; a module this machine cannot use (aesni_intel
        # without AES-NI) is no failure.
        cat >"$initdir$systemdsystemunitdir/sealroot-modules.service" <<'UNIT'
[Unit]
Description=Load dm-crypt and AES-XTS early (sealroot)
DefaultDependencies=no
After=systemd-udevd.service
ConditionPathExists=/etc/initrd-release

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=-/sbin/modprobe -q -a dm_crypt xts aesni_intel

[Install]
WantedBy=cryptsetup.target
UNIT
        $SYSTEMCTL -q --root "$initdir" enable sealroot-modules.service
        # systemd-cryptsetup@ units skip the mappings sealroot opened (sealroot-unlock marks
        # them; a condition-skipped unit still satisfies what waits on it).
        mkdir -p "$initdir$systemdsystemunitdir/systemd-cryptsetup@.service.d"
        printf '%s\n' '[Unit]' 'ConditionPathExists=!/run/sealroot-opened-%I' \
            >"$initdir$systemdsystemunitdir/systemd-cryptsetup@.service.d/sealroot.conf"
    else
        inst_hook pre-trigger 90 "$moddir/sealroot-queue.sh"
        inst_multiple env
    fi
}
