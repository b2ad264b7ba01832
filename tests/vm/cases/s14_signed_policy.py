"""VM scenario: 14. signed policy (initramfs-tools only): an updated initrd prompts until approved, then unlocks with no prompt; the old one still does."""

import os
import shutil

from harness import (
    Failure,
    SEALROOT,
    check_run,
    copy_sparse,
    fence_before_prompt,
    live_pcrs,
    luks_tokens,
    need,
    new_vtpm,
    save_eventlog,
    sealroot_token,
    updated_initrd,
)

TITLE = '14. signed policy (initramfs-tools only): an updated initrd prompts until approved, then unlocks with no prompt; the old one still does'


def run(ctx):
    """Issue 14: an initrd update under a signed policy, no resealing. A fresh vTPM S
    (its SRK from `srk-public`) and a pristine copy of the guest's disk sealed offline
    to S with `enroll --srk-public --policy-key` (ECDSA P-256, made here with openssl):
    the object trusts the key and the fence, no PCR value. The host approves PCRs 4
    and 9 of the stock initrd, taken from the reference token the online "enroll"
    boot recorded on g.disk (PCRs 4 and 9 do not depend on the TPM). Boots, all under
    S, in mode "pcrs" (live PCRs 4 and 9 from sysfs, the TCG event log, the fence
    check):
    - the stock initrd: no prompt, unlocked as root; the live PCRs are the approved
      ones; its event log is saved (eventlog.bin/.json/.cmdline, for predict);
    - an updated initrd (the stock one with a file appended in another cpio archive, as
      a rebuild changes it), before any approval of it: the stock prompt, after the
      fence; sealroot says no approval covers the current values, naming PCR 9, which
      did change (the EFI stub's "Linux initrd" event). PCR 4 changes too here, the
      kernel file being the same: under QEMU's -kernel the measured image is probably
      the kernel as QEMU patched it, its setup header holding the initrd's size and
      address. This boot is the reference for the new values;
    - after `approve --pcr-values OLD --pcr-values NEW --replace` (PolicyOR: the old
      and the new initrd, one approval in the header): the updated initrd unlocks
      with no prompt, the fence holds in the booted root;
    - the stock initrd again: unlocks with no prompt through the other branch."""
    g = ctx.g
    _, ref = sealroot_token(g.disk)
    if ref.get("tpm2_pcr_bank") != "sha256" or sorted(ref["tpm2_pcrs"]) != [4, 9, 15]:
        raise Failure(f"the reference token binds {ref.get('tpm2_pcr_bank')} PCRs "
                      f"{ref.get('tpm2_pcrs')}, not sha256 PCRs 4, 9 and the fence")
    old = {p: ref["tpm2_pcr_values"][p] for p in ("4", "9")}

    def spec(values):
        return ",".join(f"{p}:sha256={values[p]}" for p in ("4", "9"))

    if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
        raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
    d = os.path.join(g.work, "signed")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    priv, pub = os.path.join(d, "policy.pem"), os.path.join(d, "policy.pub.pem")
    check_run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
               "ec_paramgen_curve:P-256", "-out", priv], "openssl genpkey")
    check_run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], "openssl pkey")
    state, srk = os.path.join(d, "tpm"), os.path.join(d, "srk.pub")
    name = new_vtpm(state, srk)
    disk = os.path.join(d, "disk.img")
    copy_sparse(os.path.join(g.guest, "disk.img"), disk)
    try:
        out = check_run([SEALROOT, "enroll", disk, "--srk-public", srk, "--policy-key",
                         pub, "--unlock-key-file", g.passfile],
                        "offline enroll with a policy key", text=True)
        print(f"  host: {out.stderr.strip()}; SRK {name}", flush=True)
        out = check_run([SEALROOT, "approve", disk, "--key", priv, "--pcr-values",
                         spec(old)], "approve the stock initrd's values", text=True)
        print(f"  host: {out.stderr.strip()}; {spec(old)}", flush=True)

        text = g.boot("signed-stock", "pcrs", disk=disk, tpm_state=state)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "approved unlock")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        live = live_pcrs(text)
        if live != old:
            raise Failure(f"live PCRs {live} are not the reference token's {old}")
        kernel = os.path.abspath(os.path.join(g.guest, "vmlinuz"))
        save_eventlog(text, g.work, "eventlog", {
            "kernel": kernel, "initrd": os.path.abspath(g.initrd), "cmdline": g.cmdline,
            "pcrs_sha256": live})

        new_initrd = os.path.join(d, "initrd-updated.img")
        digest = updated_initrd(g.initrd, new_initrd)
        print(f"  host: updated initrd {new_initrd} (sha256 {digest[:16]}...)", flush=True)
        text = g.boot("signed-update-unapproved", "pcrs", disk=disk, tpm_state=state,
                      initrd=new_initrd, answer=g.passphrase)
        m = need(text, r"sealroot: .*no approval covers the current PCR values "
                 r"\(1 approval\(s\); PCR ([0-9, ]+) differ", "no approval for the update")
        differ = m.group(1).split(", ")
        if "9" not in differ:
            raise Failure(f"the mismatch names PCR {differ}, not PCR 9")
        fence_before_prompt(text)
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after the prompt")
        new = live_pcrs(text)
        if new["9"] == old["9"]:
            raise Failure("the updated initrd did not change PCR 9")
        print(f"  updated initrd: PCR(s) {', '.join(differ)} differ; new values "
              f"{spec(new)}", flush=True)
        save_eventlog(text, g.work, "eventlog-updated", {
            "kernel": kernel, "initrd": os.path.abspath(new_initrd), "cmdline": g.cmdline,
            "pcrs_sha256": new})

        out = check_run([SEALROOT, "approve", disk, "--key", priv, "--pcr-values",
                         spec(old), "--pcr-values", spec(new), "--replace"],
                        "approve the old and the new values", text=True)
        approvals = [t for t in luks_tokens(disk) if t.get("type") == "sealroot-approval"]
        print(f"  host: {out.stderr.strip()}; {len(approvals)} approval token(s) in the "
              "header", flush=True)
        if len(approvals) != 1:
            raise Failure(f"--replace left {len(approvals)} approval tokens")
        text = g.boot("signed-update-approved", "pcrs", disk=disk, tpm_state=state,
                      initrd=new_initrd)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root",
             "the updated initrd unlocks once approved")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        if live_pcrs(text) != new:
            raise Failure("the updated initrd's PCRs changed between two boots")
        text = g.boot("signed-stock-after-update", "check", disk=disk, tpm_state=state)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root",
             "the stock initrd still unlocks (the approval's other branch)")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
    finally:
        os.unlink(disk)
