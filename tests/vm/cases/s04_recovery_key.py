"""VM scenario: 4. PCR mismatch -> stock prompt -> recovery key."""

from harness import (
    need,
)

TITLE = '4. PCR mismatch -> stock prompt -> recovery key'


def run(ctx):
    g, changed = ctx.g, ctx.changed
    text = g.boot("recovery-key", "check", cmdline=changed, answer=g.recovery_key)
    need(text, r"sealroot: .*PCR policy mismatch", "mismatch before recovery")
