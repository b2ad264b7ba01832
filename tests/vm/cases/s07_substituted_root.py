"""VM scenario: 7. substituted root with the victim's UUID and a fenceless token: fenced before the prompt, the real key stays sealed."""

import json
import os
import subprocess
import uuid

from harness import (
    fence_before_prompt,
    need,
    sealroot_token,
)

TITLE = "7. substituted root with the victim's UUID and a fenceless token: fenced before the prompt, the real key stays sealed"


def run(ctx):
    g = ctx.g
    # The attacker's disk: the victim's LUKS UUID, a passphrase the attacker knows, and a
    # copy of the victim's token edited to have no fence (here a copy of the victim's
    # disk, so the token would even open it). The victim's real header rides along as
    # /dev/vdc: what the attacker's root asks the TPM to unseal after the prompt.
    attacker = os.path.join(g.work, "attacker.img")
    subprocess.run(["cp", "--sparse=always", g.disk, attacker], check=True)
    tid, token = sealroot_token(attacker)
    token["fence_pcr"] = None
    subprocess.run(["cryptsetup", "token", "import", "--token-replace", "--token-id",
                    str(tid), attacker], input=json.dumps(token), text=True, check=True)
    attacker_pass = os.path.join(g.work, "attacker-pass")
    with open(attacker_pass, "w") as f:
        f.write("attacker passphrase")
    subprocess.run(["cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--key-file",
                    os.path.join(g.guest, "passphrase"), attacker, attacker_pass],
                   check=True)
    real = os.path.join(g.work, "real.hdr")
    if os.path.exists(real):
        os.unlink(real)
    subprocess.run(["cryptsetup", "luksHeaderBackup", g.disk, "--header-backup-file",
                    real], check=True)
    subprocess.run(["cryptsetup", "luksUUID", "-q", "--uuid", str(uuid.uuid4()), real],
                   check=True)
    try:
        text = g.boot("substituted-root", "attack", disk=attacker, extra=real,
                      answer="attacker passphrase")
    finally:
        os.unlink(attacker)
    need(text, r"sealroot: .*refused: it is sealed without a fence", "fenceless token refused")
    fence_before_prompt(text)
    need(text, r"^E2E-ATTACK rc=5", "the real key stays sealed in the attacker's root")
