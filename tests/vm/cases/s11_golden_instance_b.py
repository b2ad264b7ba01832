"""VM scenario: 11. golden instance B (initramfs-tools only): power cut mid re-encryption; the next boot finishes it, files intact; then TPM, no prompt."""

import os
import re
import subprocess

from harness import (
    BOOT_TIMEOUT,
    Failure,
    SEALROOT,
    copy_sparse,
    luks_json,
    need,
)
from cases import golden

TITLE = '11. golden instance B (initramfs-tools only): power cut mid re-encryption; the next boot finishes it, files intact; then TPM, no prompt'


def run(ctx):
    """Instance B (its own fresh vTPM): the first boot prints the files' checksum before
    any data moves (the image's files, through the image's key), starts
    finish-provisioning and, after 30% of instance A's pass time, waits until the next
    hotzone starts being rewritten (a data segment newly flagged in-reencryption in the
    header) and says so; QEMU is killed on that line (SIGKILL by PID: a power cut),
    with most of that hotzone's rewrite still to come. On the host the
    header must then show the cut: the online-reencrypt requirement, the hotzone
    flagged, data already under the new key before it, and `sealroot status` saying
    "interrupted". The next boot resumes from the initrd (provisioning key;
    libcryptsetup restores the torn hotzone from its checksums) and the booted root
    finishes: same checksum as before the cut and as instance A. The third boot unlocks
    with the TPM, no prompt."""
    g, gold = ctx.g, ctx.gold
    gold["b"] = b = os.path.join(gold["dir"], "b.img")
    copy_sparse(gold["image"], b)
    gold["tpm_b"] = state = os.path.join(gold["dir"], "tpm-b")
    os.makedirs(state)
    wait = round(max(5.0, 0.3 * gold.get("finish_seconds", 60)))
    text = g.boot("golden-b-cut", f"provision-crash {wait}", disk=b, tpm_state=state,
                  persist=True, kill_on="E2E-IN-HOTZONE", kill_after=0,
                  timeout=2 * BOOT_TIMEOUT)
    golden.first_boot_asserts(ctx, text)
    before = need(text, r"^E2E-SUMS-BEFORE ([0-9a-f]{64}) ", "checksum before").group(1)
    need(text, r"^E2E-IN-HOTZONE", "a hotzone in flight at the cut")
    if "E2E-FINISHED" in text:
        raise Failure("instance B finished re-encrypting before the power cut")
    meta = luks_json(b)
    reqs = meta["config"].get("requirements", {}).get("mandatory", [])
    segs = {k: (v["offset"], v["size"], v.get("flags", []))
            for k, v in sorted(meta["segments"].items())}
    print(f"  host after the cut: requirements {reqs}; segments (offset, size, flags) "
          f"{segs}", flush=True)
    if not any(r.startswith("online-reencrypt") for r in reqs):
        raise Failure(f"b.img after the cut: requirements {reqs}: not mid re-encryption")
    hot = [v for v in meta["segments"].values() if "in-reencryption" in v.get("flags", [])]
    first = int(meta["segments"]["0"]["offset"])
    if len(hot) != 1 or int(hot[0]["offset"]) <= first:
        raise Failure(f"b.img after the cut: segments {segs}: expected a hotzone in flight "
                      "after data already under the new key")
    gold["cut_done"] = int(hot[0]["offset"]) - first
    status = subprocess.run([SEALROOT, "status", b], capture_output=True, text=True)
    need(status.stdout, r"^re-encryption: interrupted", "sealroot status after the cut")
    print(f"  host: sealroot status b.img: "
          f"{need(status.stdout, r'^re-encryption: .*$', 'status').group(0)}", flush=True)
    text = golden.first_boot(ctx, "golden-b-resumed", b, state)
    after = need(text, r"^E2E-SUMS ([0-9a-f]{64}) ", "checksum after").group(1)
    gold["b_resumed"] = text
    if not (before == after == gold.get("sums_a", after)):
        raise Failure(f"file checksums differ: B before the cut {before}, B after {after}, "
                      f"A {gold.get('sums_a')}")
    gold["sums_b"] = after
    text = g.boot("golden-b-third", "check", disk=b, tpm_state=state)
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "TPM unlock")
    if re.search(r"^E2E-KMSG .*provisioning", text, re.M):
        raise Failure("the third boot provisioned again")
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
