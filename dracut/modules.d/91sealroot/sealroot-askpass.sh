#!/bin/sh
# Asks for a PIN the way this initrd asks for passphrases; prints it on stdout.
prompt=${1:-PIN: }
if command -v plymouth >/dev/null 2>&1 && plymouth --ping 2>/dev/null; then
    exec plymouth ask-for-password --prompt "$prompt"
fi
if command -v systemd-ask-password >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    exec systemd-ask-password --timeout=0 "$prompt"
fi
# Plain console: no echo while typing; the PIN goes to the caller's stdout (fd 3).
exec 3>&1 </dev/console >/dev/console 2>&1 || exit 1
# Echo comes back however this ends (Ctrl-C, a kill from a timeout).
trap 'stty echo 2>/dev/null' EXIT
trap 'exit 1' INT TERM HUP
printf '%s' "$prompt"
stty -echo 2>/dev/null
# IFS= keeps leading and trailing blanks: they are part of the PIN.
IFS= read -r pin
echo
printf '%s\n' "$pin" >&3
