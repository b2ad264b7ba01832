"""VM scenario: 2. command line changed: PCR 9 mismatch -> stock prompt -> passphrase."""

from harness import (
    fence_before_prompt,
    need,
)

TITLE = '2. command line changed: PCR 9 mismatch -> stock prompt -> passphrase'


def run(ctx):
    g, changed = ctx.g, ctx.changed
    text = g.boot("cmdline-changed", "check", cmdline=changed, answer=g.passphrase)
    need(text, r"sealroot: .*PCR policy mismatch: sha256 PCR 9 differs", "PCR 9 mismatch")
    fence_before_prompt(text)
