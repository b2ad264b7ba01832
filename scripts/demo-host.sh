#!/bin/bash
# The host demo: a LUKS2 image and a swtpm stand in for a machine's disk and TPM.
set -euo pipefail

SEALROOT=${SEALROOT:-$(pwd)/target/release/sealroot}
WORK=$(mktemp -d /tmp/sealroot-demo.XXXXXX)
. "$(dirname "$0")/swtpm.sh"
trap 'swtpm_stop; rm -rf "$WORK"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "A LUKS2 disk image with a passphrase, and a TPM (swtpm)"
printf 'demo passphrase' >"$WORK/passphrase"
truncate -s 32M "$WORK/disk.img"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$WORK/passphrase" "$WORK/disk.img"
swtpm_start
echo "TPM at $TCTI"

step "Enroll: seal a new key to PCR 7 + fence PCR 15, add a recovery key"
echo "\$ $SEALROOT enroll $WORK/disk.img --unlock-key-file $WORK/passphrase --recovery-key --tcti $TCTI"
"$SEALROOT" enroll "$WORK/disk.img" --unlock-key-file "$WORK/passphrase" \
    --recovery-key --tcti "$TCTI" >"$WORK/recovery-key"
echo "recovery key (stdout): $(cat "$WORK/recovery-key")"

step "Status"
show "$SEALROOT" status "$WORK/disk.img" --tcti "$TCTI"

step "Unlock at boot (--test: verify the key, this host has no device-mapper)"
show "$SEALROOT" unlock "$WORK/disk.img" root --test --tcti "$TCTI"
echo "exit $?: unlocked, and the fence PCR 15 is now extended"

step "A second unlock in the same boot is refused by the fence"
set +e
show "$SEALROOT" unlock "$WORK/disk.img" root --test --tcti "$TCTI"
echo "exit $? (5 = policy mismatch)"
set -e

step "Reboot (TPM reset), but Secure Boot state changed: PCR 7 extended"
swtpm_reset
show tpm2_pcrextend -T "$TCTI" 7:sha256=$(printf 'new db' | sha256sum | cut -d' ' -f1)
show "$SEALROOT" status "$WORK/disk.img" --tcti "$TCTI"
set +e
show "$SEALROOT" unlock "$WORK/disk.img" root --test --tcti "$TCTI"
echo "exit $? (5 = policy mismatch): the boot falls back to the passphrase prompt"
set -e

step "Recover with the recovery key (typed without dashes, in upper case; no TPM needed)"
tr -d '-' <"$WORK/recovery-key" | tr 'a-z' 'A-Z' >"$WORK/typed"
show "$SEALROOT" recover "$WORK/disk.img" root --test --key-file "$WORK/typed"

step "Done"
