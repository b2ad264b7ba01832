#!/bin/bash
# Key recovery, side by side on one LUKS2 image and one swtpm: sealroot, clevis 19 and
# systemd-cryptsetup 252. Prints median wall times, ratios, and the TPM commands sealroot
# sends per unlock. Not part of `make test`: timings are measured, never asserted.
set -euo pipefail

RUNS=${RUNS:-21}
SEALROOT=${SEALROOT:-$(pwd)/target/static/sealroot}
WORK=$(mktemp -d /tmp/sealroot-bench.XXXXXX)
SWTPM_LOG_LEVEL=5
. "$(dirname "$0")/swtpm.sh"
trap 'swtpm_stop; rm -rf "$WORK"' EXIT

now_us() { echo $(( $(date +%s%N) / 1000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
flush_tpm() {
    # Raw swtpm has no resource manager: drop what tpm2-tools and systemd leave behind.
    tpm2_flushcontext -t -T "$TCTI" >/dev/null 2>&1 || true
    tpm2_flushcontext -l -T "$TCTI" >/dev/null 2>&1 || true
    tpm2_flushcontext -s -T "$TCTI" >/dev/null 2>&1 || true
}

echo "== setup: one image, one swtpm, three enrollments (PCR 7, sha256)"
printf 'bench passphrase' >"$WORK/pass"
truncate -s 32M "$WORK/disk.img"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$WORK/pass" "$WORK/disk.img"
swtpm_start
export TPM2TOOLS_TCTI="$TCTI"

"$SEALROOT" enroll "$WORK/disk.img" --unlock-key-file "$WORK/pass" --tcti "$TCTI" 2>/dev/null
SEALROOT_SLOT=1
clevis luks bind -y -k "$WORK/pass" -d "$WORK/disk.img" tpm2 '{"pcr_ids":"7","pcr_bank":"sha256"}'
CLEVIS_SLOT=2
flush_tpm
PASSWORD="$(cat "$WORK/pass")" systemd-cryptenroll --tpm2-device="$TCTI" --tpm2-pcrs=7 \
    "$WORK/disk.img" >/dev/null 2>&1
flush_tpm
cryptsetup luksDump "$WORK/disk.img" | sed -n '/^Tokens:/,/^Digests:/p' | grep -E '^ +[0-9]+:|Keyslot'

# The initrd pins the SRK's Name when the image builder knows it (srk_name in
# /etc/sealroot/sealroot.conf): then the parent check costs no TPM command.
PINNED=()
if "$SEALROOT" unlock --help | grep -q -- --srk-name; then
    tpm2_readpublic -c 0x81000001 -n "$WORK/srk.name" >/dev/null
    PINNED=(--srk-name "$(od -An -v -tx1 "$WORK/srk.name" | tr -d ' \n')")
fi

echo "== checks: each tool really recovers the key"
"$SEALROOT" unlock "$WORK/disk.img" bench --test --tcti "$TCTI" "${PINNED[@]}"
swtpm_reboot
clevis luks pass -d "$WORK/disk.img" -s $CLEVIS_SLOT |
    cryptsetup open --test-passphrase "$WORK/disk.img" --key-slot $CLEVIS_SLOT -d -
flush_tpm
# systemd-cryptsetup splits its options at commas: give the swtpm TCTI without one.
SD_TCTI="swtpm:port=$SWTPM_PORT"
sd_out=$(/lib/systemd/systemd-cryptsetup attach bench "$WORK/disk.img" - \
    "tpm2-device=$SD_TCTI,headless=1" 2>&1 || true)
if grep -q "Failed to activate with TPM2 acquired key" <<<"$sd_out"; then
    echo "systemd-cryptsetup acquired the key from the TPM (then stops at device-mapper, as expected here)"
else
    echo "systemd-cryptsetup did not acquire the key: its timing would be meaningless" >&2
    exit 1
fi
flush_tpm

echo "== TPM commands per sealroot unlock (from swtpm's log)"
swtpm_reboot
before=$(grep -c 'SWTPM_IO_Read:' "$WORK/swtpm.log" || true)
"$SEALROOT" unlock "$WORK/disk.img" bench --test --tcti "$TCTI" "${PINNED[@]}"
# The command code is bytes 7-10 of each command; the dump line after each read shows them.
cc_names() {
    awk -v skip="$before" '
        /SWTPM_IO_Read:/ { n++; if (n > skip) grab = 1; next }
        grab { printf "%s%s ", $7, $8 $9 $10; grab = 0 }' "$WORK/swtpm.log" |
    sed -e 's/000173/ReadPublic/g; s/000157/Load/g; s/000176/StartAuthSession/g' \
        -e 's/000156/Import/g' \
        -e 's/00017f/PolicyPCR/g; s/00017F/PolicyPCR/g; s/00015e/Unseal/g; s/00015E/Unseal/g' \
        -e 's/000165/FlushContext/g; s/00017a/GetCapability/g; s/00017A/GetCapability/g' \
        -e 's/000182/PCR_Extend/g; s/00013c/PCR_Event/g; s/00013C/PCR_Event/g' \
        -e 's/00016b/PolicyAuthValue/g; s/00016B/PolicyAuthValue/g' \
        -e 's/\b00//g'
}
after=$(grep -c 'SWTPM_IO_Read:' "$WORK/swtpm.log")
SEALROOT_CMDS=$((after - before))
echo "$SEALROOT_CMDS commands: $(cc_names)"
if [ ${#PINNED[@]} -gt 0 ]; then
    swtpm_reboot
    before=$(grep -c 'SWTPM_IO_Read:' "$WORK/swtpm.log" || true)
    "$SEALROOT" unlock "$WORK/disk.img" bench --test --tcti "$TCTI" >/dev/null 2>&1
    after=$(grep -c 'SWTPM_IO_Read:' "$WORK/swtpm.log")
    echo "without a pinned SRK Name: $((after - before)) commands: $(cc_names)"
fi

echo "== timing: median of $RUNS runs each (TPM state reset between runs, not timed)"
declare -a t_sealroot t_clevis t_systemd
for i in $(seq "$RUNS"); do
    swtpm_reboot
    s=$(now_us)
    "$SEALROOT" unlock "$WORK/disk.img" bench --test --tcti "$TCTI" "${PINNED[@]}"
    t_sealroot+=($(( $(now_us) - s )))

    flush_tpm
    s=$(now_us)
    clevis luks pass -d "$WORK/disk.img" -s $CLEVIS_SLOT |
        cryptsetup open --test-passphrase "$WORK/disk.img" --key-slot $CLEVIS_SLOT -d -
    t_clevis+=($(( $(now_us) - s )))

    flush_tpm
    s=$(now_us)
    /lib/systemd/systemd-cryptsetup attach bench "$WORK/disk.img" - \
        "tpm2-device=$SD_TCTI,headless=1" >/dev/null 2>&1 || true
    t_systemd+=($(( $(now_us) - s )))
done
echo "== the systemd-tpm2 token itself: sealroot vs systemd-cryptsetup (median of $RUNS)"
# A second image with only a systemd-cryptenroll token, so sealroot has nothing else to try.
truncate -s 32M "$WORK/systemd.img"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$WORK/pass" "$WORK/systemd.img"
PASSWORD="$(cat "$WORK/pass")" systemd-cryptenroll --tpm2-device="$TCTI" --tpm2-pcrs=7 \
    "$WORK/systemd.img" >/dev/null 2>&1
flush_tpm
"$SEALROOT" unlock "$WORK/systemd.img" bench --test --no-fence --tcti "$TCTI" "${PINNED[@]}"
flush_tpm
declare -a t_sd_sealroot t_sd_systemd
for i in $(seq "$RUNS"); do
    s=$(now_us)
    "$SEALROOT" unlock "$WORK/systemd.img" bench --test --no-fence --tcti "$TCTI" "${PINNED[@]}"
    t_sd_sealroot+=($(( $(now_us) - s )))
    flush_tpm
    s=$(now_us)
    /lib/systemd/systemd-cryptsetup attach bench "$WORK/systemd.img" - \
        "tpm2-device=$SD_TCTI,headless=1" >/dev/null 2>&1 || true
    t_sd_systemd+=($(( $(now_us) - s )))
    flush_tpm
done
echo "== an offline-sealed token (enroll --srk-public): the TPM imports it at every unlock"
truncate -s 32M "$WORK/offline.img"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$WORK/pass" "$WORK/offline.img"
"$SEALROOT" srk-public --out "$WORK/srk.pub" --tcti "$TCTI" 2>/dev/null
swtpm_reboot
pcr7=$(tpm2_pcrread sha256:7 -o "$WORK/pcr7" >/dev/null && od -An -v -tx1 "$WORK/pcr7" | tr -d ' \n')
"$SEALROOT" enroll "$WORK/offline.img" --srk-public "$WORK/srk.pub" \
    --pcr-values "7:sha256=$pcr7" --unlock-key-file "$WORK/pass" 2>/dev/null
"$SEALROOT" unlock "$WORK/offline.img" bench --test --no-fence --tcti "$TCTI" "${PINNED[@]}"
declare -a t_offline t_online
for i in $(seq "$RUNS"); do
    swtpm_reboot
    s=$(now_us)
    "$SEALROOT" unlock "$WORK/offline.img" bench --test --no-fence --tcti "$TCTI" "${PINNED[@]}"
    t_offline+=($(( $(now_us) - s )))
    swtpm_reboot
    s=$(now_us)
    "$SEALROOT" unlock "$WORK/disk.img" bench --test --no-fence --tcti "$TCTI" "${PINNED[@]}"
    t_online+=($(( $(now_us) - s )))
done
m_off=$(printf '%s\n' "${t_offline[@]}" | median)
m_on=$(printf '%s\n' "${t_online[@]}" | median)

sd_s=$(printf '%s\n' "${t_sd_sealroot[@]}" | median)
sd_d=$(printf '%s\n' "${t_sd_systemd[@]}" | median)

ms=$(printf '%s\n' "${t_sealroot[@]}" | median)
mc=$(printf '%s\n' "${t_clevis[@]}" | median)
md=$(printf '%s\n' "${t_systemd[@]}" | median)

printf '\n%-48s %10s %10s\n' "key recovery (median wall time)" "ms" "ratio"
printf '%-48s %10.1f %10s\n' "sealroot unlock --test (incl. fence)" "$(echo "$ms/1000" | bc -l)" "1"
printf '%-48s %10.1f %10.1f\n' "clevis luks pass | cryptsetup --test-passphrase" "$(echo "$mc/1000" | bc -l)" "$(echo "$mc/$ms" | bc -l)"
printf '%-48s %10.1f %10.1f\n' "systemd-cryptsetup attach (stops at dm)" "$(echo "$md/1000" | bc -l)" "$(echo "$md/$ms" | bc -l)"
printf '\n%-48s %10.1f %10s\n' "sealroot unlock --test, systemd-tpm2 token" "$(echo "$sd_s/1000" | bc -l)" "1"
printf '%-48s %10.1f %10.1f\n' "systemd-cryptsetup attach, same token" "$(echo "$sd_d/1000" | bc -l)" "$(echo "$sd_d/$sd_s" | bc -l)"
printf '\n%-48s %10.1f %10s\n' "sealroot unlock --test, sealed on this TPM" "$(echo "$m_on/1000" | bc -l)" "1"
printf '%-48s %10.1f %10.2f\n' "sealroot unlock --test, sealed offline (Import)" "$(echo "$m_off/1000" | bc -l)" "$(echo "$m_off/$m_on" | bc -l)"
printf '\nsealroot / clevis = 1/%.1f (target 1/20); sealroot / systemd-cryptsetup = 1/%.1f (target 1/3); TPM commands per unlock: %d (target 6)\n' \
    "$(echo "$mc/$ms" | bc -l)" "$(echo "$md/$ms" | bc -l)" "$SEALROOT_CMDS"
