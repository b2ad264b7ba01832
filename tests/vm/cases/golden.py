"""What the golden-image scenarios (9 to 13) share: a golden instance's first boot and
the figures they print. State between them lives in the context's `gold`."""

import re

from harness import (
    BOOT_TIMEOUT,
    Failure,
    GUEST_CPU,
    GUEST_SMP,
    kmsg_time,
    need,
    uptime_at,
)


def first_boot(ctx, name, disk, state):
    """A golden instance's first boot in mode "provision": no prompt allowed, the
    initrd provisions, the booted root re-encrypts (finish-provisioning, as the systemd
    unit would) and prints the files' checksum. Returns the console log."""
    g = ctx.g
    text = g.boot(name, "provision", disk=disk, tpm_state=state, persist=True,
                  timeout=2 * BOOT_TIMEOUT)
    first_boot_asserts(ctx, text)
    need(text, r"^E2E-STATUS .*first-boot provisioning pending: done so far "
         r"\[new-key, sealed, escrowed, verified, reencrypt-started\]",
         "provisioning pending after the initrd")
    need(text, r"^E2E-STATUS re-encryption: in progress", "re-encryption set up")
    need(text, r"^E2E-FINISHED rc=0 ", "finish-provisioning in the booted root")
    after = "\n".join(re.findall(r"^E2E-STATUS-AFTER (.*)$", text, re.M))
    if "provisioning pending" in after or "re-encryption:" in after or not after:
        raise Failure(f"{name}: still pending after finish-provisioning:\n{after}")
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
    return text


def first_boot_asserts(ctx, text):
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+: (provisioning|resuming the provisioning "
         r"of) this instance", "provisioning in the initrd")
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+: this instance's keys are in place",
         "keys in place before the root")
    need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")


def golden_figures(ctx, cs, sr):
    """cs, sr: (seconds, bytes) of cryptsetup's and sealroot's offline passes."""
    gold = ctx.gold
    a1, a2 = gold["a_first"], gold["a_second"]
    fin = need(a1, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)", "finish time")
    online_seconds = float(fin.group(1))
    online_bytes = int(need(a1, r"^E2E-DATA-BYTES (\d+)", "data bytes").group(1))
    mib = 1024 * 1024

    def rate(seconds, nbytes):
        return (f"{nbytes / mib:.0f} MiB in {seconds:.1f}s = "
                f"{nbytes / mib / seconds:.2f} MiB/s")

    lines = [f"figures (guest under TCG, -cpu {GUEST_CPU}, {GUEST_SMP} vCPUs):"]
    root1, root2 = uptime_at(a1, "E2E-ROOT-REACHED"), uptime_at(a2, "E2E-ROOT-REACHED")
    lines.append(f"time to the root (guest uptime): first boot {root1:.1f}s, second "
                 f"boot {root2:.1f}s")
    s1 = kmsg_time(a1, "sealroot: starting")
    p1 = kmsg_time(a1, "keys are in place")
    s2, u2 = kmsg_time(a2, "sealroot: starting"), kmsg_time(a2, "unlocked as ")
    if None not in (s1, p1, s2, u2):
        lines.append(f"initrd, sealroot start -> root mapped: {p1 - s1:.2f}s provisioning "
                     f"(first boot), {u2 - s2:.2f}s TPM unlock (second boot)")
    lines.append(f"first boot's data pass (finish-provisioning, online, the mounted root): "
                 f"{rate(online_seconds, online_bytes)}")
    lines.append(f"same boot, offline, equal copies: cryptsetup reencrypt {rate(*cs)}; "
                 f"sealroot finish-provisioning {rate(*sr)}; time per byte "
                 f"sealroot/cryptsetup {(sr[0] / sr[1]) / (cs[0] / cs[1]):.2f}")
    b = gold.get("b_resumed")
    if b:
        fb = need(b, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)", "resumed finish time")
        lines.append(f"power cut with {gold['cut_done'] / mib:.0f} MiB done: the next "
                     f"boot's pass (the rest) took {float(fb.group(1)):.1f}s")
    sums = need(a1, r"^E2E-SUMS \S+ files=(\d+) seconds=([0-9.]+)", "sums")
    lines.append(f"file checksum in the guest: {sums.group(1)} files in "
                 f"{float(sums.group(2)):.1f}s")
    for line in lines:
        print(f"  {line}", flush=True)
