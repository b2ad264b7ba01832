"""VM scenario: 10. golden instance A (initramfs-tools only): first boot provisions with no input, re-encrypts after switch-root; second boot: TPM, no prompt."""

import os
import re

from harness import (
    Failure,
    copy_sparse,
    need,
)
from cases import golden

TITLE = '10. golden instance A (initramfs-tools only): first boot provisions with no input, re-encrypts after switch-root; second boot: TPM, no prompt'


def run(ctx):
    """Instance A's first boot: a copy of the golden image, a fresh vTPM state (no SRK:
    provisioning creates it), no answer at any prompt. The initrd's `sealroot unlock`
    provisions (new key, sealed to this TPM's PCRs 4 and 9, recovery key escrowed,
    verified, re-encryption set up) and activates the root with the provisioning key;
    in the booted root `sealroot finish-provisioning` re-encrypts online (timed), and
    then nothing is pending. The files' checksum is compared with instance B's, taken
    before any of its data moved (golden_instance_b)."""
    g, gold = ctx.g, ctx.gold
    gold["a"] = a = os.path.join(gold["dir"], "a.img")
    copy_sparse(gold["image"], a)
    gold["tpm_a"] = state = os.path.join(gold["dir"], "tpm-a")
    os.makedirs(state)
    text = golden.first_boot(ctx, "golden-a-first", a, state)
    gold["a_first"] = text
    gold["sums_a"] = need(text, r"^E2E-SUMS ([0-9a-f]{64}) ", "checksum").group(1)
    gold["finish_seconds"] = float(need(text, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)",
                                        "finish time").group(1))
    # The second boot: the TPM unlocks it, no prompt; the builder's passphrase, tried
    # from inside, opens nothing any more.
    text = g.boot("golden-a-second", "check", disk=a, tpm_state=state)
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "TPM unlock")
    if re.search(r"^E2E-KMSG .*provisioning", text, re.M):
        raise Failure("the second boot provisioned again")
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
    need(text, r"^E2E-PASSPHRASE-CHECK rc=[1-9]", "builder passphrase refused (cryptsetup)")
    need(text, r"^E2E-RECOVER-CHECK rc=[1-9]", "builder passphrase refused (sealroot)")
    gold["a_second"] = text
