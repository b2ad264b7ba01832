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
"""

import base64
import hashlib
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

try:  # python3-cryptography: AES-XTS for the golden image's checks on the host
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError:
    Cipher = None

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
# A guest that looks like the cloud VMs sealroot is for (still TCG): RDRAND, so nothing
# waits for the kernel's CRNG, and AES-NI, so dm-crypt's cipher loads at once; 2 vCPUs.
# AES-NI alone is not enough: the kernel's aesni_intel also uses SSSE3 and SSE4.1
# instructions (every real AES-NI CPU has them) and TCG raises #UD for instructions the
# CPU model lacks: with `qemu64,+aes` dm-crypt oopses and every passphrase "fails".
GUEST_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+pclmulqdq,+aes,+rdrand"
GUEST_SMP = "2"
# The golden image's figures: how many MiB of the guest's disk `cryptsetup reencrypt`
# re-encrypts in the VM, to compare with finish-provisioning's rate (0: all of it, as
# finish-provisioning does; about 2.5 minutes more under TCG).
BENCH_MIB = int(os.environ.get("E2E_BENCH_MIB", "128"))
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
        self.passfile = os.path.join(guest_dir, "passphrase")
        with open(self.passfile) as f:
            self.passphrase = f.read()
        self.recovery_key = None
        self.boots = 0

    def boot(self, name, mode, cmdline=None, tpm=True, answer=None, persist=False, pins=(),
             disk=None, extra=None, tpm_state=None, extra_writable=False, kill_on=None,
             kill_after=0.0, timeout=None, initrd=None, kernel=None):
        """Boots once. `answer`: what to type at the passphrase prompt (None: a prompt is a
        failure); `pins`: what to type at successive PIN prompts (more prompts than answers
        is a failure); `disk`: another root disk; `extra`: a third disk (/dev/vdc), or a
        list of disks (/dev/vdc, /dev/vdd, ...), read only unless `extra_writable`;
        `tpm_state`: another vTPM's state directory (another instance). `kill_on`: a
        pattern of the console after which QEMU is killed (SIGKILL, by its PID: a power
        cut), `kill_after` seconds later, instead of waiting for the guest's power-off.
        `timeout`: the boot's limit in seconds (default BOOT_TIMEOUT); `initrd`: another
        initrd (an updated one); `kernel`: another kernel image. Returns the serial log
        with carriage returns removed."""
        timeout = timeout or BOOT_TIMEOUT
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
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", GUEST_CPU, "-m", "1024", "-smp", GUEST_SMP,
            "-machine", "q35", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-no-reboot", "-net", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            "-kernel", kernel or os.path.join(self.guest, "vmlinuz"),
            "-initrd", initrd or self.initrd,
            "-append", cmdline,
            "-drive", "file=%s,format=raw,if=virtio%s"
            % (disk, "" if persist else ",snapshot=on"),
            "-drive", f"file={mode_img},format=raw,if=virtio,readonly=on",
        ]
        for path in [extra] if isinstance(extra, str) else (extra or []):
            cmd += ["-drive", "file=%s,format=raw,if=virtio%s"
                    % (path, "" if extra_writable else ",readonly=on")]
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
                              timeout=timeout)
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
        patterns = [PROMPT, "E2E-POWEROFF", pexpect.EOF, pexpect.TIMEOUT, PIN_PROMPT,
                    "sealroot: wrong PIN"]
        if kill_on is not None:
            patterns.append(kill_on)
        try:
            while True:
                i = child.expect(patterns)
                if i == 6:
                    # Keep reading (and logging) the console until the plug is pulled.
                    child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=kill_after)
                    print(f"  {name}: QEMU killed {kill_after:.0f}s after /{kill_on}/",
                          flush=True)
                    break
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
                    raise Failure(f"{name}: no power-off within {timeout}s")
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


class HostSwtpm:
    """A swtpm on 127.0.0.1 for the host's sealroot (`with HostSwtpm(state) as tcti:`),
    powered on and started; stopped by its PID on exit, also on failure."""

    def __init__(self, state):
        self.state = state
        self.swtpm = None

    def __enter__(self):
        os.makedirs(self.state, exist_ok=True)
        port = free_port_pair()
        self.swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if self.swtpm.poll() is not None:
                    raise Failure(f"swtpm on {self.state} exited ({self.swtpm.returncode})")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise Failure(f"swtpm on {self.state} did not listen on port {port}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return f"swtpm:host=127.0.0.1,port={port}"

    def __exit__(self, *exc):
        # By its PID; SIGTERM lets swtpm exit cleanly (it writes its state as the TPM
        # changes it, so a persisted SRK is already on disk).
        try:
            self.swtpm.terminate()
            self.swtpm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(self.swtpm.pid)
            self.swtpm.wait()
        return False


def new_vtpm(state, srk_pub):
    """A new instance's vTPM before its first boot: a fresh swtpm state in `state`, its SRK
    created and persisted by the host's `sealroot srk-public`, which writes the SRK's
    TPM2B_PUBLIC to `srk_pub`. Returns the SRK's Name as sealroot printed it."""
    os.makedirs(state)
    with HostSwtpm(state) as tcti:
        out = subprocess.run([SEALROOT, "srk-public", "--out", srk_pub, "--tcti", tcti],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise Failure(f"sealroot srk-public on {state}: rc={out.returncode}: "
                      f"{out.stderr.strip()}")
    return need(out.stderr, r"storage root key 0x81000001, Name ([0-9a-f]{68})",
                "srk-public's Name").group(1)


def check_run(cmd, what, **kw):
    """Runs a host command; its failure fails the test with its stderr."""
    out = subprocess.run(cmd, capture_output=True, **kw)
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace") if isinstance(out.stderr, bytes) else out.stderr
        raise Failure(f"{what}: rc={out.returncode}: {err.strip()}")
    return out


def copy_sparse(src, dst):
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)


def luks_json(image):
    """The LUKS2 header's JSON metadata."""
    out = check_run(["cryptsetup", "luksDump", "--dump-json-metadata", image],
                    f"luksDump {image}", text=True)
    return json.loads(out.stdout)


def luks_tokens(image):
    return [t for t in luks_json(image)["tokens"].values()]


