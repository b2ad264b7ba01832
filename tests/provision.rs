//! Golden images: `provision` marks an image on the builder (no TPM), the first
//! `unlock` of each instance makes it unique (new volume key by offline re-encryption here,
//! a key sealed to its own swtpm, a recovery key escrowed to an `age` recipient), and a
//! crash at any step boundary (SIGKILL) is finished by the next run with no working keyslot
//! lost. The escrow is decrypted with the real `age`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, PASSPHRASE, checked, export_token, run, run_with_env};

/// The builder's age identity and its recipient.
fn age_identity(f: &Fixture) -> (PathBuf, String) {
    let id = f.path("builder-age.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&id)
        .output()
        .expect("age-keygen must be installed (make deps)");
    assert!(out.status.success());
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&id)
        .output()
        .unwrap();
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (id, recipient)
}

fn provision(f: &Fixture, extra: &[&str]) -> common::Run {
    let img = f.image.to_str().unwrap();
    let pf = f.passfile.to_str().unwrap();
    let mut args = vec!["provision", img, "--unlock-key-file", pf];
    args.extend_from_slice(extra);
    run(&args)
}

/// The provisioning key's keyslot passphrase, as anyone with the image can read it.
fn provisioning_passphrase(image: &Path) -> String {
    for id in 0..8 {
        let out = Command::new("cryptsetup")
            .args(["token", "export", "--token-id", &id.to_string()])
            .arg(image)
            .output()
            .unwrap();
        if out.status.success() {
            let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if t["type"] == "sealroot-provision" {
                return t["provisioning_key"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no provision token");
}

fn opens(f: &Fixture, secret: &str) -> bool {
    let file = f.write("try.key", secret.as_bytes());
    let img = f.image.to_str().unwrap();
    run(&[
        "recover",
        img,
        "probe",
        "--test",
        "--key-file",
        file.to_str().unwrap(),
    ])
    .code
        == 0
}

/// The volume key, dumped by cryptsetup with a passphrase that opens it.
fn volume_key(image: &Path, passphrase: &str, dir: &Path) -> Vec<u8> {
    let keyfile = dir.join("vk-pass");
    std::fs::write(&keyfile, passphrase).unwrap();
    let vk = dir.join("vk.bin");
    let _ = std::fs::remove_file(&vk);
    checked(
        Command::new("cryptsetup")
            .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
            .arg(&vk)
            .arg("--key-file")
            .arg(&keyfile)
            .arg(image),
    );
    std::fs::read(&vk).unwrap()
}

fn token_types(image: &Path) -> Vec<String> {
    (0..8)
        .filter_map(|id| {
            let out = Command::new("cryptsetup")
                .args(["token", "export", "--token-id", &id.to_string()])
                .arg(image)
                .output()
                .ok()?;
            out.status.success().then(|| {
                let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                t["type"].as_str().unwrap().to_string()
            })
        })
        .collect()
}

fn keyslot_count(image: &Path) -> usize {
    let out = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("Keyslots:")
        .nth(1)
        .and_then(|s| s.split("Tokens:").next())
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("  ") && l.contains(": luks2"))
                .count()
        })
        .unwrap_or(0)
}

/// The escrowed recovery key, decrypted by the stock age with the builder's identity.
fn escrowed_recovery_key(f: &Fixture, identity: &Path) -> String {
    let shown = run(&["escrow", "show", f.image.to_str().unwrap()]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
    );
    let age_file = f.write("escrow.age", shown.stdout.as_bytes());
    let out = checked(
        Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(&age_file),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The initrd's part of a first boot, on the image file (`unlock` does the same at boot,
/// activating the volume).
fn initrd_part(f: &Fixture) -> common::Run {
    f.run(&["first-boot", f.image.to_str().unwrap()])
}

/// The instance's first boot: the initrd's unlock (keys, seal, escrow, set-up), then
/// `finish-provisioning` after switch-root (the data pass; offline on an image file).
/// Returns everything both parts printed.
fn first_boot(f: &Fixture) -> String {
    let r = initrd_part(f);
    assert_eq!(r.code, 0, "first boot, initrd: {}", r.stderr);
    let mut printed = r.stdout + &r.stderr;
    let img = f.image.to_str().unwrap();
    let r = run(&["finish-provisioning", img]);
    assert_eq!(r.code, 0, "first boot, after switch-root: {}", r.stderr);
    printed += &(r.stdout + &r.stderr);
    let status = run(&["status", img]);
    assert!(!status.stdout.contains("provisioning"), "{}", status.stdout);
    assert!(
        !status.stdout.contains("re-encryption"),
        "{}",
        status.stdout
    );
    printed
}

/// What a provisioned instance must look like: its own sealed key and escrowed recovery
/// key, nothing of the image (builder passphrase, provisioning key) opening it.
fn assert_provisioned(f: &mut Fixture, identity: &Path, provisioning: &str) {
    assert_eq!(token_types(&f.image), ["sealroot", "sealroot-recovery"]);
    assert_eq!(
        keyslot_count(&f.image),
        2,
        "only the sealed and the recovery keyslot"
    );
    assert!(
        !opens(f, PASSPHRASE),
        "the builder's passphrase still opens the instance"
    );
    assert!(
        !opens(f, provisioning),
        "the provisioning key still opens the instance"
    );
    let recovery = escrowed_recovery_key(f, identity);
    assert!(
        opens(f, &recovery),
        "the escrowed recovery key does not open it"
    );
    // The next boot: the TPM, no provisioning.
    f.tpm.reset();
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 0, "second boot: {}", r.stderr);
    assert!(!r.stderr.contains("provisioning"), "{}", r.stderr);
}

#[test]
fn first_boot_makes_the_instance_its_own() {
    let mut f = Fixture::new();
    let (identity, recipient) = age_identity(&f);
    let image_key = volume_key(&f.image, PASSPHRASE, f.dir.path());
    let r = provision(&f, &["--pcrs", "7", "--escrow", &recipient]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("only as secret as the image file"),
        "{}",
        r.stderr
    );
    let provisioning = provisioning_passphrase(&f.image);
    let before = common::file_hash(&f.image);

    // Between the initrd's part and the data pass, status says where it stands.
    let first = initrd_part(&f);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let status = run(&["status", f.image.to_str().unwrap()]);
    assert!(
        status.stdout.contains("re-encryption: in progress")
            && status.stdout.contains(
                "first-boot provisioning pending: done so far [new-key, sealed, escrowed, verified, reencrypt-started]"
            ),
        "{}",
        status.stdout
    );
    let printed = first.stderr + &first_boot(&f);
    assert_ne!(common::file_hash(&f.image), before);
    let recovery = escrowed_recovery_key(&f, &identity);
    assert!(
        !printed.contains(recovery.trim()),
        "the recovery key reached the console"
    );
    let own_key = volume_key(&f.image, &recovery, f.dir.path());
    assert_ne!(
        own_key, image_key,
        "the instance kept the image's volume key"
    );
    assert_provisioned(&mut f, &identity, &provisioning);
}

#[test]
fn two_instances_of_one_image_get_different_keys() {
    let builder = Fixture::new();
    let (identity, recipient) = age_identity(&builder);
    assert_eq!(provision(&builder, &["--escrow", &recipient]).code, 0);
    let image_key = volume_key(&builder.image, PASSPHRASE, builder.dir.path());
    let mut keys = Vec::new();
    for _ in 0..2 {
        let mut instance = Fixture::new();
        std::fs::copy(&builder.image, &instance.image).unwrap();
        first_boot(&instance);
        let recovery = escrowed_recovery_key(&instance, &identity);
        keys.push(volume_key(&instance.image, &recovery, instance.dir.path()));
        assert_provisioned(
            &mut instance,
            &identity,
            &provisioning_passphrase(&builder.image),
        );
    }
    assert_ne!(keys[0], keys[1]);
    assert!(keys.iter().all(|k| *k != image_key));
}

#[test]
fn without_reencryption_only_the_keyslots_become_the_instances() {
    let mut f = Fixture::new();
    let (identity, recipient) = age_identity(&f);
    let image_key = volume_key(&f.image, PASSPHRASE, f.dir.path());
    let r = provision(&f, &["--escrow", &recipient, "--no-reencrypt"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("--no-reencrypt"), "{}", r.stderr);
    let provisioning = provisioning_passphrase(&f.image);
    first_boot(&f);
    let recovery = escrowed_recovery_key(&f, &identity);
    assert_eq!(volume_key(&f.image, &recovery, f.dir.path()), image_key);
    assert_provisioned(&mut f, &identity, &provisioning);
}

#[test]
fn unlock_test_never_provisions() {
    let f = Fixture::new();
    let (_, recipient) = age_identity(&f);
    assert_eq!(provision(&f, &["--escrow", &recipient]).code, 0);
    let before = f.image_hash();
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("awaits its first-boot provisioning"),
        "{}",
        r.stderr
    );
    assert_eq!(f.image_hash(), before);
}

#[test]
fn reencrypting_in_the_initrd_finishes_in_one_boot() {
    let mut f = Fixture::new();
    let (identity, recipient) = age_identity(&f);
    let r = provision(&f, &["--escrow", &recipient, "--reencrypt-in-initrd"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let provisioning = provisioning_passphrase(&f.image);
    let r = initrd_part(&f);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["finish-provisioning", f.image.to_str().unwrap()]);
    assert!(r.stderr.contains("nothing to finish"), "{}", r.stderr);
    assert_provisioned(&mut f, &identity, &provisioning);
}

/// Every step boundary of the initrd's part, then of the part after switch-root, and the
/// middle of the data pass.
const INITRD_CRASH_POINTS: &[&str] = &[
    "opened",
    "new-key-keyslot",
    "new-key",
    "sealed-keyslot",
    "sealed-token",
    "sealed",
    "escrow-keyslot",
    "escrow-token",
    "escrowed",
    "verified",
    "reencrypt-started",
];
const AFTER_BOOT_CRASH_POINTS: &[&str] = &["reencrypt-half", "reencrypted", "keyslot-removed"];

#[test]
fn a_crash_at_any_step_is_finished_by_the_next_boot() {
    let points = INITRD_CRASH_POINTS
        .iter()
        .map(|p| (p, true))
        .chain(AFTER_BOOT_CRASH_POINTS.iter().map(|p| (p, false)));
    for (point, in_initrd) in points {
        let mut f = Fixture::new();
        if *point == "reencrypt-half" {
            // Several 32 MiB hotzones, so the crash falls between two of them.
            f.image = common::make_image_of(f.dir.path(), "big.img", &f.passfile, 120 << 20);
        }
        let (identity, recipient) = age_identity(&f);
        assert_eq!(provision(&f, &["--escrow", &recipient]).code, 0);
        let provisioning = provisioning_passphrase(&f.image);
        let img = f.image.to_str().unwrap().to_string();
        let tcti = f.tpm.tcti();
        let crash = [("SEALROOT_CRASH_AT", *point)];
        let r = if in_initrd {
            run_with_env(&["first-boot", &img, "--tcti", &tcti], b"", &crash)
        } else {
            let r = initrd_part(&f);
            assert_eq!(r.code, 0, "{point}: {}", r.stderr);
            run_with_env(&["finish-provisioning", &img], b"", &crash)
        };
        assert_eq!(r.code, -1, "{point}: not killed there: {}", r.stderr);
        if *point == "reencrypt-half" {
            let dump = checked(Command::new("cryptsetup").arg("luksDump").arg(&f.image));
            let dump = String::from_utf8_lossy(&dump.stdout).to_string();
            assert!(
                dump.contains("online-reencrypt"),
                "not stopped mid-way: {dump}"
            );
        }
        // Still openable by what it had: the provisioning key until the image's keyslots
        // go, the TPM after.
        f.tpm.reset();
        let by_provisioning_key = opens(&f, &provisioning);
        assert!(
            by_provisioning_key || f.unlock_test(&["--no-fence"]).code == 0,
            "{point}: neither the provisioning key nor the TPM opens the volume"
        );
        f.tpm.reset();
        let _ = first_boot(&f);
        assert_provisioned(&mut f, &identity, &provisioning);
    }
}

#[test]
fn finish_provisioning_pauses_on_sigterm_and_resumes() {
    let mut f = Fixture::new();
    f.image = common::make_image_of(f.dir.path(), "big.img", &f.passfile, 400 << 20);
    let (identity, recipient) = age_identity(&f);
    assert_eq!(provision(&f, &["--escrow", &recipient]).code, 0);
    let provisioning = provisioning_passphrase(&f.image);
    assert_eq!(initrd_part(&f).code, 0);
    let child = Command::new(common::bin())
        .args(["finish-provisioning", f.image.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get into the data pass, then stop it as a shutdown would.
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        // Finished before the signal: still a valid outcome, if a less interesting one.
        eprintln!("finish-provisioning completed before SIGTERM: {stderr}");
    } else {
        assert!(stderr.contains("paused on request"), "{stderr}");
        let r = run(&["finish-provisioning", f.image.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_provisioned(&mut f, &identity, &provisioning);
}

#[test]
fn bad_provisioning_requests_change_nothing() {
    let f = Fixture::new();
    let (_, recipient) = age_identity(&f);
    let before = f.image_hash();
    let wrong = f.write("wrong", b"not the passphrase");
    let img = f.image.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "--escrow"),
        (
            vec!["--escrow", "age1notakey"],
            "not an age X25519 recipient",
        ),
        (vec!["--escrow", &recipient, "--pcrs", "7,15"], "fence"),
    ];
    for (extra, want) in cases {
        let r = provision(&f, &extra);
        assert_eq!(r.code, 2, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert_eq!(f.image_hash(), before);
    }
    let r = run(&[
        "provision",
        img,
        "--unlock-key-file",
        wrong.to_str().unwrap(),
        "--escrow",
        &recipient,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
    // Marked once: a second time is refused.
    assert_eq!(provision(&f, &["--escrow", &recipient]).code, 0);
    let marked = f.image_hash();
    let r = provision(&f, &["--escrow", &recipient]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("already marked"), "{}", r.stderr);
    assert_eq!(f.image_hash(), marked);
}

#[test]
fn an_image_with_a_key_sealed_to_the_builder_is_refused() {
    let f = Fixture::new();
    let (_, recipient) = age_identity(&f);
    f.enroll(&[]);
    let before = f.image_hash();
    let r = provision(&f, &["--escrow", &recipient]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("sealroot remove --all"), "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}

#[test]
fn a_provision_token_from_another_image_is_ignored() {
    // The attacker copies a provision token (and its key) into the victim's header: the key
    // opens none of the victim's keyslots, so nothing is provisioned and the victim's own
    // token unlocks as before.
    let victim = Fixture::new();
    victim.enroll(&[]);
    let other = Fixture::new();
    let (_, recipient) = age_identity(&other);
    assert_eq!(provision(&other, &["--escrow", &recipient]).code, 0);
    let foreign = (0..4)
        .map(|id| export_token(&other.image, id))
        .find(|t| t["type"] == "sealroot-provision")
        .unwrap();
    let mut child = Command::new("cryptsetup")
        .args(["token", "import"])
        .arg(&victim.image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(foreign.to_string().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let before = victim.image_hash();
    let r = initrd_part(&victim);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("ignoring provision token"),
        "{}",
        r.stderr
    );
    assert_eq!(victim.image_hash(), before, "the victim's header changed");
}

#[test]
fn a_provision_token_with_another_fence_is_refused_before_anything_is_sealed() {
    let f = Fixture::new();
    let (_, recipient) = age_identity(&f);
    let r = provision(&f, &["--escrow", &recipient, "--fence-pcr", "14"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = f.image_hash();
    // This initrd's fence is 15 (the default): the header's 14 is refused.
    let r = initrd_part(&f);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("this system's fence is PCR 15"),
        "{}",
        r.stderr
    );
    assert_eq!(f.image_hash(), before, "something was written");
}
