"""VM scenario: 1. unlock with no prompt; 3. the fence holds in the booted root."""

import re

from harness import (
    kmsg_time,
    need,
)

TITLE = '1. unlock with no prompt; 3. the fence holds in the booted root'


def run(ctx):
    g = ctx.g
    text = g.boot("unlock", "check verify")
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "sealroot unlock")
    need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
    # Scenario 3: from the booted root the key no longer unseals.
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
    need(text, r"^E2E-LOG sealroot: .*fence PCR 15 is already extended", "fence message")
    start, done = kmsg_time(text, "sealroot: starting"), kmsg_time(text, "unlocked as ")
    stock = need(text, r"^E2E-PASSPHRASE-CHECK rc=0 seconds=([0-9.]+)", "stock").group(1)
    luks = need(text, r"^E2E-RECOVER-CHECK rc=0 seconds=([0-9.]+)", "recover").group(1)
    ready = kmsg_time(text, "sealroot: devices ready")
    # The firmware's event log, replayed by `sealroot predict --verify`, accounts for
    # the live PCRs 4, 7 and 9.
    for line in re.findall(r"^E2E-VERIFY.*$", text, re.M):
        print(f"  {line}", flush=True)
    need(text, r"^E2E-VERIFY rc=0$", "predict --verify in the booted root")
    for p in (4, 7, 9):
        need(text, rf"^E2E-VERIFY-OUT PCR {p}: the log replays to the live value$",
             f"PCR {p} replayed by predict --verify")
    if start is not None and done is not None:
        print(f"  timing (guest under TCG): sealroot script start -> mapping ready "
              f"{done - start:.3f}s, of which waiting for disk and TPM "
              f"{(ready or start) - start:.3f}s; stock path without typing (cryptsetup "
              f"checking the passphrase keyslot) {float(stock):.3f}s; sealroot doing the "
              f"same LUKS2 work without the TPM {float(luks):.3f}s", flush=True)
