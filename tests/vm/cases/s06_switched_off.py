"""VM scenario: 6. sealroot=off: stock prompt, and the fence holds in the booted root."""

from harness import (
    fence_before_prompt,
    need,
)

TITLE = '6. sealroot=off: stock prompt, and the fence holds in the booted root'


def run(ctx):
    g = ctx.g
    # sealroot=off skips the unlock, not the fence.
    text = g.boot("sealroot-off", "check", cmdline=g.cmdline + " sealroot=off",
                  answer=g.passphrase)
    fence_before_prompt(text)
    need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after sealroot=off")