def volume_key(image, key_file):
    """The volume key a keyslot opened by key_file's exact bytes unwraps (cryptsetup, on
    the image file: no device-mapper)."""
    out_file = image + ".vk"
    if os.path.exists(out_file):
        os.unlink(out_file)
    try:
        check_run(["cryptsetup", "luksDump", "-q", "--dump-volume-key", "--volume-key-file",
                   out_file, "--key-file", key_file, image],
                  f"dump the volume key of {image}")
        with open(out_file, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(out_file):
            os.unlink(out_file)


def data_segment(image):
    """(offset, sector size) of the one data segment of an image no longer re-encrypting,
    after checking it is AES-XTS-plain64 with a 512-bit key, as the decryption below
    assumes."""
    meta = luks_json(image)
    segs = meta["segments"]
    if list(segs) != ["0"] or segs["0"]["type"] != "crypt":
        raise Failure(f"{image}: data segments {segs}: expected one crypt segment")
    seg = segs["0"]
    if seg["encryption"] != "aes-xts-plain64" or seg["iv_tweak"] != "0":
        raise Failure(f"{image}: cipher {seg['encryption']}, IV tweak {seg['iv_tweak']}: "
                      "the check assumes aes-xts-plain64 from 0")
    return int(seg["offset"]), int(seg["sector_size"])


def xts_decryptor(key, offset):
    """dm-crypt's aes-xts-plain64 for the sector at byte `offset` of the data segment: the
    IV is the offset in 512-byte units whatever the sector size (LUKS2 does not set
    iv_large_sectors), little-endian, 16 bytes."""
    if Cipher is None:
        raise Failure("python3-cryptography is missing (./scripts/deps.sh e2e)")
    iv = (offset // 512).to_bytes(16, "little")
    return Cipher(algorithms.AES(key), modes.XTS(iv)).decryptor()


def has_ext4_magic(image, key):
    """Whether the first sector of the data segment, decrypted with `key`, is the start of
    an ext4 file system: the superblock's magic 0xEF53 (little-endian) at byte 1080."""
    offset, sector_size = data_segment(image)
    with open(image, "rb") as f:
        f.seek(offset)
        block = f.read(sector_size)
    plain = xts_decryptor(key, 0).update(block)
    return plain[1080:1082] == b"\x53\xef"


def plaintext_digest(image, key):
    """sha256 of the whole data segment decrypted with `key`, sector by sector (what the
    guest's /dev/mapper device reads)."""
    offset, sector_size = data_segment(image)
    h = hashlib.sha256()
    chunk = 256 * sector_size
    with open(image, "rb") as f:
        f.seek(offset)
        pos = 0
        while True:
            data = f.read(chunk)
            if not data:
                break
            if len(data) % sector_size:
                raise Failure(f"{image}: data segment not a whole number of sectors")
            for i in range(0, len(data), sector_size):
                h.update(xts_decryptor(key, pos + i).update(data[i:i + sector_size]))
            pos += len(data)
    return h.hexdigest()


def opens_image(image, key_file):
    """Whether key_file's exact bytes open a keyslot of the image (sealroot recover
    --test, on the file: no device-mapper)."""
    out = subprocess.run([SEALROOT, "recover", image, "probe", "--test", "--key-file",
                          key_file], capture_output=True, text=True)
    return out.returncode == 0, (out.stderr.strip().splitlines() or [""])[-1]


def uptime_at(text, marker):
    m = re.search(marker + r" uptime=([0-9.]+)", text)
    return float(m.group(1)) if m else None


def sealroot_token(image):
    """(token id, token) of the first sealroot token on a LUKS2 image."""
    for tid in range(32):
        out = subprocess.run(["cryptsetup", "token", "export", "--token-id", str(tid), image],
                             capture_output=True, text=True)
        if out.returncode == 0 and json.loads(out.stdout).get("type") == "sealroot":
            return tid, json.loads(out.stdout)
    raise Failure(f"no sealroot token on {image}")


def newc_cpio(files):
    """An uncompressed initramfs archive (cpio "newc") of regular files {path: bytes}, as
    the kernel unpacks it: 110-byte ASCII headers, names and data padded to 4 bytes."""
    out = b""
    for ino, (name, data) in enumerate(list(files.items()) + [("TRAILER!!!", None)], 1):
        mode, nlink = (0o100644, 1) if data is not None else (0, 1)
        data = data or b""
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        out += hdr + b"\0" * (-len(hdr) % 4) + data + b"\0" * (-len(data) % 4)
    return out


def updated_initrd(src, dst):
    """What an initramfs rebuild does to the measurements, without rebuilding the guest: a
    copy of `src` with one more file (etc/e2e-update) in a newc archive appended, after
    zeros up to a 4-byte boundary (the kernel unpacks concatenated archives; it skips the
    zeros, and an uncompressed archive must start 4-byte aligned). Returns its sha256."""
    with open(src, "rb") as f:
        data = f.read()
    data += b"\0" * (-len(data) % 4)
    data += newc_cpio({"etc/e2e-update": b"initrd rebuilt by an update\n"})
    with open(dst, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def make_boot_disk(tree, image):
    """An unencrypted ext4 image of the directory `tree` (the guest root's /boot), made on
    the host by mke2fs -d, with room for update-initramfs to write a new initrd."""
    mib = int(check_run(["du", "-sm", tree], "du", text=True).stdout.split()[0]) + 96
    if os.path.exists(image):
        os.unlink(image)
    check_run(["mke2fs", "-q", "-t", "ext4", "-L", "e2e-boot", "-d", tree, image, f"{mib}M"],
              "mke2fs -d of the /boot disk")


def debugfs_dump(image, path, out):
    """Copies PATH of the ext4 image to the host file OUT (the harness as boot loader)."""
    if os.path.exists(out):
        os.unlink(out)
    check_run(["debugfs", "-R", f"dump {path} {out}", image], f"debugfs dump {path}")
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        raise Failure(f"{path} is missing or empty on {image}")


def debugfs_replace(image, local, path):
    """Replaces PATH in the ext4 image by the host file LOCAL (debugfs rm + write)."""
    cmds = image + ".debugfs"
    with open(cmds, "w") as f:
        f.write(f"rm {path}\nwrite {local} {path}\n")
    try:
        check_run(["debugfs", "-w", "-f", cmds, image], f"debugfs rm+write {path}")
    finally:
        os.unlink(cmds)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def live_pcrs(text):
    """PCRs 4 and 9 as the guest read them from sysfs (mode "pcrs")."""
    return {p: need(text, rf"^E2E-PCR {p} ([0-9a-f]{{64}})$", f"PCR {p} from sysfs").group(1)
            for p in ("4", "9")}


def replay_sha256(log, pcrs):
    """Replays a TCG crypto-agile event log (what binary_bios_measurements holds) for the
    sha256 bank of `pcrs`: {pcr: hex}. EV_NO_ACTION events are not extended."""
    import struct
    sizes = {0x0004: 20, 0x000b: 32, 0x000c: 48, 0x000d: 64, 0x0012: 32}
    if b"Spec ID Event03" not in log[:64]:
        raise Failure("the event log does not start with a Spec ID Event03 header")
    # The first event: TCG_PCR_EVENT (SHA-1 format).
    size = struct.unpack_from("<I", log, 28)[0]
    pos = 32 + size
    values = {p: bytes(32) for p in pcrs}
    while pos + 12 <= len(log):
        pcr, etype, count = struct.unpack_from("<III", log, pos)
        pos += 12
        digest = None
        for _ in range(count):
            alg = struct.unpack_from("<H", log, pos)[0]
            if alg not in sizes:
                raise Failure(f"event log: unknown hash algorithm {alg:#x}")
            if alg == 0x000b:
                digest = log[pos + 2:pos + 34]
            pos += 2 + sizes[alg]
        size = struct.unpack_from("<I", log, pos)[0]
        pos += 4 + size
        if pcr in values and etype != 3 and digest is not None:
            values[pcr] = hashlib.sha256(values[pcr] + digest).digest()
    return {p: v.hex() for p, v in values.items()}


def save_eventlog(text, work, name, meta):
    """The guest's TCG event log (mode "pcrs"), decoded to WORK/NAME.bin, with what the
    boot used (kernel, initrd, command line, live PCRs) in WORK/NAME.json and the command
    line alone in WORK/NAME.cmdline; says whether the log replays to the live PCRs."""
    b64 = need(text, r"^E2E-EVENTLOG ([A-Za-z0-9+/=]+)$", "the TCG event log").group(1)
    log = base64.b64decode(b64, validate=True)
    with open(os.path.join(work, name + ".bin"), "wb") as f:
        f.write(log)
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(work, name + ".cmdline"), "w") as f:
        f.write(meta["cmdline"] + "\n")
    live = meta["pcrs_sha256"]
    replayed = replay_sha256(log, [int(p) for p in live])
    same = [p for p in live if replayed[int(p)] == live[p]]
    print(f"  event log ({len(log)} bytes): {os.path.join(work, name + '.bin')}; kernel, "
          f"initrd, command line and PCRs: {os.path.join(work, name + '.json')}; replayed, "
          f"PCR(s) {', '.join(same) or 'none'} of {', '.join(live)} match sysfs", flush=True)


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
    release = sys.argv[4] if len(sys.argv) > 4 else "bookworm"
    # CI's time allows every scenario once: all on bookworm with initramfs-tools; on the
    # other cases what differs by initrd generator and release (enrollment through the stock
    # prompt, the unattended unlock, a mismatch falling back to the stock prompt, the PIN
    # prompt), and on bookworm's dracut guests also no TPM and sealroot=off.
    full = flavour == "initramfs-tools" and release == "bookworm"
    core = release == "bookworm"
    os.makedirs(work, exist_ok=True)
    g = Guest(guest_dir, work, flavour)
    changed = g.cmdline + " e2e.changed=1"
    results = []

    # Development aid: E2E_ONLY=REGEX runs only the scenarios whose title matches (those
    # that need an earlier scenario's state fail without it).
    only = re.compile(os.environ["E2E_ONLY"]) if os.environ.get("E2E_ONLY") else None

    def scenario(title, fn):
        if only is not None and not only.search(title):
            return
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
        text = g.boot("unlock", "check verify")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as ", "sealroot unlock")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
        # Scenario 3: from the booted root the key no longer unseals.
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        need(text, r"^E2E-LOG sealroot: .*fence PCR 15 is already extended", "fence message")
        start, done = kmsg_time(text, "sealroot: starting"), kmsg_time(text, "unlocked as ")
        stock = need(text, r"^E2E-PASSPHRASE-CHECK rc=0 seconds=([0-9.]+)", "stock").group(1)
        luks = need(text, r"^E2E-RECOVER-CHECK rc=0 seconds=([0-9.]+)", "recover").group(1)
        ready = kmsg_time(text, "sealroot: devices ready")
        # The firmware's event log, replayed by `sealroot predict --verify`, accounts for
        # the live PCRs 4, 7 and 9.
        for line in re.findall(r"^E2E-VERIFY.*$", text, re.M):
            print(f"  {line}", flush=True)
        need(text, r"^E2E-VERIFY rc=0$", "predict --verify in the booted root")
        for p in (4, 7, 9):
            need(text, rf"^E2E-VERIFY-OUT PCR {p}: the log replays to the live value$",
                 f"PCR {p} replayed by predict --verify")
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

    def signed_policy():
        """Issue 14: an initrd update under a signed policy, no resealing. A fresh vTPM S
        (its SRK from `srk-public`) and a pristine copy of the guest's disk sealed offline
        to S with `enroll --srk-public --policy-key` (ECDSA P-256, made here with openssl):
        the object trusts the key and the fence, no PCR value. The host approves PCRs 4
        and 9 of the stock initrd, taken from the reference token the online "enroll"
        boot recorded on g.disk (PCRs 4 and 9 do not depend on the TPM). Boots, all under
        S, in mode "pcrs" (live PCRs 4 and 9 from sysfs, the TCG event log, the fence
        check):
        - the stock initrd: no prompt, unlocked as root; the live PCRs are the approved
          ones; its event log is saved (eventlog.bin/.json/.cmdline, for predict);
        - an updated initrd (the stock one with a file appended in another cpio archive, as
          a rebuild changes it), before any approval of it: the stock prompt, after the
          fence; sealroot says no approval covers the current values, naming PCR 9, which
          did change (the EFI stub's "Linux initrd" event). PCR 4 changes too here, the
          kernel file being the same: under QEMU's -kernel the measured image is probably
          the kernel as QEMU patched it, its setup header holding the initrd's size and
          address. This boot is the reference for the new values;
        - after `approve --pcr-values OLD --pcr-values NEW --replace` (PolicyOR: the old
          and the new initrd, one approval in the header): the updated initrd unlocks
          with no prompt, the fence holds in the booted root;
        - the stock initrd again: unlocks with no prompt through the other branch."""
        _, ref = sealroot_token(g.disk)
        if ref.get("tpm2_pcr_bank") != "sha256" or sorted(ref["tpm2_pcrs"]) != [4, 9, 15]:
            raise Failure(f"the reference token binds {ref.get('tpm2_pcr_bank')} PCRs "
                          f"{ref.get('tpm2_pcrs')}, not sha256 PCRs 4, 9 and the fence")
        old = {p: ref["tpm2_pcr_values"][p] for p in ("4", "9")}

        def spec(values):
            return ",".join(f"{p}:sha256={values[p]}" for p in ("4", "9"))

        if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
            raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
        d = os.path.join(g.work, "signed")
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        priv, pub = os.path.join(d, "policy.pem"), os.path.join(d, "policy.pub.pem")
        check_run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-out", priv], "openssl genpkey")
        check_run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], "openssl pkey")
        state, srk = os.path.join(d, "tpm"), os.path.join(d, "srk.pub")
        name = new_vtpm(state, srk)
        disk = os.path.join(d, "disk.img")
        copy_sparse(os.path.join(g.guest, "disk.img"), disk)
        try:
            out = check_run([SEALROOT, "enroll", disk, "--srk-public", srk, "--policy-key",
                             pub, "--unlock-key-file", g.passfile],
                            "offline enroll with a policy key", text=True)
            print(f"  host: {out.stderr.strip()}; SRK {name}", flush=True)
            out = check_run([SEALROOT, "approve", disk, "--key", priv, "--pcr-values",
                             spec(old)], "approve the stock initrd's values", text=True)
            print(f"  host: {out.stderr.strip()}; {spec(old)}", flush=True)

            text = g.boot("signed-stock", "pcrs", disk=disk, tpm_state=state)
            need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "approved unlock")
            need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
            need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
            live = live_pcrs(text)
            if live != old:
                raise Failure(f"live PCRs {live} are not the reference token's {old}")
            kernel = os.path.abspath(os.path.join(g.guest, "vmlinuz"))
            save_eventlog(text, g.work, "eventlog", {
                "kernel": kernel, "initrd": os.path.abspath(g.initrd), "cmdline": g.cmdline,
                "pcrs_sha256": live})

            new_initrd = os.path.join(d, "initrd-updated.img")
            digest = updated_initrd(g.initrd, new_initrd)
            print(f"  host: updated initrd {new_initrd} (sha256 {digest[:16]}...)", flush=True)
            text = g.boot("signed-update-unapproved", "pcrs", disk=disk, tpm_state=state,
                          initrd=new_initrd, answer=g.passphrase)
            m = need(text, r"sealroot: .*no approval covers the current PCR values "
                     r"\(1 approval\(s\); PCR ([0-9, ]+) differ", "no approval for the update")
            differ = m.group(1).split(", ")
            if "9" not in differ:
                raise Failure(f"the mismatch names PCR {differ}, not PCR 9")
            fence_before_prompt(text)
            need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after the prompt")
            new = live_pcrs(text)
            if new["9"] == old["9"]:
                raise Failure("the updated initrd did not change PCR 9")
            print(f"  updated initrd: PCR(s) {', '.join(differ)} differ; new values "
                  f"{spec(new)}", flush=True)
            save_eventlog(text, g.work, "eventlog-updated", {
                "kernel": kernel, "initrd": os.path.abspath(new_initrd), "cmdline": g.cmdline,
                "pcrs_sha256": new})

            out = check_run([SEALROOT, "approve", disk, "--key", priv, "--pcr-values",
                             spec(old), "--pcr-values", spec(new), "--replace"],
                            "approve the old and the new values", text=True)
            approvals = [t for t in luks_tokens(disk) if t.get("type") == "sealroot-approval"]
            print(f"  host: {out.stderr.strip()}; {len(approvals)} approval token(s) in the "
                  "header", flush=True)
            if len(approvals) != 1:
                raise Failure(f"--replace left {len(approvals)} approval tokens")
            text = g.boot("signed-update-approved", "pcrs", disk=disk, tpm_state=state,
                          initrd=new_initrd)
            need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root",
                 "the updated initrd unlocks once approved")
            need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")
            need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
            if live_pcrs(text) != new:
                raise Failure("the updated initrd's PCRs changed between two boots")
            text = g.boot("signed-stock-after-update", "check", disk=disk, tpm_state=state)
            need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root",
                 "the stock initrd still unlocks (the approval's other branch)")
            need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        finally:
            os.unlink(disk)

    # Issue 13: one golden image, two instances. State shared by the golden scenarios.
    gold = {}

    def golden_image():
        """The builder's side, on the host: a copy of the guest's pristine disk (the
        passphrase keyslot only) marked by `sealroot provision --pcrs 4,9 --escrow` with
        the recipient of an age identity made here. No TPM, no device-mapper. The
        provisioning key, in the header in clear, opens the image (the control for the
        checks that it opens no instance)."""
        if not (os.path.isfile(SEALROOT) and os.access(SEALROOT, os.X_OK)):
            raise Failure(f"no host sealroot at {SEALROOT} (make static, or set E2E_SEALROOT)")
        d = os.path.join(g.work, "golden")
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        gold["dir"] = d
        gold["image"] = image = os.path.join(d, "golden.img")
        copy_sparse(os.path.join(g.guest, "disk.img"), image)
        gold["identity"] = identity = os.path.join(d, "builder.age")
        check_run(["age-keygen", "-o", identity], "age-keygen")
        recipient = check_run(["age-keygen", "-y", identity], "age-keygen -y",
                              text=True).stdout.strip()
        out = check_run([SEALROOT, "provision", image, "--unlock-key-file", g.passfile,
                         "--pcrs", "4,9", "--escrow", recipient], "sealroot provision",
                        text=True)
        print(f"  host: {out.stderr.strip().splitlines()[-1]}; escrow to {recipient}",
              flush=True)
        tokens = [t for t in luks_tokens(image) if t.get("type") == "sealroot-provision"]
        if len(tokens) != 1:
            raise Failure(f"golden.img has {len(tokens)} provision tokens")
        gold["provisioning_key"] = key = os.path.join(d, "provisioning.key")
        with open(key, "w") as f:
            f.write(tokens[0]["provisioning_key"])
        ok, msg = opens_image(image, key)
        if not ok:
            raise Failure(f"the provisioning key does not open the golden image: {msg}")
        gold["image_vk"] = volume_key(image, g.passfile)
        if not has_ext4_magic(image, gold["image_vk"]):
            raise Failure("the golden image's first sector, decrypted with its own key, is "
                          "not an ext4 superblock: the sector check below would prove nothing")

    def first_boot(name, disk, state):
        """A golden instance's first boot in mode "provision": no prompt allowed, the
        initrd provisions, the booted root re-encrypts (finish-provisioning, as the systemd
        unit would) and prints the files' checksum. Returns the console log."""
        text = g.boot(name, "provision", disk=disk, tpm_state=state, persist=True,
                      timeout=2 * BOOT_TIMEOUT)
        first_boot_asserts(text)
        need(text, r"^E2E-STATUS .*first-boot provisioning pending: done so far "
             r"\[new-key, sealed, escrowed, verified, reencrypt-started\]",
             "provisioning pending after the initrd")
        need(text, r"^E2E-STATUS re-encryption: in progress", "re-encryption set up")
        need(text, r"^E2E-FINISHED rc=0 ", "finish-provisioning in the booted root")
        after = "\n".join(re.findall(r"^E2E-STATUS-AFTER (.*)$", text, re.M))
        if "provisioning pending" in after or "re-encryption:" in after or not after:
            raise Failure(f"{name}: still pending after finish-provisioning:\n{after}")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        return text

    def first_boot_asserts(text):
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+: (provisioning|resuming the provisioning "
             r"of) this instance", "provisioning in the initrd")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+: this instance's keys are in place",
             "keys in place before the root")
        need(text, r"^E2E-KMSG .*sealroot: fence PCR 15 extended", "fence")

    def golden_instance_a():
        """Instance A's first boot: a copy of the golden image, a fresh vTPM state (no SRK:
        provisioning creates it), no answer at any prompt. The initrd's `sealroot unlock`
        provisions (new key, sealed to this TPM's PCRs 4 and 9, recovery key escrowed,
        verified, re-encryption set up) and activates the root with the provisioning key;
        in the booted root `sealroot finish-provisioning` re-encrypts online (timed), and
        then nothing is pending. The files' checksum is compared with instance B's, taken
        before any of its data moved (golden_instance_b)."""
        gold["a"] = a = os.path.join(gold["dir"], "a.img")
        copy_sparse(gold["image"], a)
        gold["tpm_a"] = state = os.path.join(gold["dir"], "tpm-a")
        os.makedirs(state)
        text = first_boot("golden-a-first", a, state)
        gold["a_first"] = text
        gold["sums_a"] = need(text, r"^E2E-SUMS ([0-9a-f]{64}) ", "checksum").group(1)
        gold["finish_seconds"] = float(need(text, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)",
                                            "finish time").group(1))
        # The second boot: the TPM unlocks it, no prompt; the builder's passphrase, tried
        # from inside, opens nothing any more.
        text = g.boot("golden-a-second", "check", disk=a, tpm_state=state)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "TPM unlock")
        if re.search(r"^E2E-KMSG .*provisioning", text, re.M):
            raise Failure("the second boot provisioned again")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        need(text, r"^E2E-PASSPHRASE-CHECK rc=[1-9]", "builder passphrase refused (cryptsetup)")
        need(text, r"^E2E-RECOVER-CHECK rc=[1-9]", "builder passphrase refused (sealroot)")
        gold["a_second"] = text

    def golden_instance_b():
        """Instance B (its own fresh vTPM): the first boot prints the files' checksum before
        any data moves (the image's files, through the image's key), starts
        finish-provisioning and, after 30% of instance A's pass time, waits until the next
        hotzone starts being rewritten (a data segment newly flagged in-reencryption in the
        header) and says so; QEMU is killed on that line (SIGKILL by PID: a power cut),
        with most of that hotzone's rewrite still to come. On the host the
        header must then show the cut: the online-reencrypt requirement, the hotzone
        flagged, data already under the new key before it, and `sealroot status` saying
        "interrupted". The next boot resumes from the initrd (provisioning key;
        libcryptsetup restores the torn hotzone from its checksums) and the booted root
        finishes: same checksum as before the cut and as instance A. The third boot unlocks
        with the TPM, no prompt."""
        gold["b"] = b = os.path.join(gold["dir"], "b.img")
        copy_sparse(gold["image"], b)
        gold["tpm_b"] = state = os.path.join(gold["dir"], "tpm-b")
        os.makedirs(state)
        wait = round(max(5.0, 0.3 * gold.get("finish_seconds", 60)))
        text = g.boot("golden-b-cut", f"provision-crash {wait}", disk=b, tpm_state=state,
                      persist=True, kill_on="E2E-IN-HOTZONE", kill_after=0,
                      timeout=2 * BOOT_TIMEOUT)
        first_boot_asserts(text)
        before = need(text, r"^E2E-SUMS-BEFORE ([0-9a-f]{64}) ", "checksum before").group(1)
        need(text, r"^E2E-IN-HOTZONE", "a hotzone in flight at the cut")
        if "E2E-FINISHED" in text:
            raise Failure("instance B finished re-encrypting before the power cut")
        meta = luks_json(b)
        reqs = meta["config"].get("requirements", {}).get("mandatory", [])
        segs = {k: (v["offset"], v["size"], v.get("flags", []))
                for k, v in sorted(meta["segments"].items())}
        print(f"  host after the cut: requirements {reqs}; segments (offset, size, flags) "
              f"{segs}", flush=True)
        if not any(r.startswith("online-reencrypt") for r in reqs):
            raise Failure(f"b.img after the cut: requirements {reqs}: not mid re-encryption")
        hot = [v for v in meta["segments"].values() if "in-reencryption" in v.get("flags", [])]
        first = int(meta["segments"]["0"]["offset"])
        if len(hot) != 1 or int(hot[0]["offset"]) <= first:
            raise Failure(f"b.img after the cut: segments {segs}: expected a hotzone in flight "
                          "after data already under the new key")
        gold["cut_done"] = int(hot[0]["offset"]) - first
        status = subprocess.run([SEALROOT, "status", b], capture_output=True, text=True)
        need(status.stdout, r"^re-encryption: interrupted", "sealroot status after the cut")
        print(f"  host: sealroot status b.img: "
              f"{need(status.stdout, r'^re-encryption: .*$', 'status').group(0)}", flush=True)
        text = first_boot("golden-b-resumed", b, state)
        after = need(text, r"^E2E-SUMS ([0-9a-f]{64}) ", "checksum after").group(1)
        gold["b_resumed"] = text
        if not (before == after == gold.get("sums_a", after)):
            raise Failure(f"file checksums differ: B before the cut {before}, B after {after}, "
                          f"A {gold.get('sums_a')}")
        gold["sums_b"] = after
        text = g.boot("golden-b-third", "check", disk=b, tpm_state=state)
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "TPM unlock")
        if re.search(r"^E2E-KMSG .*provisioning", text, re.M):
            raise Failure("the third boot provisioned again")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")

    def golden_keys():
        """On the host, on the instances' disk images: the provisioning key (read from the
        golden image's token) and the builder's passphrase open neither instance (they do
        open the golden image); each instance's escrow (`sealroot escrow show`), decrypted
        with `age -d -i` and the builder's identity, opens that instance and not the other;
        the volume keys of the image, A and B all differ; the image's key no longer
        decrypts an instance's first data sector (an ext4 superblock with the instance's
        own key, and with the image's key on the golden image); and each instance's whole
        data segment, decrypted with its own key, is byte for byte the image's."""
        d, image = gold["dir"], gold["image"]
        for label in ("a", "b"):
            img = gold[label]
            for key, what in ((gold["provisioning_key"], "the provisioning key"),
                              (g.passfile, "the builder's passphrase")):
                ok, msg = opens_image(img, key)
                if ok:
                    raise Failure(f"{what} still opens instance {label.upper()}")
                print(f"  host: {what} on {label}.img: {msg}", flush=True)
            escrow = check_run([SEALROOT, "escrow", "show", img], f"escrow show {label}.img",
                               text=True).stdout
            with open(os.path.join(d, f"escrow-{label}.age"), "w") as f:
                f.write(escrow)
            rec = check_run(["age", "-d", "-i", gold["identity"],
                             os.path.join(d, f"escrow-{label}.age")], f"age -d ({label})").stdout
            if not re.fullmatch(rb"[a-z-]{71}\n?", rec):
                raise Failure(f"the escrow of {label} does not decrypt to a recovery key")
            gold[f"recovery_{label}"] = rec.decode().strip()
            gold[f"recovery_{label}_file"] = rf = os.path.join(d, f"recovery-{label}.key")
            with open(rf, "wb") as f:
                f.write(rec)
            ok, msg = opens_image(img, rf)
            if not ok:
                raise Failure(f"instance {label.upper()}'s escrowed key does not open it: {msg}")
            meta = luks_json(img)
            if meta["config"].get("requirements") or len(meta["keyslots"]) != 2 or any(
                    t["type"] == "sealroot-provision" for t in meta["tokens"].values()):
                raise Failure(f"{label}.img: keyslots {sorted(meta['keyslots'])}, tokens "
                              f"{[t['type'] for t in meta['tokens'].values()]}, requirements "
                              f"{meta['config'].get('requirements')}: not finished")
            print(f"  host: {label}.img keyslots {sorted(meta['keyslots'])}, tokens "
                  f"{sorted(t['type'] for t in meta['tokens'].values())}; recovery key "
                  f"from its escrow: {msg}", flush=True)
        for label, other in (("a", "b"), ("b", "a")):
            ok, _ = opens_image(gold[label], gold[f"recovery_{other}_file"])
            if ok:
                raise Failure(f"instance {other.upper()}'s recovery key opens {label}.img")
        vk_image = gold["image_vk"]
        vk_a = volume_key(gold["a"], gold["recovery_a_file"])
        vk_b = volume_key(gold["b"], gold["recovery_b_file"])
        if len({vk_image, vk_a, vk_b}) != 3:
            raise Failure("two of the volume keys (image, A, B) are the same")
        print(f"  host: volume keys ({len(vk_a) * 8} bits) of the image, A and B all differ",
              flush=True)
        for label, vk in (("a", vk_a), ("b", vk_b)):
            if not has_ext4_magic(gold[label], vk):
                raise Failure(f"{label}.img's first data sector, decrypted with its own key, "
                              "is not an ext4 superblock")
            if has_ext4_magic(gold[label], vk_image):
                raise Failure(f"the image's old volume key still decrypts {label}.img")
        print("  host: first data sector + AES-XTS: ext4 magic 0xEF53 at byte 1080 with "
              "golden.img/image key, a.img/A's key, b.img/B's key; not with the image's key "
              "on a.img or b.img", flush=True)
        digests = {"image": plaintext_digest(image, vk_image),
                   "a": plaintext_digest(gold["a"], vk_a),
                   "b": plaintext_digest(gold["b"], vk_b)}
        if len(set(digests.values())) != 1:
            raise Failure(f"decrypted data segments differ: {digests}")
        print(f"  host: whole data segment decrypted: golden, A and B identical "
              f"(sha256 {digests['a'][:16]}...)", flush=True)

    def golden_recovery_and_figures():
        """Instance A booted with another, fresh vTPM (its sealed key cannot unseal there):
        the stock prompt, after the fence; the recovery key decrypted from A's escrow with
        age, typed at it, opens the root. The same boot times `cryptsetup reencrypt` and
        sealroot's data pass back to back on two copies of the guest's disk cut to the same
        size (E2E_BENCH_MIB of data), both offline with the same parameters: the pristine
        disk, and the golden image whose first-boot part the host did with `sealroot
        first-boot` and a throwaway swtpm. Prints the figures."""
        state = os.path.join(gold["dir"], "tpm-other")
        os.makedirs(state)
        cs = os.path.join(gold["dir"], "bench-cryptsetup.img")
        sr = os.path.join(gold["dir"], "bench-sealroot.img")
        copy_sparse(os.path.join(g.guest, "disk.img"), cs)
        copy_sparse(gold["image"], sr)
        try:
            for img in (cs, sr):
                # Their own UUIDs (the initrd finds the root by UUID), the same size.
                check_run(["cryptsetup", "luksUUID", "-q", "--uuid", str(uuid.uuid4()), img],
                          "new UUID for a bench disk")
                if BENCH_MIB:
                    offset, _ = data_segment(img)
                    os.truncate(img, offset + BENCH_MIB * 1024 * 1024)
            with HostSwtpm(os.path.join(gold["dir"], "tpm-bench")) as tcti:
                check_run([SEALROOT, "first-boot", sr, "--tcti", tcti],
                          "sealroot first-boot on the bench copy")
            st = check_run([SEALROOT, "status", sr], "status", text=True).stdout
            need(st, r"^re-encryption: in progress", "bench copy set up for its data pass")
            text = g.boot("golden-a-recovery-key", "bench", disk=gold["a"], tpm_state=state,
                          answer=gold["recovery_a"], extra=[cs, sr], extra_writable=True,
                          timeout=2 * BOOT_TIMEOUT)
        finally:
            for img in (cs, sr):
                os.unlink(img)
        fence_before_prompt(text)
        need(text, r"^E2E-KMSG .*sealroot: .*(this TPM has no key|storage key)",
             "the sealed key refused under another vTPM")
        c = need(text, r"^E2E-CRYPTSETUP-REENCRYPT rc=0 seconds=([0-9.]+) bytes=(\d+)",
                 "cryptsetup reencrypt in the guest")
        r = need(text, r"^E2E-SEALROOT-REENCRYPT rc=0 seconds=([0-9.]+) bytes=(\d+)",
                 "sealroot finish-provisioning (offline) in the guest")
        golden_figures((float(c.group(1)), int(c.group(2))),
                       (float(r.group(1)), int(r.group(2))))

    def golden_figures(cs, sr):
        """cs, sr: (seconds, bytes) of cryptsetup's and sealroot's offline passes."""
        a1, a2 = gold["a_first"], gold["a_second"]
        fin = need(a1, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)", "finish time")
        online_seconds = float(fin.group(1))
        online_bytes = int(need(a1, r"^E2E-DATA-BYTES (\d+)", "data bytes").group(1))
        mib = 1024 * 1024

        def rate(seconds, nbytes):
            return (f"{nbytes / mib:.0f} MiB in {seconds:.1f}s = "
                    f"{nbytes / mib / seconds:.2f} MiB/s")

        lines = [f"figures (guest under TCG, -cpu {GUEST_CPU}, {GUEST_SMP} vCPUs):"]
        root1, root2 = uptime_at(a1, "E2E-ROOT-REACHED"), uptime_at(a2, "E2E-ROOT-REACHED")
        lines.append(f"time to the root (guest uptime): first boot {root1:.1f}s, second "
                     f"boot {root2:.1f}s")
        s1 = kmsg_time(a1, "sealroot: starting")
        p1 = kmsg_time(a1, "keys are in place")
        s2, u2 = kmsg_time(a2, "sealroot: starting"), kmsg_time(a2, "unlocked as ")
        if None not in (s1, p1, s2, u2):
            lines.append(f"initrd, sealroot start -> root mapped: {p1 - s1:.2f}s provisioning "
                         f"(first boot), {u2 - s2:.2f}s TPM unlock (second boot)")
        lines.append(f"first boot's data pass (finish-provisioning, online, the mounted root): "
                     f"{rate(online_seconds, online_bytes)}")
        lines.append(f"same boot, offline, equal copies: cryptsetup reencrypt {rate(*cs)}; "
                     f"sealroot finish-provisioning {rate(*sr)}; time per byte "
                     f"sealroot/cryptsetup {(sr[0] / sr[1]) / (cs[0] / cs[1]):.2f}")
        b = gold.get("b_resumed")
        if b:
            fb = need(b, r"^E2E-FINISHED rc=0 seconds=([0-9.]+)", "resumed finish time")
            lines.append(f"power cut with {gold['cut_done'] / mib:.0f} MiB done: the next "
                         f"boot's pass (the rest) took {float(fb.group(1)):.1f}s")
        sums = need(a1, r"^E2E-SUMS \S+ files=(\d+) seconds=([0-9.]+)", "sums")
        lines.append(f"file checksum in the guest: {sums.group(1)} files in "
                     f"{float(sums.group(2)):.1f}s")
        for line in lines:
            print(f"  {line}", flush=True)

    def updates():
        """Scenario 15 (initramfs-tools only): kernel, initrd and command line updates keep
        unlocking, approved from the booted system by a local policy key. A fresh copy of
        the guest's disk (the passphrase keyslot only, persisted across these boots) and a
        fresh vTPM. The guest's /boot is a separate unencrypted ext4 disk (/dev/vdc, made
        here from the guest root's /boot by mke2fs -d, writable); the harness is the boot
        loader: before each boot it reads vmlinuz-KVER, initrd.img-KVER and cmdline (the
        full -append string, the boot loader's configuration, which the guest keeps equal
        to /etc/kernel/cmdline) from that disk with debugfs and boots them directly.
        - boot 1: no token, the stock prompt, the passphrase; the booted root writes
          /etc/kernel/cmdline and /etc/default/sealroot (the hooks model QEMU's direct
          boot with 1 GiB) and enrolls `--local-approval --pcrs 4,9`;
        - boot 2: no prompt; status shows the local approval key loaded; the event log
          replays to the live PCRs 4, 7, 9 (saved as eventlog-updates.*); then a new
          command line (/etc/kernel/cmdline and /boot/cmdline) and an initramfs-tools
          configuration change, `update-initramfs -u`: its post-update hook approves the
          new boot (the approval in the header changes);
        - boot 3: the new kernel, initrd and command line unlock with no prompt;
          `update-approvals --prune` keeps this boot only;
        - boot 4: the initrd on the /boot disk replaced behind the hooks' back (one file
          appended): the stock prompt after the fence, the passphrase; status in the booted
          root says PCR 9 differs because of the initrd."""
        d = os.path.join(g.work, "updates")
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        with open(os.path.join(g.guest, "kver")) as f:
            kver = f.read().strip()
        tree = os.path.join(d, "boot-tree")
        shutil.copytree(os.path.join(g.guest, "boot"), tree, symlinks=True)
        with open(os.path.join(tree, "cmdline"), "w") as f:
            f.write(g.cmdline + "\n")
        bootimg = os.path.join(d, "boot.img")
        make_boot_disk(tree, bootimg)
        shutil.rmtree(tree)
        disk = os.path.join(d, "disk.img")
        copy_sparse(os.path.join(g.guest, "disk.img"), disk)
        state = os.path.join(d, "tpm")
        os.makedirs(state)
        loaded = {}

        def load():
            """The boot loader: kernel, initrd and command line from the /boot disk."""
            n = loaded["n"] = loaded.get("n", 0) + 1
            k, i = os.path.join(d, f"vmlinuz.{n}"), os.path.join(d, f"initrd.{n}")
            c = os.path.join(d, f"cmdline.{n}")
            debugfs_dump(bootimg, f"/vmlinuz-{kver}", k)
            debugfs_dump(bootimg, f"/initrd.img-{kver}", i)
            debugfs_dump(bootimg, "/cmdline", c)
            with open(c) as f:
                cmdline = f.read().strip()
            loaded.update(kernel=k, initrd=i, cmdline=cmdline, initrd_sha=sha256_file(i))
            print(f"  /boot disk: vmlinuz-{kver} sha256 {sha256_file(k)[:16]}..., "
                  f"initrd.img-{kver} sha256 {loaded['initrd_sha'][:16]}..., "
                  f"cmdline {cmdline!r}", flush=True)

        def boot(name, mode, **kw):
            load()
            return g.boot(name, mode, disk=disk, tpm_state=state, persist=True,
                          extra=bootimg, extra_writable=True, kernel=loaded["kernel"],
                          initrd=loaded["initrd"], cmdline=loaded["cmdline"], **kw)

        def show(text, prefix):
            for m in re.finditer(rf"^{prefix}.*$", text, re.M):
                print(f"  {m.group(0)}", flush=True)

        def approvals():
            return [t for t in luks_tokens(disk) if t.get("type") == "sealroot-approval"]

        # Boot 1: the passphrase; enroll with a local approval key.
        text = boot("updates-enroll", "upd-enroll", answer=g.passphrase)
        show(text, "E2E-(ENROLLED|LOG|STATUS|BOOT)")
        need(text, r"^E2E-ENROLLED rc=0", "enroll --local-approval in the booted guest")
        types = sorted(t.get("type") for t in luks_tokens(disk))
        print(f"  host: tokens {types}", flush=True)
        first = approvals()
        if not first:
            raise Failure(f"no sealroot-approval token after enroll --local-approval: {types}")

        # Boot 2: unattended; the update.
        # update-initramfs under TCG: about 4 minutes on an idle host.
        text = boot("updates-update", "upd-update", timeout=3 * BOOT_TIMEOUT)
        show(text, "E2E-(STATUS|VERIFY|UPDATE|LOG|INITRD|APPROVAL)")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "unlock, boot 2")
        need(text, r"^E2E-STATUS .*local approval key: loaded", "local key in the keyring")
        need(text, r"^E2E-VERIFY rc=0$", "predict --verify, boot 2")
        save_eventlog(text, g.work, "eventlog-updates", {
            "kernel": loaded["kernel"], "initrd": loaded["initrd"],
            "cmdline": loaded["cmdline"], "pcrs_sha256": live_pcrs(text)})
        need(text, r"^E2E-UPDATE-INITRAMFS rc=0 ", "update-initramfs -u with the hook")
        m = need(text, r"^E2E-INITRD before=(\S+) after=(\S+)", "initrd checksums")
        if m.group(1) == m.group(2):
            raise Failure("update-initramfs -u left the initrd unchanged")
        need(text, r"^E2E-APPROVAL-TOKEN present", "an approval token after the hook")
        second = approvals()
        print(f"  host: {len(second)} approval token(s) after the update", flush=True)
        if not second or second == first:
            raise Failure("the post-update hook did not replace the approval")
        old_initrd = loaded["initrd_sha"]

        # Boot 3: the new kernel, initrd and command line, no prompt; prune.
        text = boot("updates-new-boot", "upd-prune")
        show(text, "E2E-(CMDLINE|STATUS|PRUNED|LOG)")
        if "e2e.updated=1" not in loaded["cmdline"] or loaded["initrd_sha"] == old_initrd:
            raise Failure("the /boot disk does not hold the updated initrd and command line")
        need(text, r"^E2E-KMSG .*sealroot: /dev/\S+ unlocked as root", "unlock, boot 3")
        need(text, r"^E2E-PRUNED rc=0", "update-approvals --prune")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds in the booted root")
        third = approvals()
        print(f"  host: {len(third)} approval token(s) after the prune", flush=True)
        if not third or third == second:
            raise Failure("update-approvals --prune did not replace the approval")

        # Boot 4: an initrd nobody approved.
        load()
        swapped = os.path.join(d, "initrd-swapped")
        digest = updated_initrd(loaded["initrd"], swapped)
        debugfs_replace(bootimg, swapped, f"/initrd.img-{kver}")
        print(f"  host: initrd.img-{kver} on the /boot disk replaced (sha256 "
              f"{digest[:16]}...)", flush=True)
        text = boot("updates-initrd-swapped", "upd-status", answer=g.passphrase)
        if loaded["initrd_sha"] != digest:
            raise Failure("the /boot disk does not hold the replaced initrd")
        show(text, "E2E-STATUS")
        fence_before_prompt(text)
        need(text, r"^E2E-STATUS .*PCR 9: the initrd differs from the approved one",
             "status names the initrd")
        need(text, r"^E2E-FENCE-CHECK rc=5", "fence holds after the prompt")

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
        if full:
            scenario("4. PCR mismatch -> stock prompt -> recovery key", recovery_key)
        if core:
            scenario("5. no TPM -> stock prompt -> passphrase", no_tpm)
            scenario("6. sealroot=off: stock prompt, and the fence holds in the booted root",
                     switched_off)
        if full:
            scenario("7. substituted root with the victim's UUID and a fenceless token: "
                     "fenced before the prompt, the real key stays sealed", substituted_root)
            # Before the PIN scenario, which replaces the reference token.
            scenario("8. sealed offline on the host for a new instance's vTPM: unlocks with "
                     "no prompt; under another vTPM -> stock prompt (initramfs-tools only)",
                     offline_sealed)
            # Also before the PIN scenario: it takes the PCR values from the reference token.
            scenario("14. signed policy (initramfs-tools only): an updated initrd prompts "
                     "until approved, then unlocks with no prompt; the old one still does",
                     signed_policy)
        scenario("PIN asked through the initrd's prompt: wrong, then right", pin)
        if full:
            scenario("9. golden image (initramfs-tools only): provisioned on the host, "
                     "escrow to an age recipient", golden_image)
            scenario("10. golden instance A (initramfs-tools only): first boot provisions "
                     "with no input, re-encrypts after switch-root; second boot: TPM, no "
                     "prompt", golden_instance_a)
            scenario("11. golden instance B (initramfs-tools only): power cut mid "
                     "re-encryption; the next boot finishes it, files intact; then TPM, no "
                     "prompt", golden_instance_b)
            scenario("12. golden instances on the host (initramfs-tools only): provisioning "
                     "key opens neither; keys differ; the image key no longer decrypts; "
                     "escrows decrypt with age", golden_keys)
            scenario("13. golden instance A (initramfs-tools only): escrowed recovery key at "
                     "the stock prompt; cryptsetup reencrypt figures", golden_recovery_and_figures)
            scenario("15. updates keep unlocking (initramfs-tools only): a local approval key; "
                     "update-initramfs with a new command line approves the next boot from "
                     "the booted system; an initrd swapped behind its back prompts",
                     updates)
    except Failure as e:
        print(f"FAIL ({release}, {flavour}): {e}", file=sys.stderr)
        return 1
    print(f"e2e {release} {flavour}: all {len(results)} scenarios passed in "
          f"{sum(t for _, t in results):.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
