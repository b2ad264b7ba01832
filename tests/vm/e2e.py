#!/usr/bin/python3
"""VM boot test: a Debian 12 guest with a LUKS2 root, its initrd built by mkinitramfs with
sealroot's hook, booted by QEMU (TCG, OVMF: kernel and initrd measured into PCR 4, command
line into PCR 9) with swtpm as its TPM. Each scenario asserts on the serial console.

Usage: e2e.py GUEST_DIR WORK_DIR FLAVOUR   (GUEST_DIR from build-guest.sh)
FLAVOUR: initramfs-tools, dracut-systemd or dracut-nosystemd.
Every process started here (qemu, swtpm) is stopped by its PID, also on failure.
"""

import base64
import json
import os
import re
import socket
import uuid
import shutil
import signal
import subprocess
import sys
import time

import pexpect

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
BASE_CMDLINE = "ro console=ttyS0 panic=-1 init=/sbin/e2e-init"
# The stock prompts: cryptroot (initramfs-tools), systemd-cryptsetup via systemd's password
# agent, dracut's cryptroot-ask.
PROMPT = re.compile(
    r"(Please unlock disk \S+:|Please enter passphrase for disk [^\n]*?:|Enter passphrase for \S+:"
    r"|Password \([^)]*\):)")
# sealroot's own PIN prompt, through the initrd's askpass (console, plymouth or systemd).
PIN_PROMPT = re.compile(r"TPM PIN for \S+ \(\S+\):")
PIN = "2468"
INITRD = {
    "initramfs-tools": "initrd.img",
    "dracut-systemd": "initrd-systemd.img",
    "dracut-nosystemd": "initrd-nosystemd.img",
}
# The host's sealroot, for sealing offline: the static binary the guest's `make install`
# took (run.sh passes its path; by default the one in this repository's target/).
SEALROOT = os.environ.get("E2E_SEALROOT") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "static", "sealroot")
BOOT_TIMEOUT = int(os.environ.get("E2E_BOOT_TIMEOUT", "300"))
# `make demo`: show what each boot printed that matters, not just ok/FAIL.
SHOW = os.environ.get("E2E_SHOW") == "1"
SHOWN = re.compile(r"^(sealroot: |Please unlock disk|cryptsetup: |E2E-(ROOT-REACHED|FENCE-CHECK|ENROLLED|LOG))")


class Failure(Exception):
    pass


