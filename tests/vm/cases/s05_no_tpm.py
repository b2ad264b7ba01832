"""VM scenario: 5. no TPM -> stock prompt -> passphrase."""

from harness import (
    need,
)

TITLE = '5. no TPM -> stock prompt -> passphrase'


def run(ctx):
    g = ctx.g
    text = g.boot("no-tpm", "check", tpm=False, answer=g.passphrase)
    need(text, r"sealroot: .*TPM unavailable", "TPM absent message")
