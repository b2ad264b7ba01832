"""VM scenario: 8. sealed offline on the host for a new instance's vTPM: unlocks with no prompt; under another vTPM -> stock prompt (initramfs-tools only)."""

import base64
import os
import subprocess

from harness import (
    Failure,
    SEALROOT,
    fence_before_prompt,
    need,
    new_vtpm,
    sealroot_token,
)

TITLE = "8. sealed offline on the host for a new instance's vTPM: unlocks with no prompt; under another vTPM -> stock prompt (initramfs-tools only)"


def run(ctx):
    """Issue 12: a new instance's disk sealed offline on the host before its first
    boot, for that instance's vTPM alone. (initramfs-tools only: the host side is the
    same for every flavour, and each boot costs about a minute of CI time.)

    The PCR values come from a reference boot of the same image under another TPM
    state: those the online "enroll" boot recorded on g.disk under state A (PCRs 4 and
    9 are OVMF's measurements of the same kernel, initrd and command line, whatever
    the TPM; enroll adds the fence PCR 15 at zeros itself). Instance B: a fresh swtpm
    state whose SRK `srk-public` creates; a pristine copy of the guest's disk
    (passphrase keyslot only) sealed to B's SRK public area with `enroll --srk-public
    --pcr-values`, no TPM opened. Booted with B it unlocks with no prompt and the
    fence holds in the booted root. The same disk booted with instance C's vTPM (its
    own SRK) is refused before any session: the stock prompt, after the fence.

    The guest's initrd pins no SRK Name (build-guest.sh writes no sealroot.conf), as a
    golden image sealed per instance must not: a pinned Name is one instance's."""
    g = ctx.g
    _, ref = sealroot_token(g.disk)
    if ref.get("tpm2_pcr_bank") != "sha256" or sorted(ref["tpm2_pcrs"]) != [4, 9, 15]:
        raise Failure(f"the reference token binds {ref.get('tpm2_pcr_bank')} PCRs "
                      f"{ref.get('tpm2_pcrs')}, not sha256 PCRs 4, 9 and the fence")
    spec = ",".join(f"{p}:sha256={ref['tpm2_pcr_values'][p]}" for p in ("4", "9"))
    if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
        raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
    state_b, state_c = os.path.join(g.work, "tpm-b"), os.path.join(g.work, "tpm-c")
    srk_b, srk_c = os.path.join(g.work, "srk-b.pub"), os.path.join(g.work, "srk-c.pub")
    name_b = new_vtpm(state_b, srk_b)
    name_c = new_vtpm(state_c, srk_c)
    if name_b == name_c:
        raise Failure("two fresh vTPMs have the same SRK")
    disk = os.path.join(g.work, "offline.img")
    subprocess.run(["cp", "--sparse=always", os.path.join(g.guest, "disk.img"), disk],
                   check=True)
    try:
        out = subprocess.run([SEALROOT, "enroll", disk, "--srk-public", srk_b,
                              "--pcr-values", spec, "--unlock-key-file",
                              os.path.join(g.guest, "passphrase")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise Failure(f"offline enroll: rc={out.returncode}: {out.stderr.strip()}")
        print(f"  host: {out.stderr.strip()}; PCRs {spec}; SRK of B {name_b}, of C "
              f"{name_c}", flush=True)
        _, token = sealroot_token(disk)
        with open(srk_b, "rb") as f:
            if base64.b64decode(token["tpm2_srk_public"]) != f.read():
                raise Failure("the offline token does not record instance B's SRK")
        if any(token["tpm2_pcr_values"].get(p) != ref["tpm2_pcr_values"][p]
               for p in ("4", "9", "15")):
            raise Failure(f"the offline token's PCR values {token['tpm2_pcr_values']} "
                          f"are not the reference boot's {ref['tpm2_pcr_values']}")
        text = g.boot("offline-sealed", "check", disk=disk, tpm_state=state_b)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "offline-sealed unlock")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        need(text, r"^E2E-LOG sealroot: .*fence PCR 15 is already extended",
             "fence message")
        text = g.boot("offline-other-vtpm", "none", disk=disk, tpm_state=state_c,
                      answer=g.passphrase)
        need(text, r"sealroot: .*the token's storage key is not the key at 0x81000001",
             "another vTPM's SRK refused")
        fence_before_prompt(text)
    finally:
        os.unlink(disk)