class Guest:
    def __init__(self, guest_dir, work, flavour):
        self.guest = guest_dir
        self.work = work
        self.initrd = os.path.join(guest_dir, INITRD[flavour])
        with open(os.path.join(guest_dir, "cmdline")) as f:
            self.cmdline = f.read().strip() + " " + BASE_CMDLINE
        # Each flavour enrolls against its own initrd's PCRs: give it its own disk.
        self.disk = os.path.join(work, "disk.img")
        subprocess.run(["cp", "--sparse=always", os.path.join(guest_dir, "disk.img"), self.disk],
                       check=True)
        self.tpm_state = os.path.join(work, "tpm")
        os.makedirs(self.tpm_state, exist_ok=True)
        self.vars = os.path.join(work, "OVMF_VARS.fd")
        shutil.copyfile(OVMF_VARS, self.vars)
        with open(os.path.join(guest_dir, "passphrase")) as f:
            self.passphrase = f.read()
        self.recovery_key = None
        self.boots = 0

    def boot(self, name, mode, cmdline=None, tpm=True, answer=None, persist=False, pins=(),
             disk=None, extra=None, tpm_state=None):
        """Boots once. `answer`: what to type at the passphrase prompt (None: a prompt is a
        failure); `pins`: what to type at successive PIN prompts (more prompts than answers
        is a failure); `disk`: another root disk; `extra`: a third disk (/dev/vdc, read
        only); `tpm_state`: another vTPM's state directory (another instance). Returns the
        serial log with carriage returns removed."""
        self.boots += 1
        cmdline = cmdline or self.cmdline
        disk = disk or self.disk
        tpm_state = tpm_state or self.tpm_state
        log_path = os.path.join(self.work, f"{self.boots:02d}-{name}.log")
        mode_img = os.path.join(self.work, "mode.img")
        with open(mode_img, "wb") as f:
            f.write(mode.encode().ljust(4096, b"\0"))
        swtpm = None
        # One control socket per TPM state.
        sock = os.path.join(self.work,
                            f"swtpm-{os.getpid()}-{os.path.basename(tpm_state)}.sock")
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-m", "1024", "-smp", "1",
            "-machine", "q35", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-no-reboot", "-net", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            "-kernel", os.path.join(self.guest, "vmlinuz"),
            "-initrd", self.initrd,
            "-append", cmdline,
            "-drive", "file=%s,format=raw,if=virtio%s"
            % (disk, "" if persist else ",snapshot=on"),
            "-drive", f"file={mode_img},format=raw,if=virtio,readonly=on",
        ]
        if extra:
            cmd += ["-drive", f"file={extra},format=raw,if=virtio,readonly=on"]
        if tpm:
            if os.path.exists(sock):
                os.unlink(sock)
            swtpm = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_state}",
                 "--ctrl", f"type=unixio,path={sock}", "--terminate"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            else:
                swtpm.kill()
                raise Failure("swtpm did not start")
            cmd += ["-chardev", f"socket,id=chrtpm,path={sock}",
                    "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                    "-device", "tpm-crb,tpmdev=tpm0"]
        started = time.monotonic()
        child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace",
                              timeout=BOOT_TIMEOUT)
        # logfile_read only: what we type (a passphrase) never reaches the log.
        log = open(log_path, "w")
        child.logfile_read = log
        prompts = 0
        pins = list(pins)
        pin_prompts = 0
        # After typing a PIN, a prompt line is only a new question once sealroot has said
        # the PIN was wrong (systemd's agent also redraws the line it is asking on).
        awaiting_verdict = False
        prompt_while_awaiting = False
        try:
            while True:
                i = child.expect([PROMPT, "E2E-POWEROFF", pexpect.EOF, pexpect.TIMEOUT,
                                  PIN_PROMPT, "sealroot: wrong PIN"])
                if i == 5:
                    awaiting_verdict = False
                    # The console may show the new prompt before the verdict line.
                    if prompt_while_awaiting and pins:
                        child.sendline(pins.pop(0))
                        awaiting_verdict, prompt_while_awaiting = True, False
                elif i == 4:
                    pin_prompts += 1
                    # A prompt that really waits for more than we have ends in the boot
                    # timeout, which fails the test.
                    if pins and not awaiting_verdict:
                        child.sendline(pins.pop(0))
                        awaiting_verdict, prompt_while_awaiting = True, False
                    elif awaiting_verdict:
                        prompt_while_awaiting = True
                elif i == 0:
                    prompts += 1
                    if answer is None:
                        raise Failure(f"{name}: unexpected passphrase prompt")
                    if prompts > 1:
                        raise Failure(f"{name}: prompted again: the typed secret was refused")
                    child.sendline(answer)
                elif i == 1:
                    child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=30)
                    break
                elif i == 2:
                    break
                else:
                    raise Failure(f"{name}: no power-off within {BOOT_TIMEOUT}s")
        finally:
            stop(child.pid)
            child.close(force=True)
            if swtpm is not None:
                stop(swtpm.pid)
                swtpm.wait()
            log.close()
        text = open(log_path, encoding="utf-8", errors="replace").read().replace("\r", "")
        print(f"  {name}: {time.monotonic() - started:.0f}s, log {log_path}", flush=True)
        if SHOW:
            for line in text.splitlines():
                line = re.sub(r"^.*?(?=sealroot: |Please unlock)", "", line) if "sealroot: " in line or "Please unlock" in line else line
                if SHOWN.match(line):
                    print(f"    | {line}", flush=True)
        if answer is not None and prompts == 0:
            raise Failure(f"{name}: expected the passphrase prompt, none appeared")
        if pins:
            raise Failure(f"{name}: {len(pins)} expected PIN prompt(s) did not appear")
        if "E2E-ROOT-REACHED" not in text:
            raise Failure(f"{name}: the real root was not reached")
        return text


