"""VM scenario: 15. updates keep unlocking (initramfs-tools only): a local approval key; update-initramfs with a new command line approves the next boot from the booted system; an initrd swapped behind its back prompts."""

import os
import re
import shutil

from harness import (
    BOOT_TIMEOUT,
    Failure,
    copy_sparse,
    debugfs_dump,
    debugfs_replace,
    fence_before_prompt,
    live_pcrs,
    luks_tokens,
    make_boot_disk,
    need,
    save_eventlog,
    sha256_file,
    updated_initrd,
)

TITLE = '15. updates keep unlocking (initramfs-tools only): a local approval key; update-initramfs with a new command line approves the next boot from the booted system; an initrd swapped behind its back prompts'


def run(ctx):
    """Scenario 15 (initramfs-tools only): kernel, initrd and command line updates keep
    unlocking, approved from the booted system by a local policy key. A fresh copy of
    the guest's disk (the passphrase keyslot only, persisted across these boots) and a
    fresh vTPM. The guest's /boot is a separate unencrypted ext4 disk (/dev/vdc, made
    here from the guest root's /boot by mke2fs -d, writable); the harness is the boot
    loader: before each boot it reads vmlinuz-KVER, initrd.img-KVER and cmdline (the
    full -append string, the boot loader's configuration, which the guest keeps equal
    to /etc/kernel/cmdline) from that disk with debugfs and boots them directly.
    - boot 1: no token, the stock prompt, the passphrase; the booted root writes
      /etc/kernel/cmdline and /etc/default/sealroot (the hooks model QEMU's direct
      boot with 1 GiB) and enrolls `--local-approval --pcrs 4,9`;
    - boot 2: no prompt; status shows the local approval key loaded; the event log
      replays to the live PCRs 4, 7, 9 (saved as eventlog-updates.*); then a new
      command line (/etc/kernel/cmdline and /boot/cmdline) and an initramfs-tools
      configuration change, `update-initramfs -u`: its post-update hook approves the
      new boot (the approval in the header changes);
    - boot 3: the new kernel, initrd and command line unlock with no prompt;
      `update-approvals --prune` keeps this boot only;
    - boot 4: the initrd on the /boot disk replaced behind the hooks' back (one file
      appended): the stock prompt after the fence, the passphrase; status in the booted
      root says PCR 9 differs because of the initrd."""
    g = ctx.g
    d = os.path.join(g.work, "updates")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(g.guest, "kver")) as f:
        kver = f.read().strip()
    tree = os.path.join(d, "boot-tree")
    shutil.copytree(os.path.join(g.guest, "boot"), tree, symlinks=True)
    with open(os.path.join(tree, "cmdline"), "w") as f:
        f.write(g.cmdline + "\n")
    bootimg = os.path.join(d, "boot.img")
    make_boot_disk(tree, bootimg)
    shutil.rmtree(tree)
    disk = os.path.join(d, "disk.img")
    copy_sparse(os.path.join(g.guest, "disk.img"), disk)
    state = os.path.join(d, "tpm")
    os.makedirs(state)
    loaded = {}

    def load():
        """The boot loader: kernel, initrd and command line from the /boot disk."""
        n = loaded["n"] = loaded.get("n", 0) + 1
        k, i = os.path.join(d, f"vmlinuz.{n}"), os.path.join(d, f"initrd.{n}")
        c = os.path.join(d, f"cmdline.{n}")
        debugfs_dump(bootimg, f"/vmlinuz-{kver}", k)
        debugfs_dump(bootimg, f"/initrd.img-{kver}", i)
        debugfs_dump(bootimg, "/cmdline", c)
        with open(c) as f:
            cmdline = f.read().strip()
        loaded.update(kernel=k, initrd=i, cmdline=cmdline, initrd_sha=sha256_file(i))
        print(f"  /boot disk: vmlinuz-{kver} sha256 {sha256_file(k)[:16]}..., "
              f"initrd.img-{kver} sha256 {loaded['initrd_sha'][:16]}..., "
              f"cmdline {cmdline!r}", flush=True)

    def boot(name, mode, **kw):
        load()
        return g.boot(name, mode, disk=disk, tpm_state=state, persist=True,
                      extra=bootimg, extra_writable=True, kernel=loaded["kernel"],
                      initrd=loaded["initrd"], cmdline=loaded["cmdline"], **kw)

    def show(text, prefix):
        for m in re.finditer(rf"^{prefix}.*$", text, re.M):
            print(f"  {m.group(0)}", flush=True)

    def approvals():
        return [t for t in luks_tokens(disk) if t.get("type") == "sealroot-approval"]

    # Boot 1: the passphrase; enroll with a local approval key.
    text = boot("updates-enroll", "upd-enroll", answer=g.passphrase)
    show(text, "E2E-(ENROLLED|LOG|STATUS|BOOT)")
    need(text, r"^E2E-ENROLLED rc=0", "enroll --local-approval in the booted guest")
    types = sorted(t.get("type") for t in luks_tokens(disk))
    print(f"  host: tokens {types}", flush=True)
    first = approvals()
    if not first:
        raise Failure(f"no sealroot-approval token after enroll --local-approval: {types}")

    # Boot 2: unattended; the update.
    # update-initramfs under TCG: about 4 minutes on an idle host.
    text = boot("updates-update", "upd-update", timeout=3 * BOOT_TIMEOUT)
    show(text, "E2E-(STATUS|VERIFY|UPDATE|LOG|INITRD|APPROVAL)")
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "unlock, boot 2")
    need(text, r"^E2E-STATUS .*local approval key: loaded", "local key in the keyring")
    need(text, r"^E2E-VERIFY rc=0$", "predict --verify, boot 2")
    save_eventlog(text, g.work, "eventlog-updates", {
        "kernel": loaded["kernel"], "initrd": loaded["initrd"],
        "cmdline": loaded["cmdline"], "pcrs_sha256": live_pcrs(text)})
    need(text, r"^E2E-UPDATE-INITRAMFS rc=0 ", "update-initramfs -u with the hook")
    m = need(text, r"^E2E-INITRD before=(\S+) after=(\S+)", "initrd checksums")
    if m.group(1) == m.group(2):
        raise Failure("update-initramfs -u left the initrd unchanged")
    need(text, r"^E2E-APPROVAL-TOKEN present", "an approval token after the hook")
    second = approvals()
    print(f"  host: {len(second)} approval token(s) after the update", flush=True)
    if not second or second == first:
        raise Failure("the post-update hook did not replace the approval")
    old_initrd = loaded["initrd_sha"]

    # Boot 3: the new kernel, initrd and command line, no prompt; prune.
    text = boot("updates-new-boot", "upd-prune")
    show(text, "E2E-(CMDLINE|STATUS|PRUNED|LOG)")
    if "e2e.updated=1" not in loaded["cmdline"] or loaded["initrd_sha"] == old_initrd:
        raise Failure("the /boot disk does not hold the updated initrd and command line")
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "unlock, boot 3")
    need(text, r"^E2E-PRUNED rc=0", "update-approvals --prune")
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
    third = approvals()
    print(f"  host: {len(third)} approval token(s) after the prune", flush=True)
    if not third or third == second:
        raise Failure("update-approvals --prune did not replace the approval")

    # Boot 4: an initrd nobody approved.
    load()
    swapped = os.path.join(d, "initrd-swapped")
    digest = updated_initrd(loaded["initrd"], swapped)
    debugfs_replace(bootimg, swapped, f"/initrd.img-{kver}")
    print(f"  host: initrd.img-{kver} on the /boot disk replaced (sha256 "
          f"{digest[:16]}...)", flush=True)
    text = boot("updates-initrd-swapped", "upd-status", answer=g.passphrase)
    if loaded["initrd_sha"] != digest:
        raise Failure("the /boot disk does not hold the replaced initrd")
    show(text, "E2E-STATUS")
    fence_before_prompt(text)
    need(text, r"^E2E-STATUS .*PCR 9: the initrd differs from the approved one",
         "status names the initrd")
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after the prompt")
