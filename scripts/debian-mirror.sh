#!/bin/sh
# Prints the Debian archive mirror this machine's apt uses for bookworm main, read from its
# sources with apt-get indextargets, so chroots and deb-src lists follow a local mirror.
# SEALROOT_DEBIAN_MIRROR overrides it. Exits 1 with a message when apt names none.
set -eu

if [ -n "${SEALROOT_DEBIAN_MIRROR:-}" ]; then
    echo "$SEALROOT_DEBIAN_MIRROR"
    exit 0
fi

# Entries are matched on the suite as written in the sources (no Release file needed),
# then on the codename apt learnt from the Release file ("oldstable", "stable" entries).
# Security and -updates suites have other names, so they never match.
pick() {
    apt-get indextargets $1 --format '$(TARGET_OF) $(COMPONENT) $(RELEASE) $(CODENAME) $(SITE)' 2>/dev/null |
        awk -v field="$2" '$1 == "deb" && $2 == "main" && $field == "bookworm" { print $NF; exit }'
}
mirror=$(pick --no-release-info 3)
[ -n "$mirror" ] || mirror=$(pick "" 4)

if [ -z "$mirror" ]; then
    echo "debian-mirror: apt has no 'deb' source for bookworm main; add one to" \
        "/etc/apt/sources.list(.d) or set SEALROOT_DEBIAN_MIRROR to the archive's URL" >&2
    exit 1
fi
echo "${mirror%/}"
