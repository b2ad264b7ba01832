//! The boot scripts fail closed (trust model requirement 3): the initramfs-tools local-top
//! script runs, with the real share/boot.sh and the static sealroot, in a minimal root
//! (busybox sh, a faked /proc/cmdline) against swtpm, and whatever the kernel command line
//! or the volume list says, PCR 15 is extended when it returns.
//! Needs the static binary (SEALROOT_BIN, as `make test` sets it) and root (chroot).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, Swtpm};

const SCRIPT: &str = "initramfs-tools/scripts/local-top/sealroot";

struct Root {
    dir: PathBuf,
}

/// A root holding busybox, the static sealroot, share/boot.sh, the local-top script, the
/// fixture's disk image as /disk.img, and a trusted configuration naming the swtpm.
fn make_root(f: &Fixture, bin: &Path, volumes: &str) -> Root {
    let root = f.path("root");
    for d in [
        "bin",
        "usr/sbin",
        "usr/share/sealroot",
        "etc/sealroot",
        "scripts",
        "proc",
        "dev",
        "run",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in [
        "sh", "cat", "cut", "wc", "sleep", "env", "mkdir", "awk", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(bin, root.join("usr/sbin/sealroot")).unwrap();
    std::fs::copy("share/boot.sh", root.join("usr/share/sealroot/boot.sh")).unwrap();
    std::fs::copy(SCRIPT, root.join("local-top")).unwrap();
    std::fs::write(root.join("scripts/functions"), "").unwrap();
    std::fs::copy(&f.image, root.join("disk.img")).unwrap();
    std::fs::write(root.join("etc/sealroot/volumes"), volumes).unwrap();
    common::make_dev_nodes(&root);
    // The hook's way: `sealroot initrd-config` from the host's configuration.
    let host_conf = f.write(
        "sealroot.conf",
        format!("tcti={}\n", f.tpm.tcti()).as_bytes(),
    );
    let out = Command::new(bin)
        .args(["initrd-config", "--config"])
        .arg(&host_conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("etc/sealroot/initrd.conf"), &out.stdout).unwrap();
    Root { dir: root }
}

impl Root {
    /// Runs the local-top script with this kernel command line and environment.
    fn boot(&self, cmdline: &str, env: &[(&str, &str)]) -> (i32, String) {
        std::fs::write(self.dir.join("proc/cmdline"), format!("{cmdline}\n")).unwrap();
        let out = Command::new("/usr/sbin/chroot")
            .arg(&self.dir)
            .args(["/bin/sh", "/local-top"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .output()
            .expect("chroot");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

fn setup() -> Option<(Fixture, PathBuf)> {
    let bin = PathBuf::from(std::env::var_os("SEALROOT_BIN")?);
    let is_static = Command::new("file")
        .arg(&bin)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        .unwrap_or(false);
    if !is_static || !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs the static binary (SEALROOT_BIN) and root");
        return None;
    }
    let f = Fixture::new();
    f.enroll(&[]);
    Some((f, bin))
}

fn fenced(tpm: &Swtpm) -> bool {
    tpm.read(15) != vec![0u8; 32]
}

#[test]
fn sealroot_off_still_fences() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /disk.img\n");
    let (code, out) = root.boot("quiet sealroot=off", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(fenced(&f.tpm), "sealroot=off left PCR 15 at zeros: {out}");
}

#[test]
fn a_timeout_with_shell_code_is_ignored_and_the_fence_extended() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /disk.img\n");
    let (_, out) = root.boot("sealroot.timeout=a[$(touch${IFS}/pwned)]", &[]);
    assert!(!root.dir.join("pwned").exists(), "the command ran: {out}");
    assert!(fenced(&f.tpm), "the script stopped before the fence: {out}");
}

#[test]
fn a_volume_name_that_looks_like_an_option_still_fences() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "--no-fence /disk.img\n");
    let (_, out) = root.boot("quiet", &[]);
    assert!(fenced(&f.tpm), "{out}");
}

#[test]
fn the_kernel_command_line_environment_does_not_reach_sealroot() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /disk.img\n");
    // init passes unknown NAME=value parameters on as environment: an attacker's TPM.
    let elsewhere = Swtpm::start(f.dir.path());
    let (_, out) = root.boot(
        "quiet",
        &[
            ("SEALROOT_TCTI", &elsewhere.tcti()),
            ("TSS2_LOG", "all+trace"),
        ],
    );
    assert!(fenced(&f.tpm), "the fence went elsewhere: {out}");
    assert!(!fenced(&elsewhere), "{out}");
    assert!(!out.contains("esys"), "tpm2-tss logged: {out}");
}

#[test]
fn a_crashing_unlock_is_followed_by_the_fence() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /disk.img\n");
    // sealroot killed before it could fence (stands in for a crash): the script fences.
    let real = root.dir.join("usr/sbin/sealroot.real");
    std::fs::rename(root.dir.join("usr/sbin/sealroot"), &real).unwrap();
    std::fs::write(
        root.dir.join("usr/sbin/sealroot"),
        "#!/bin/sh\ncase \" $* \" in *\" unlock \"*) kill -9 $$ ;; esac\nexec /usr/sbin/sealroot.real \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.dir.join("usr/sbin/sealroot"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (_, out) = root.boot("quiet", &[]);
    // The script's console lines (no console device in this root: a plain file).
    let console = std::fs::read_to_string(root.dir.join("dev/console")).unwrap_or_default();
    assert!(
        console.contains("TPM unlock failed (exit 137)"),
        "{console}"
    );
    assert!(fenced(&f.tpm), "{out}");
}

#[test]
fn a_timeout_with_leading_zeros_does_not_stop_the_unlock() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /disk.img\n");
    // 08 is no number to the shell's arithmetic: taken as-is it would abort the script.
    let (_, out) = root.boot("sealroot.timeout=08 sealroot.tpm-timeout=0009", &[]);
    let console = std::fs::read_to_string(root.dir.join("dev/console")).unwrap_or_default();
    // (Each line replaces the last in this stand-in console: the last one says the unlock
    // ran; in the real initrd it fails only here, where device-mapper is missing.)
    assert!(console.contains("TPM unlock failed"), "{console}{out}");
    assert!(fenced(&f.tpm), "{out}");
}

