"""VM scenario: enroll PCRs 4+9+fence from the booted guest."""

from harness import (
    need,
)

TITLE = 'enroll PCRs 4+9+fence from the booted guest'


def run(ctx):
    g = ctx.g
    # No token yet: sealroot finds nothing, cryptroot prompts, the real root enrolls.
    text = g.boot("enroll", "enroll", answer=g.passphrase, persist=True)
    need(text, r"^E2E-ENROLLED rc=0", "enrollment in the booted guest")
    g.recovery_key = need(text, r"^E2E-RECOVERY-KEY ([a-z-]{71})", "recovery key").group(1)
