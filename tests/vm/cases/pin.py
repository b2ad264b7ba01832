"""VM scenario: PIN asked through the initrd's prompt: wrong, then right."""

from harness import (
    PIN,
    need,
)

TITLE = "PIN asked through the initrd's prompt: wrong, then right"


def run(ctx):
    g = ctx.g
    text = g.boot("enroll-pin", "enroll-pin", persist=True)
    need(text, r"^E2E-ENROLLED rc=0", "PIN enrollment")
    # A wrong PIN first: asked again (up to 3 tries), then the right one; no passphrase.
    text = g.boot("pin", "check", pins=["1111", PIN])
    need(text, r"sealroot: wrong PIN, try again", "retry after a wrong PIN")
    need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "unlock with the PIN")
