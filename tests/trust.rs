//! The LUKS2 header is attacker input (README "Trust boundary"): each test reproduces an
//! attack an independent review found, against swtpm and real LUKS2 images, and shows it
//! defeated. Each failed on the code before the fix.

mod common;

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{BusCapture, Fixture, export_token, make_image, replace_token, run_with_env};
use serde_json::json;

fn fence_is_extended(f: &Fixture) -> bool {
    f.tpm.read(15) != vec![0u8; 32]
}

fn lockout_counter(f: &Fixture) -> u64 {
    f.tpm.lockout_counter()
}

fn luks_uuid(image: &std::path::Path) -> String {
    let out = Command::new("cryptsetup")
        .arg("luksUUID")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_genuine_token_edited_to_have_no_fence_is_refused_and_the_fence_still_extends() {
    let f = Fixture::new();
    f.enroll(&[]);
    let mut t = export_token(&f.image, 0);
    t["fence_pcr"] = json!(null);
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("without a fence"), "{}", r.stderr);
    assert!(fence_is_extended(&f), "PCR 15 left at zeros");
}

#[test]
fn a_substituted_volume_with_the_victims_uuid_cannot_leave_the_fence_open() {
    let f = Fixture::new();
    f.enroll(&[]);
    // The attacker's disk: its own passphrase, the victim's UUID and a copy of the
    // victim's token with the fence removed.
    let attacker_pass = f.write("attacker-pass", b"attacker passphrase");
    let fake = make_image(f.dir.path(), "attacker.img", &attacker_pass);
    let set_uuid = Command::new("cryptsetup")
        .args(["luksUUID", "-q", "--uuid", &luks_uuid(&f.image)])
        .arg(&fake)
        .status()
        .unwrap();
    assert!(set_uuid.success());
    let mut t = export_token(&f.image, 0);
    t["fence_pcr"] = json!(null);
    t["keyslots"] = json!(["0"]);
    let mut import = Command::new("cryptsetup")
        .args(["token", "import", "--token-id", "0"])
        .arg(&fake)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    import
        .stdin
        .take()
        .unwrap()
        .write_all(t.to_string().as_bytes())
        .unwrap();
    assert!(import.wait().unwrap().success());
    // The genuine initrd tries the substituted disk, fails, and fences.
    let r = f.run(&["unlock", fake.to_str().unwrap(), "root", "--test"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(fence_is_extended(&f), "PCR 15 left at zeros at the prompt");
    // The attacker's root (after their passphrase at the prompt) asks for the real key.
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "the real disk's key was released: {}", r.stderr);
}

#[test]
fn resettable_pcrs_are_never_a_fence() {
    let f = Fixture::new();
    let img = f.image.to_str().unwrap();
    let pass = f.passfile.to_str().unwrap();
    for pcr in ["16", "23", "17", "7"] {
        let r = f.run(&["enroll", img, "--unlock-key-file", pass, "--fence-pcr", pcr]);
        assert_eq!(r.code, 2, "fence {pcr}: {}", r.stderr);
        let r = f.unlock_test(&["--fence-pcr", pcr]);
        if pcr != "7" {
            assert_eq!(r.code, 2, "unlock --fence-pcr {pcr}: {}", r.stderr);
        }
    }
    let status = f.run(&["status", img]);
    assert!(!status.stdout.contains("token 0"), "{}", status.stdout);
}

#[test]
fn an_attacker_storage_key_is_refused_before_the_pin_and_costs_no_strike() {
    let f = Fixture::new();
    let pin = f.write("pin", b"2468\n");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let original = export_token(&f.image, 0);
    // A storage key of the attacker's (a valid P-256 key: another TPM's SRK) in place
    // of this TPM's, at the same handle.
    let attacker = Fixture::new();
    attacker.enroll(&[]);
    let mut t = original.clone();
    t["tpm2_srk_public"] = export_token(&attacker.image, 0)["tpm2_srk_public"].clone();
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert!(!r.stderr.contains("wrong PIN"), "{}", r.stderr);
    assert_eq!(
        lockout_counter(&f),
        0,
        "a dictionary-attack strike was spent"
    );

    // Another persistent handle than the configured one.
    let mut t = original.clone();
    t["tpm2_srk_handle"] = json!("0x81000002");
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(lockout_counter(&f), 0);

    // A Name pinned at initrd build time is checked the same way, and the genuine token
    // still unlocks against it.
    replace_token(&f.image, 0, &original);
    let srk = B64
        .decode(original["tpm2_srk_public"].as_str().unwrap())
        .unwrap();
    let name = hex::encode(sealroot::tpm::object::name_of(&srk).unwrap());
    let pin_s = pin.to_str().unwrap();
    let ok = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--srk-name", &name]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let mut other = name.clone();
    other.replace_range(10..12, "00");
    if other == name {
        other.replace_range(10..12, "11");
    }
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--srk-name", &other]);
    assert_eq!(r.code, 3, "{}", r.stderr);
}

#[test]
fn pin_stretching_cannot_be_lowered_in_the_header() {
    let f = Fixture::new();
    let pin = f.write("pin", b"2468\n");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let mut t = export_token(&f.image, 0);
    t["tpm2_pin_iterations"] = json!(1000);
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(lockout_counter(&f), 0);
}

#[test]
fn tss2_log_from_the_environment_prints_nothing() {
    let f = Fixture::new();
    f.enroll(&[]);
    let img = f.image.to_str().unwrap();
    let tcti = f.tpm.tcti();
    let args = [
        "unlock",
        img,
        "root",
        "--test",
        "--no-fence",
        "--tcti",
        &tcti,
    ];
    let r = run_with_env(&args, b"", &[("TSS2_LOG", "all+trace")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for noise in ["esys", "Unseal", "TRACE", "DEBUG"] {
        assert!(!r.stderr.contains(noise), "tpm2-tss logged: {}", r.stderr);
    }
}

#[test]
fn a_cached_pin_is_offered_once_then_the_volumes_own_pin_is_asked() {
    let f = Fixture::new();
    let second = make_image(f.dir.path(), "second.img", &f.passfile);
    let (pin1, pin2) = (f.write("pin1", b"1111\n"), f.write("pin2", b"2222\n"));
    f.enroll(&["--pin", "--pin-file", pin1.to_str().unwrap()]);
    let r = f.run(&[
        "enroll",
        second.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
        "--pin",
        "--pin-file",
        pin2.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // An askpass that answers with each volume's own PIN (it sees the volume's name).
    let askpass = f.write(
        "askpass",
        b"#!/bin/sh\ncase \"$1\" in *root*) echo 1111 ;; *home*) echo 2222 ;; esac\n",
    );
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r = f.run(&[
        "unlock",
        f.image.to_str().unwrap(),
        "root",
        second.to_str().unwrap(),
        "home",
        "--test",
        "--no-fence",
        "--askpass",
        askpass.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "the second volume was never asked: {}", r.stderr);
}

#[test]
fn remove_does_not_destroy_a_passphrase_slot_a_token_claims() {
    let f = Fixture::new();
    f.enroll(&[]);
    let mut t = export_token(&f.image, 0);
    t["keyslots"] = json!(["0"]);
    replace_token(&f.image, 0, &t);
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not made by sealroot"), "{}", r.stderr);
    let still = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-slot", "0", "--key-file"])
        .arg(&f.passfile)
        .arg(&f.image)
        .status()
        .unwrap();
    assert!(still.success(), "the user's passphrase slot was destroyed");
}

#[test]
fn header_strings_reach_the_terminal_escaped() {
    let f = Fixture::new();
    f.enroll(&[]);
    let mut t = export_token(&f.image, 0);
    t["tpm2_pcr_bank"] = json!("\u{1b}[2J\u{1b}[HPassphrase for root: ");
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "raw escape: {:?}", r.stderr);
    assert!(r.stderr.contains("\\u{1b}[2"), "{}", r.stderr);
}

#[test]
fn enroll_says_when_nothing_binds_the_command_line() {
    let f = Fixture::new();
    let r = f.enroll(&[]);
    assert!(
        r.stderr.contains("do not bind the kernel command line"),
        "{}",
        r.stderr
    );
    let r = f.enroll(&["--pcrs", "7,9"]);
    assert!(!r.stderr.contains("command line"), "{}", r.stderr);
}

const TPM_CC_START_AUTH_SESSION: u32 = 0x176;
const TPM_CC_UNSEAL: u32 = 0x15E;

// The bus capture of an unlock with and without a PIN is tests/bus.rs.

#[test]
fn with_an_attacker_storage_key_no_session_reaches_the_bus() {
    let f = Fixture::new();
    let pin = f.write("pin", b"2468\n");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let attacker = Fixture::new();
    attacker.enroll(&[]);
    let mut t = export_token(&f.image, 0);
    t["tpm2_srk_public"] = export_token(&attacker.image, 0)["tpm2_srk_public"].clone();
    replace_token(&f.image, 0, &t);
    let bus = BusCapture::start(&f.tpm);
    let tcti = bus.tcti();
    let pin_s = pin.to_str().unwrap();
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--tcti", &tcti]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // A sniffer gets no HMAC over the PIN to attack offline: nothing was salted to the
    // attacker's key, let alone unsealed.
    let codes = bus.command_codes();
    assert!(!codes.contains(&TPM_CC_START_AUTH_SESSION), "{codes:x?}");
    assert!(!codes.contains(&TPM_CC_UNSEAL), "{codes:x?}");
}

#[test]
fn a_tpm_in_lockout_is_reported_before_anyone_types_a_pin() {
    let f = Fixture::new();
    f.enroll_pin_then_lock_out("2468");
    // Now in lockout: an askpass that records being run must never be run.
    let asked = f.path("asked");
    let askpass = f.write(
        "askpass",
        format!("#!/bin/sh\ntouch {}\necho 2468\n", asked.display()).as_bytes(),
    );
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r = f.unlock_test(&["--no-fence", "--askpass", askpass.to_str().unwrap()]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("lockout"), "{}", r.stderr);
    assert!(!asked.exists(), "a PIN was asked for in lockout");
}

#[test]
fn enrollment_whose_recovery_key_cannot_be_written_out_leaves_nothing_behind() {
    let f = Fixture::new();
    let img = f.image.to_str().unwrap();
    let before = f.run(&["status", "--json", img]).stdout;
    let out = Command::new(common::bin())
        .args(["enroll", img, "--unlock-key-file"])
        .arg(&f.passfile)
        .args(["--recovery-key", "--tcti", &f.tpm.tcti()])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing was enrolled"), "{stderr}");
    let after = f.run(&["status", "--json", img]).stdout;
    let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(v(&before)["keyslots"], v(&after)["keyslots"]);
    assert_eq!(v(&before)["tokens"], v(&after)["tokens"]);
}

#[test]
fn initrd_config_pins_this_tpms_srk_only_when_asked() {
    let f = Fixture::new();
    let conf = f.write("sealroot.conf", b"srk_name=tpm\n");
    let conf_s = conf.to_str().unwrap();
    // No SRK yet: asked to pin, the build must fail rather than pin nothing.
    let r = f.run(&["initrd-config", "--config", conf_s]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    f.enroll(&[]);
    let r = f.run(&["initrd-config", "--config", conf_s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let srk = B64
        .decode(
            export_token(&f.image, 0)["tpm2_srk_public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let name = hex::encode(sealroot::tpm::object::name_of(&srk).unwrap());
    assert!(
        r.stdout.contains(&format!("srk_name={name}\n")),
        "{}",
        r.stdout
    );
    // Not asked: nothing is read from the TPM (an image builder's chroot).
    let plain = f.write("plain.conf", b"fence_pcr=15\n");
    let r = f.run(&["initrd-config", "--config", plain.to_str().unwrap()]);
    assert!(!r.stdout.contains("srk_name"), "{}", r.stdout);
}

#[test]
fn a_tpm_that_never_answers_does_not_hang_unlock_or_fence() {
    let f = Fixture::new();
    f.enroll(&[]);
    // A "TPM" that accepts connections and never answers (a hung chip or interposer).
    let (cmd, ctl) = loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", port + 1)) {
            break (a, b);
        }
    };
    let port = cmd.local_addr().unwrap().port();
    for l in [cmd, ctl] {
        std::thread::spawn(move || {
            let held: Vec<_> = l.incoming().flatten().collect();
            drop(held);
        });
    }
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    for args in [
        vec!["unlock", f.image.to_str().unwrap(), "root", "--test"],
        vec!["fence"],
    ] {
        let mut full = args.clone();
        full.extend(["--tpm-timeout", "2", "--tcti", &tcti]);
        let t0 = std::time::Instant::now();
        let r = common::run(&full);
        assert_eq!(r.code, 4, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("did not answer within 2 s"),
            "{}",
            r.stderr
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{args:?} hung"
        );
    }
}

#[test]
fn another_process_of_the_same_user_cannot_read_sealroots_memory() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run sealroot as another user");
        return;
    }
    let f = Fixture::new();
    let pin = f.write("pin", b"2468\n");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    // sealroot runs as nobody; its askpass (the same user, alive while sealroot holds the
    // token) tries what any process of that user could: read sealroot's /proc entries.
    use std::os::unix::fs::PermissionsExt;
    let dir = f.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&f.image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let marker = dir.join("readable");
    let askpass = f.write(
        "askpass",
        format!(
            "#!/bin/sh\nif head -c1 /proc/$PPID/environ >/dev/null 2>&1; then touch {}; fi\necho 2468\n",
            marker.display()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy the other user can run wherever the checkout lives.
    let bin = dir.join("sealroot");
    std::fs::copy(common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .args([
            "unlock",
            f.image.to_str().unwrap(),
            "root",
            "--test",
            "--no-fence",
        ])
        .args([
            "--askpass",
            askpass.to_str().unwrap(),
            "--tcti",
            &f.tpm.tcti(),
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !marker.exists(),
        "a process of the same user read sealroot's /proc/PID/environ"
    );
}
