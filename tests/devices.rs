//! `unlock --wait` finds a UUID= volume on the kernel's own nodes (src/devices.rs): real
//! LUKS2 headers from cryptsetup, probed by the real libblkid, behind a stand-in for
//! /sys/class/block and /dev (the host's own disks are not touched).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sealroot::devices::{self, Scan, Source};

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        Tree { dir }
    }

    fn scan(&self) -> Scan {
        Scan::at(
            self.dir.path().join("sys"),
            self.dir.path().join("dev"),
            true,
        )
    }

    /// A block device `name` whose content is `image`.
    fn add(&self, name: &str, image: &Path, held: bool) -> PathBuf {
        let sys = self.dir.path().join("sys").join(name);
        std::fs::create_dir_all(sys.join("holders")).unwrap();
        if held {
            std::fs::write(sys.join("holders/dm-0"), "").unwrap();
        }
        std::fs::write(sys.join("dev"), "252:0\n").unwrap();
        std::fs::write(sys.join("size"), "16384\n").unwrap();
        let node = self.dir.path().join("dev").join(name);
        std::fs::copy(image, &node).unwrap();
        node
    }
}

fn luks_image(dir: &Path, name: &str) -> (PathBuf, String) {
    let pass = dir.join("pass");
    std::fs::write(&pass, common::PASSPHRASE).unwrap();
    let image = common::make_image(dir, name, &pass);
    let out = common::checked(Command::new("cryptsetup").arg("luksUUID").arg(&image));
    (
        image,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

#[test]
fn a_luks_disk_is_found_on_its_kernel_node() {
    let t = Tree::new();
    let (image, uuid) = luks_image(t.dir.path(), "a.img");
    let node = t.add("vdb", &image, false);
    let mut scan = t.scan();
    // Upper case, as a crypttab may spell it.
    let source = Source::parse(&format!("UUID={}", uuid.to_uppercase()));
    assert_eq!(scan.locate(&source), Some(node));
    assert_eq!(
        scan.locate(&Source::parse("UUID=00000000-0000-0000-0000-000000000000")),
        None
    );
}

#[test]
fn a_disk_that_appears_during_the_wait_is_found_then() {
    let t = Tree::new();
    let (image, uuid) = luks_image(t.dir.path(), "a.img");
    let mut scan = t.scan();
    let source = Source::parse(&format!("UUID={uuid}"));
    let started = Instant::now();
    let mut rounds = 0;
    let got = devices::wait(
        std::slice::from_ref(&source),
        &mut scan,
        Instant::now() + Duration::from_secs(10),
        || {
            rounds += 1;
            if rounds == 5 {
                t.add("nvme0n1p2", &image, false);
            }
        },
    );
    assert_eq!(got, vec![t.dir.path().join("dev/nvme0n1p2")]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn two_disks_with_one_uuid_are_left_to_udev() {
    let t = Tree::new();
    let (image, uuid) = luks_image(t.dir.path(), "a.img");
    t.add("sda", &image, false);
    t.add("sdb", &image, false);
    let mut scan = t.scan();
    assert_eq!(scan.locate(&Source::parse(&format!("UUID={uuid}"))), None);
}

#[test]
fn components_and_devices_outside_the_list_are_not_taken() {
    let t = Tree::new();
    let (image, uuid) = luks_image(t.dir.path(), "a.img");
    let source = Source::parse(&format!("UUID={uuid}"));
    // Something is built on it (an MD array, LVM, multipath).
    t.add("sdc", &image, true);
    // Device-mapper, MD and loop devices are udev's to link.
    t.add("dm-3", &image, false);
    t.add("md0", &image, false);
    t.add("loop0", &image, false);
    assert_eq!(t.scan().locate(&source), None);
    // The scan switched off (multipath in the root): only udev's link counts.
    let t2 = Tree::new();
    t2.add("sdd", &image, false);
    assert_eq!(
        Scan::at(t2.dir.path().join("sys"), t2.dir.path().join("dev"), false).locate(&source),
        None
    );
}

#[test]
fn a_plain_filesystem_is_no_luks_device() {
    let t = Tree::new();
    let fs = t.dir.path().join("fs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", "11111111-2222-3333-4444-555555555555"])
        .arg(&fs)
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.add("vdc", &fs, false);
    assert_eq!(
        t.scan()
            .locate(&Source::parse("UUID=11111111-2222-3333-4444-555555555555")),
        None
    );
}

/// `unlock --wait` against swtpm, with sealroot's debug log.
fn unlock_waiting(f: &common::Fixture, extra: &[&str]) -> common::Run {
    let tcti = f.tpm.tcti();
    let mut args = vec![
        "unlock",
        f.image.to_str().unwrap(),
        "root",
        "--test",
        "--wait",
        "5",
        "--tcti",
        &tcti,
    ];
    args.extend_from_slice(extra);
    common::run_with_env(&args, b"", &[("SEALROOT_LOG", "debug")])
}

#[test]
fn the_wait_opens_the_tpm_and_the_unseal_takes_its_early_session() {
    let f = common::Fixture::new();
    f.enroll(&[]);
    let r = unlock_waiting(&f, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for said in [
        "TPM opened early",
        "using the session started early",
        "token unsealed (while the header loaded)",
    ] {
        assert!(r.stderr.contains(said), "no {said:?}: {}", r.stderr);
    }
}

#[test]
fn no_early_session_with_a_storage_key_other_than_the_pinned_one() {
    let f = common::Fixture::new();
    f.enroll(&[]);
    // The initrd was built for another TPM's storage key.
    let other = format!("000b{}", "ab".repeat(32));
    let r = unlock_waiting(&f, &["--srk-name", &other]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stderr.contains("using the session started early"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("this initrd was built for"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_tpm_device_that_never_appears_ends_its_wait() {
    let f = common::Fixture::new();
    f.enroll(&[]);
    let started = Instant::now();
    let r = common::run_with_env(
        &[
            "unlock",
            f.image.to_str().unwrap(),
            "root",
            "--test",
            "--no-fence",
            "--wait",
            "5",
            "--tpm-wait",
            "1",
            "--tcti",
            "device:/dev/sealroot-test-no-such-tpm",
        ],
        b"",
        &[],
    );
    let waited = started.elapsed();
    assert!(r.stderr.contains("no TPM device after 1 s"), "{}", r.stderr);
    assert_eq!(r.code, 4, "TPM unavailable: {}", r.stderr);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn an_early_session_nobody_used_is_flushed() {
    let f = common::Fixture::new();
    // The storage key exists (enroll made it), but the volume has no token: the session
    // started while waiting is never used.
    let plain = common::make_image(f.dir.path(), "plain.img", &f.passfile);
    f.enroll(&[]);
    let tcti = f.tpm.tcti();
    let r = common::run_with_env(
        &[
            "unlock",
            plain.to_str().unwrap(),
            "root",
            "--test",
            "--no-fence",
            "--wait",
            "5",
            "--tcti",
            &tcti,
        ],
        b"",
        &[("SEALROOT_LOG", "debug")],
    );
    assert_eq!(r.code, 3, "no usable token: {}", r.stderr);
    assert!(r.stderr.contains("TPM opened early"), "{}", r.stderr);
    // swtpm has no resource manager: a session left behind would still be loaded.
    let loaded = f.tpm.tools(&["tpm2_getcap", "handles-loaded-session"]);
    assert!(
        loaded.trim().is_empty(),
        "sessions left in the TPM: {loaded}"
    );
}
