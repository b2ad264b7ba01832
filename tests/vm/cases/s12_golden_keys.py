"""VM scenario: 12. golden instances on the host (initramfs-tools only): provisioning key opens neither; keys differ; the image key no longer decrypts; escrows decrypt with age."""

import os
import re

from harness import (
    Failure,
    SEALROOT,
    check_run,
    has_ext4_magic,
    luks_json,
    opens_image,
    plaintext_digest,
    volume_key,
)

TITLE = '12. golden instances on the host (initramfs-tools only): provisioning key opens neither; keys differ; the image key no longer decrypts; escrows decrypt with age'


def run(ctx):
    """On the host, on the instances' disk images: the provisioning key (read from the
    golden image's token) and the builder's passphrase open neither instance (they do
    open the golden image); each instance's escrow (`sealroot escrow show`), decrypted
    with `age -d -i` and the builder's identity, opens that instance and not the other;
    the volume keys of the image, A and B all differ; the image's key no longer
    decrypts an instance's first data sector (an ext4 superblock with the instance's
    own key, and with the image's key on the golden image); and each instance's whole
    data segment, decrypted with its own key, is byte for byte the image's."""
    g, gold = ctx.g, ctx.gold
    d, image = gold["dir"], gold["image"]
    for label in ("a", "b"):
        img = gold[label]
        for key, what in ((gold["provisioning_key"], "the provisioning key"),
                          (g.passfile, "the builder's passphrase")):
            ok, msg = opens_image(img, key)
            if ok:
                raise Failure(f"{what} still opens instance {label.upper()}")
            print(f"  host: {what} on {label}.img: {msg}", flush=True)
        escrow = check_run([SEALROOT, "escrow", "show", img], f"escrow show {label}.img",
                           text=True).stdout
        with open(os.path.join(d, f"escrow-{label}.age"), "w") as f:
            f.write(escrow)
        rec = check_run(["age", "-d", "-i", gold["identity"],
                         os.path.join(d, f"escrow-{label}.age")], f"age -d ({label})").stdout
        if not re.fullmatch(rb"[a-z-]{71}\n?", rec):
            raise Failure(f"the escrow of {label} does not decrypt to a recovery key")
        gold[f"recovery_{label}"] = rec.decode().strip()
        gold[f"recovery_{label}_file"] = rf = os.path.join(d, f"recovery-{label}.key")
        with open(rf, "wb") as f:
            f.write(rec)
        ok, msg = opens_image(img, rf)
        if not ok:
            raise Failure(f"instance {label.upper()}'s escrowed key does not open it: {msg}")
        meta = luks_json(img)
        if meta["config"].get("requirements") or len(meta["keyslots"]) != 2 or any(
                t["type"] == "sealroot-provision" for t in meta["tokens"].values()):
            raise Failure(f"{label}.img: keyslots {sorted(meta['keyslots'])}, tokens "
                          f"{[t['type'] for t in meta['tokens'].values()]}, requirements "
                          f"{meta['config'].get('requirements')}: not finished")
        print(f"  host: {label}.img keyslots {sorted(meta['keyslots'])}, tokens "
              f"{sorted(t['type'] for t in meta['tokens'].values())}; recovery key "
              f"from its escrow: {msg}", flush=True)
    for label, other in (("a", "b"), ("b", "a")):
        ok, _ = opens_image(gold[label], gold[f"recovery_{other}_file"])
        if ok:
            raise Failure(f"instance {other.upper()}'s recovery key opens {label}.img")
    vk_image = gold["image_vk"]
    vk_a = volume_key(gold["a"], gold["recovery_a_file"])
    vk_b = volume_key(gold["b"], gold["recovery_b_file"])
    if len({vk_image, vk_a, vk_b}) != 3:
        raise Failure("two of the volume keys (image, A, B) are the same")
    print(f"  host: volume keys ({len(vk_a) * 8} bits) of the image, A and B all differ",
          flush=True)
    for label, vk in (("a", vk_a), ("b", vk_b)):
        if not has_ext4_magic(gold[label], vk):
            raise Failure(f"{label}.img's first data sector, decrypted with its own key, "
                          "is not an ext4 superblock")
        if has_ext4_magic(gold[label], vk_image):
            raise Failure(f"the image's old volume key still decrypts {label}.img")
    print("  host: first data sector + AES-XTS: ext4 magic 0xEF53 at byte 1080 with "
          "golden.img/image key, a.img/A's key, b.img/B's key; not with the image's key "
          "on a.img or b.img", flush=True)
    digests = {"image": plaintext_digest(image, vk_image),
               "a": plaintext_digest(gold["a"], vk_a),
               "b": plaintext_digest(gold["b"], vk_b)}
    if len(set(digests.values())) != 1:
        raise Failure(f"decrypted data segments differ: {digests}")
    print(f"  host: whole data segment decrypted: golden, A and B identical "
          f"(sha256 {digests['a'][:16]}...)", flush=True)
