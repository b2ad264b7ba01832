"""VM scenario: 13. golden instance A (initramfs-tools only): escrowed recovery key at the stock prompt; cryptsetup reencrypt figures."""

import os
import uuid

from harness import (
    BENCH_MIB,
    BOOT_TIMEOUT,
    HostSwtpm,
    SEALROOT,
    check_run,
    copy_sparse,
    data_segment,
    fence_before_prompt,
    need,
)
from cases import golden

TITLE = '13. golden instance A (initramfs-tools only): escrowed recovery key at the stock prompt; cryptsetup reencrypt figures'


def run(ctx):
    """Instance A booted with another, fresh vTPM (its sealed key cannot unseal there):
    the stock prompt, after the fence; the recovery key decrypted from A's escrow with
    age, typed at it, opens the root. The same boot times `cryptsetup reencrypt` and
    sealroot's data pass back to back on two copies of the guest's disk cut to the same
    size (E2E_BENCH_MIB of data), both offline with the same parameters: the pristine
    disk, and the golden image whose first-boot part the host did with `sealroot
    first-boot` and a throwaway swtpm. Prints the figures."""
    g, gold = ctx.g, ctx.gold
    state = os.path.join(gold["dir"], "tpm-other")
    os.makedirs(state)
    cs = os.path.join(gold["dir"], "bench-cryptsetup.img")
    sr = os.path.join(gold["dir"], "bench-sealroot.img")
    copy_sparse(os.path.join(g.guest, "disk.img"), cs)
    copy_sparse(gold["image"], sr)
    try:
        for img in (cs, sr):
            # Their own UUIDs (the initrd finds the root by UUID), the same size.
            check_run(["cryptsetup", "luksUUID", "-q", "--uuid", str(uuid.uuid4()), img],
                      "new UUID for a bench disk")
            if BENCH_MIB:
                offset, _ = data_segment(img)
                os.truncate(img, offset + BENCH_MIB * 1024 * 1024)
        with HostSwtpm(os.path.join(gold["dir"], "tpm-bench")) as tcti:
            check_run([SEALROOT, "first-boot", sr, "--tcti", tcti],
                      "sealroot first-boot on the bench copy")
        st = check_run([SEALROOT, "status", sr], "status", text=True).stdout
        need(st, r"^re-encryption: in progress", "bench copy set up for its data pass")
        text = g.boot("golden-a-recovery-key", "bench", disk=gold["a"], tpm_state=state,
                      answer=gold["recovery_a"], extra=[cs, sr], extra_writable=True,
                      timeout=2 * BOOT_TIMEOUT)
    finally:
        for img in (cs, sr):
            os.unlink(img)
    fence_before_prompt(text)
    need(text, r"^E2E-KMSG .*sealroot: .*(this TPM has no key|storage key)",
         "the sealed key refused under another vTPM")
    c = need(text, r"^E2E-CRYPTSETUP-REENCRYPT rc=0 seconds=([0-9.]+) bytes=(\d+)",
             "cryptsetup reencrypt in the guest")
    r = need(text, r"^E2E-SEALROOT-REENCRYPT rc=0 seconds=([0-9.]+) bytes=(\d+)",
             "sealroot finish-provisioning (offline) in the guest")
    golden.golden_figures(ctx, (float(c.group(1)), int(c.group(2))),
                   (float(r.group(1)), int(r.group(2))))
