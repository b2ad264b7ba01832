#!/usr/bin/python3
"""VM boot test: a Debian 12 or 13 guest with a LUKS2 root, its initrd built by mkinitramfs
or dracut with sealroot's hook, booted by QEMU (TCG, OVMF: kernel and initrd measured into
PCR 4, command line into PCR 9) with swtpm as its TPM. Each scenario asserts on the serial
console.

Usage: e2e.py GUEST_DIR WORK_DIR FLAVOUR [RELEASE]   (GUEST_DIR from build-guest.sh)
FLAVOUR: initramfs-tools, dracut-systemd or dracut-nosystemd; RELEASE: bookworm (default)
or trixie. Bookworm's initramfs-tools guest runs every scenario, its dracut guests the
core list; trixie's guests run the smoke list (see `main`).
Every process started here (qemu, swtpm) is stopped by its PID, also on failure.

One module per scenario in tests/vm/cases/ (`TITLE`, `run(ctx)`), run in the order below;
the QEMU + OVMF + swtpm driver and the host-side checks are in tests/vm/harness.py.
"""

import os
import re
import sys
import time

from harness import Failure, Guest
from cases import (
    pin,
    s00_enroll,
    s01_unattended,
    s02_changed_cmdline,
    s04_recovery_key,
    s05_no_tpm,
    s06_switched_off,
    s07_substituted_root,
    s08_offline_sealed,
    s09_golden_image,
    s10_golden_instance_a,
    s11_golden_instance_b,
    s12_golden_keys,
    s13_golden_recovery_and_figures,
    s14_signed_policy,
    s15_updates,
)


class Context:
    """What the scenarios share: the guest, the changed command line, the golden
    scenarios' state, and where this run is."""

    def __init__(self, guest_dir, work, flavour, release):
        self.guest_dir, self.work, self.flavour, self.release = guest_dir, work, flavour, release
        self.g = Guest(guest_dir, work, flavour)
        self.changed = self.g.cmdline + " e2e.changed=1"
        # Issue 13: one golden image, two instances (scenarios 9 to 13).
        self.gold = {}


def main():
    guest_dir, work, flavour = sys.argv[1], sys.argv[2], sys.argv[3]
    release = sys.argv[4] if len(sys.argv) > 4 else "bookworm"
    # CI's time allows every scenario once: all on bookworm with initramfs-tools; on the
    # other cases what differs by initrd generator and release (enrollment through the stock
    # prompt, the unattended unlock, a mismatch falling back to the stock prompt, the PIN
    # prompt), and on bookworm's dracut guests also no TPM and sealroot=off.
    full = flavour == "initramfs-tools" and release == "bookworm"
    core = release == "bookworm"
    os.makedirs(work, exist_ok=True)
    c = Context(guest_dir, work, flavour, release)
    # In order: later scenarios build on earlier ones (enrollment first; 7, 8 and 14 before
    # the PIN scenario, which replaces the reference token and whose PCR values 14 takes;
    # the golden image before its instances).
    steps = [
        (s00_enroll, True),
        (s01_unattended, True),
        (s02_changed_cmdline, True),
        (s04_recovery_key, full),
        (s05_no_tpm, core),
        (s06_switched_off, core),
        (s07_substituted_root, full),
        (s08_offline_sealed, full),
        (s14_signed_policy, full),
        (pin, True),
        (s09_golden_image, full),
        (s10_golden_instance_a, full),
        (s11_golden_instance_b, full),
        (s12_golden_keys, full),
        (s13_golden_recovery_and_figures, full),
        (s15_updates, full),
    ]
    # Development aid: E2E_ONLY=REGEX runs only the scenarios whose title matches (those
    # that need an earlier scenario's state fail without it).
    only = re.compile(os.environ["E2E_ONLY"]) if os.environ.get("E2E_ONLY") else None
    results = []
    try:
        for case, wanted in steps:
            if not wanted or (only is not None and not only.search(case.TITLE)):
                continue
            t = time.monotonic()
            case.run(c)
            results.append((case.TITLE, time.monotonic() - t))
            print(f"ok: {case.TITLE}", flush=True)
    except Failure as e:
        print(f"FAIL ({release}, {flavour}): {e}", file=sys.stderr)
        return 1
    print(f"e2e {release} {flavour}: all {len(results)} scenarios passed in "
          f"{sum(t for _, t in results):.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
