"""The VM boot test's driver and host-side checks (tests/vm/e2e.py runs the scenarios in
tests/vm/cases/; bench_boot.py boots the same way): a Debian guest with a LUKS2 root, booted
by QEMU (TCG, OVMF: kernel and initrd measured into PCR 4, command line into PCR 9) with
swtpm as its TPM, its serial console read with pexpect. Every process started here (qemu,
swtpm) is stopped by its PID, also on failure.
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


def fence_before_prompt(text):
    fence = text.find("sealroot: fence PCR 15 extended")
    prompt = PROMPT.search(text)
    if fence < 0 or prompt is None or fence > prompt.start():
        raise Failure("the fence must be extended before the prompt")
