"""VM scenario: 9. golden image (initramfs-tools only): provisioned on the host, escrow to an age recipient."""

import os
import shutil

from harness import (
    Failure,
    SEALROOT,
    check_run,
    copy_sparse,
    has_ext4_magic,
    luks_tokens,
    opens_image,
    volume_key,
)

TITLE = '9. golden image (initramfs-tools only): provisioned on the host, escrow to an age recipient'


def run(ctx):
    """The builder's side, on the host: a copy of the guest's pristine disk (the
    passphrase keyslot only) marked by `sealroot provision --pcrs 4,9 --escrow` with
    the recipient of an age identity made here. No TPM, no device-mapper. The
    provisioning key, in the header in clear, opens the image (the control for the
    checks that it opens no instance)."""
    g, gold = ctx.g, ctx.gold
    if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
        raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
    d = os.path.join(g.work, "golden")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    gold["dir"] = d
    gold["image"] = image = os.path.join(d, "golden.img")
    copy_sparse(os.path.join(g.guest, "disk.img"), image)
    gold["identity"] = identity = os.path.join(d, "builder.age")
    check_run(["age-keygen", "-o", identity], "age-keygen")
    recipient = check_run(["age-keygen", "-y", identity], "age-keygen -y",
                          text=True).stdout.strip()
    out = check_run([SEALROOT, "provision", image, "--unlock-key-file", g.passfile,
                     "--pcrs", "4,9", "--escrow", recipient], "sealroot provision",
                    text=True)
    print(f"  host: {out.stderr.strip().splitlines()[-1]}; escrow to {recipient}",
          flush=True)
    tokens = [t for t in luks_tokens(image) if t.get("type") == "sealroot-provision"]
    if len(tokens) != 1:
        raise Failure(f"golden.img has {len(tokens)} provision tokens")
    gold["provisioning_key"] = key = os.path.join(d, "provisioning.key")
    with open(key, "w") as f:
        f.write(tokens[0]["provisioning_key"])
    ok, msg = opens_image(image, key)
    if not ok:
        raise Failure(f"the provisioning key does not open the golden image: {msg}")
    gold["image_vk"] = volume_key(image, g.passfile)
    if not has_ext4_magic(image, gold["image_vk"]):
        raise Failure("the golden image's first sector, decrypted with its own key, is "
                      "not an ext4 superblock: the sector check below would prove nothing")