def stop(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port_pair():
    """A TCP port P on 127.0.0.1 with P+1 also free (swtpm: commands on P, control on
    P+1)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise Failure("no free pair of TCP ports for swtpm")


def new_vtpm(state, srk_pub):
    """A new instance's vTPM before its first boot: a fresh swtpm state in `state`, its SRK
    created and persisted by the host's `sealroot srk-public`, which writes the SRK's
    TPM2B_PUBLIC to `srk_pub`. Returns the SRK's Name as sealroot printed it."""
    os.makedirs(state)
    port = free_port_pair()
    swtpm = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if swtpm.poll() is not None:
                raise Failure(f"swtpm on {state} exited ({swtpm.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise Failure(f"swtpm on {state} did not listen on port {port}")
        out = subprocess.run([SEALROOT, "srk-public", "--out", srk_pub,
                              "--tcti", f"swtpm:host=127.0.0.1,port={port}"],
                             capture_output=True, text=True)
    finally:
        # By its PID; SIGTERM lets swtpm exit cleanly (it writes its state as the TPM
        # changes it, so the persisted SRK is already on disk).
        try:
            swtpm.terminate()
            swtpm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(swtpm.pid)
            swtpm.wait()
    if out.returncode != 0:
        raise Failure(f"sealroot srk-public on {state}: rc={out.returncode}: "
                      f"{out.stderr.strip()}")
    return need(out.stderr, r"storage root key 0x81000001, Name ([0-9a-f]{68})",
                "srk-public's Name").group(1)


def sealroot_token(image):
    """(token id, token) of the first sealroot token on a LUKS2 image."""
    for tid in range(32):
        out = subprocess.run(["cryptsetup", "token", "export", "--token-id", str(tid), image],
                             capture_output=True, text=True)
        if out.returncode == 0 and json.loads(out.stdout).get("type") == "sealroot":
            return tid, json.loads(out.stdout)
    raise Failure(f"no sealroot token on {image}")


def need(text, pattern, what):
    m = re.search(pattern, text, re.M)
    if not m:
        raise Failure(f"{what}: /{pattern}/ not in the console log")
    return m


def kmsg_time(text, pattern):
    """Kernel timestamp of the first E2E-KMSG line matching pattern."""
    m = re.search(r"^E2E-KMSG \[\s*([0-9.]+)\][^\n]*" + pattern, text, re.M)
    return float(m.group(1)) if m else None


def main():
    guest_dir, work, flavour = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    g = Guest(guest_dir, work, flavour)
    changed = g.cmdline + " e2e.changed=1"
    results = []

    def scenario(title, fn):
        t = time.monotonic()
        fn()
        results.append((title, time.monotonic() - t))
        print(f"ok: {title}", flush=True)

    def enroll():
        # No token yet: sealroot finds nothing, cryptroot prompts, the real root enrolls.
        text = g.boot("enroll", "enroll", answer=g.passphrase, persist=True)
        need(text, r"^E2E-ENROLLED rc=0", "enrollment in the booted guest")
        g.recovery_key = need(text, r"^E2E-RECOVERY-KEY ([a-z-]{71})", "recovery key").group(1)

    def unattended():
        text = g.boot("unlock", "check")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "sealroot unlock")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
        # Scenario 3: from the booted root the key no longer unseals.
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        need(text, r"^E2E-LOG sealroot: .*fence PCR 15 is already extended", "fence message")
        start, done = kmsg_time(text, "sealroot: starting"), kmsg_time(text, "unlocked as ")
        stock = need(text, r"^E2E-PASSPHRASE-CHECK rc=0 seconds=([0-9.]+)", "stock").group(1)
        luks = need(text, r"^E2E-RECOVER-CHECK rc=0 seconds=([0-9.]+)", "recover").group(1)
        ready = kmsg_time(text, "sealroot: devices ready")
        if start is not None and done is not None:
            print(f"  timing (guest under TCG): sealroot script start -> mapping ready "
                  f"{done - start:.3f}s, of which waiting for disk and TPM "
                  f"{(ready or start) - start:.3f}s; stock path without typing (cryptsetup "
                  f"checking the passphrase keyslot) {float(stock):.3f}s; sealroot doing the "
                  f"same LUKS2 work without the TPM {float(luks):.3f}s", flush=True)

    def changed_cmdline():
        text = g.boot("cmdline-changed", "check", cmdline=changed, answer=g.passphrase)
        need(text, r"sealroot: .*PCR policy mismatch: sha256 PCR 9 differs", "PCR 9 mismatch")
        fence_before_prompt(text)

    def recovery_key():
        text = g.boot("recovery-key", "check", cmdline=changed, answer=g.recovery_key)
        need(text, r"sealroot: .*PCR policy mismatch", "mismatch before recovery")

    def no_tpm():
        text = g.boot("no-tpm", "check", tpm=False, answer=g.passphrase)
        need(text, r"sealroot: .*TPM unavailable", "TPM absent message")

    def pin():
        text = g.boot("enroll-pin", "enroll-pin", persist=True)
        need(text, r"^E2E-ENROLLED rc=0", "PIN enrollment")
        # A wrong PIN first: asked again (up to 3 tries), then the right one; no passphrase.
        text = g.boot("pin", "check", pins=["1111", PIN])
        need(text, r"sealroot: wrong PIN, try again", "retry after a wrong PIN")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "unlock with the PIN")

    def switched_off():
        # sealroot=off skips the unlock, not the fence.
        text = g.boot("sealroot-off", "check", cmdline=g.cmdline + " sealroot=off",
                      answer=g.passphrase)
        fence_before_prompt(text)
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after sealroot=off")

    def substituted_root():
        # The attacker's disk: the victim's LUKS UUID, a passphrase the attacker knows, and a
        # copy of the victim's token edited to have no fence (here a copy of the victim's
        # disk, so the token would even open it). The victim's real header rides along as
        # /dev/vdc: what the attacker's root asks the TPM to unseal after the prompt.
        attacker = os.path.join(g.work, "attacker.img")
        subprocess.run(["cp", "--sparse=always", g.disk, attacker], check=True)
        tid, token = sealroot_token(attacker)
        token["fence_pcr"] = None
        subprocess.run(["cryptsetup", "token", "import", "--token-replace", "--token-id",
                        str(tid), attacker], input=json.dumps(token), text=True, check=True)
        attacker_pass = os.path.join(g.work, "attacker-pass")
        with open(attacker_pass, "w") as f:
            f.write("attacker passphrase")
        subprocess.run(["cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2",
                        "--pbkdf-force-iterations", "1000", "--key-file",
                        os.path.join(g.guest, "passphrase"), attacker, attacker_pass],
                       check=True)
        real = os.path.join(g.work, "real.hdr")
        if os.path.exists(real):
            os.unlink(real)
        subprocess.run(["cryptsetup", "luksHeaderBackup", g.disk, "--header-backup-file",
                        real], check=True)
        subprocess.run(["cryptsetup", "luksUUID", "-q", "--uuid", str(uuid.uuid4()), real],
                       check=True)
        try:
            text = g.boot("substituted-root", "attack", disk=attacker, extra=real,
                          answer="attacker passphrase")
        finally:
            os.unlink(attacker)
        need(text, r"sealroot: .*refused: it is sealed without a fence", "fenceless token refused")
        fence_before_prompt(text)
        need(text, r"^E2E-ATTACK rc=5", "the real key stays sealed in the attacker's root")

    def offline_sealed():
        """Issue 12: a new instance's disk sealed offline on the host before its first
        boot, for that instance's vTPM alone. (initramfs-tools only: the host side is the
        same for every flavour, and each boot costs about a minute of CI time.)

        The PCR values come from a reference boot of the same image under another TPM
        state: those the online "enroll" boot recorded on g.disk under state A (PCRs 4 and
        9 are OVMF's measurements of the same kernel, initrd and command line, whatever
        the TPM; enroll adds the fence PCR 15 at zeros itself). Instance B: a fresh swtpm
        state whose SRK `srk-public` creates; a pristine copy of the guest's disk
        (passphrase keyslot only) sealed to B's SRK public area with `enroll --srk-public
        --pcr-values`, no TPM opened. Booted with B it unlocks with no prompt and the
        fence holds in the booted root. The same disk booted with instance C's vTPM (its
        own SRK) is refused before any session: the stock prompt, after the fence.

        The guest's initrd pins no SRK Name (build-guest.sh writes no sealroot.conf), as a
        golden image sealed per instance must not: a pinned Name is one instance's."""
        _, ref = sealroot_token(g.disk)
        if ref.get("tpm2_pcr_bank") != "sha256" or sorted(ref["tpm2_pcrs"]) != [4, 9, 15]:
            raise Failure(f"the reference token binds {ref.get('tpm2_pcr_bank')} PCRs "
                          f"{ref.get('tpm2_pcrs')}, not sha256 PCRs 4, 9 and the fence")
        spec = ",".join(f"{p}:sha256={ref['tpm2_pcr_values'][p]}" for p in ("4", "9"))
        if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
            raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
        state_b, state_c = os.path.join(g.work, "tpm-b"), os.path.join(g.work, "tpm-c")
        srk_b, srk_c = os.path.join(g.work, "srk-b.pub"), os.path.join(g.work, "srk-c.pub")
        name_b = new_vtpm(state_b, srk_b)
        name_c = new_vtpm(state_c, srk_c)
        if name_b == name_c:
            raise Failure("two fresh vTPMs have the same SRK")
        disk = os.path.join(g.work, "offline.img")
        subprocess.run(["cp", "--sparse=always", os.path.join(g.guest, "disk.img"), disk],
                       check=True)
        try:
            out = subprocess.run([SEALROOT, "enroll", disk, "--srk-public", srk_b,
                                  "--pcr-values", spec, "--unlock-key-file",
                                  os.path.join(g.guest, "passphrase")],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise Failure(f"offline enroll: rc={out.returncode}: {out.stderr.strip()}")
            print(f"  host: {out.stderr.strip()}; PCRs {spec}; SRK of B {name_b}, of C "
                  f"{name_c}", flush=True)
            _, token = sealroot_token(disk)
            with open(srk_b, "rb") as f:
                if base64.b64decode(token["tpm2_srk_public"]) != f.read():
                    raise Failure("the offline token does not record instance B's SRK")
            if any(token["tpm2_pcr_values"].get(p) != ref["tpm2_pcr_values"][p]
                   for p in ("4", "9", "15")):
                raise Failure(f"the offline token's PCR values {token['tpm2_pcr_values']} "
                              f"are not the reference boot's {ref['tpm2_pcr_values']}")
            text = g.boot("offline-sealed", "check", disk=disk, tpm_state=state_b)
            need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "offline-sealed unlock")
            need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
            need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
            need(text, r"^E2E-LOG sealroot: .*fence PCR 15 is already extended",
                 "fence message")
            text = g.boot("offline-other-vtpm", "none", disk=disk, tpm_state=state_c,
                          answer=g.passphrase)
            need(text, r"sealroot: .*the token's storage key is not the key at 0x81000001",
                 "another vTPM's SRK refused")
            fence_before_prompt(text)
        finally:
            os.unlink(disk)

    def fence_before_prompt(text):
        fence = text.find("sealroot: fence PCR 15 extended")
        prompt = PROMPT.search(text)
        if fence < 0 or prompt is None or fence > prompt.start():
            raise Failure("the fence must be extended before the prompt")

    try:
        scenario("enroll PCRs 4+9+fence from the booted guest", enroll)
        scenario("1. unlock with no prompt; 3. the fence holds in the booted root", unattended)
        scenario("2. command line changed: PCR 9 mismatch -> stock prompt -> passphrase",
                 changed_cmdline)
        if flavour == "initramfs-tools":
            scenario("4. PCR mismatch -> stock prompt -> recovery key", recovery_key)
        scenario("5. no TPM -> stock prompt -> passphrase", no_tpm)
        scenario("6. sealroot=off: stock prompt, and the fence holds in the booted root",
                 switched_off)
        if flavour == "initramfs-tools":
            scenario("7. substituted root with the victim's UUID and a fenceless token: "
                     "fenced before the prompt, the real key stays sealed", substituted_root)
            # Before the PIN scenario, which replaces the reference token.
            scenario("8. sealed offline on the host for a new instance's vTPM: unlocks with "
                     "no prompt; under another vTPM -> stock prompt (initramfs-tools only)",
                     offline_sealed)
        scenario("PIN asked through the initrd's prompt: wrong, then right", pin)
    except Failure as e:
        print(f"FAIL ({flavour}): {e}", file=sys.stderr)
        return 1
    print(f"e2e {flavour}: all {len(results)} scenarios passed in "
          f"{sum(t for _, t in results):.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