/// The exit code the script reported for `sealroot unlock` (the console keeps its last
/// write; the script's own lines also reach stdout when there is no console).
fn unlock_exit(root: &Root, out: &str) -> Option<i32> {
    let console = std::fs::read_to_string(root.dir.join("dev/console")).unwrap_or_default();
    let text = console + out;
    let at = text.find("TPM unlock failed (exit ")? + "TPM unlock failed (exit ".len();
    text[at..].split(')').next()?.parse().ok()
}

/// Makes the root's disk image appear as /late.img after `secs` seconds.
fn disk_appears_after(root: &Root, secs: u64) -> std::thread::JoinHandle<()> {
    let (from, to) = (root.dir.join("disk.img"), root.dir.join("late.img"));
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        std::fs::rename(from, to).unwrap();
    })
}

#[test]
fn a_disk_that_appears_late_is_waited_for() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /late.img\n");
    // The disk shows up 2 s into the 10 s wait (as a slow controller's would).
    let mover = disk_appears_after(&root, 2);
    let started = std::time::Instant::now();
    let (_, out) = root.boot("quiet", &[]);
    mover.join().unwrap();
    // The unlock reached the volume: the key unsealed and only activation failed (this
    // host has no device-mapper), not exit 7 (device missing).
    let code = unlock_exit(&root, &out);
    assert!(code.is_some() && code != Some(7), "{code:?}: {out}");
    assert!(
        started.elapsed().as_secs() < 10,
        "waited past the disk: {out}"
    );
    assert!(fenced(&f.tpm), "{out}");
}

#[test]
fn a_disk_later_than_the_timeout_is_reported_missing() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /late.img\n");
    let mover = disk_appears_after(&root, 3);
    let (_, out) = root.boot("quiet sealroot.timeout=1", &[]);
    mover.join().unwrap();
    assert_eq!(unlock_exit(&root, &out), Some(7), "{out}");
    assert!(fenced(&f.tpm), "{out}");
}

#[test]
fn a_disk_that_never_appears_ends_the_wait_at_the_timeout_and_fences() {
    let Some((f, bin)) = setup() else { return };
    let root = make_root(&f, &bin, "root /never.img\n");
    let started = std::time::Instant::now();
    let (code, out) = root.boot("quiet sealroot.timeout=2", &[]);
    assert_eq!(code, 0, "the script never stops the boot: {out}");
    assert_eq!(unlock_exit(&root, &out), Some(7), "device missing: {out}");
    let waited = started.elapsed().as_secs_f64();
    assert!(
        (2.0..10.0).contains(&waited),
        "waited {waited:.1} s for a 2 s timeout: {out}"
    );
    assert!(fenced(&f.tpm), "{out}");
}
