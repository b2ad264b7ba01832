//! Volumes enrolled by the real tools from Debian 12 — systemd-cryptenroll 252 and clevis
//! 19 — against this test's swtpm, unlocked by sealroot as they are.

mod common;

use std::process::Command;

use base64::Engine as _;

use common::{Fixture, export_token, replace_token};

/// Raw swtpm has no resource manager and these tools leave transient objects behind.
fn flush(f: &Fixture) {
    for what in ["-t", "-l", "-s"] {
        let _ = Command::new("tpm2_flushcontext")
            .arg(what)
            .args(["-T", &f.tpm.tcti()])
            .output();
    }
}

/// Runs an enrollment tool, retrying twice: tpm2-tss 3.2.1 under these tools drops leading
/// zeros of ECDH secrets, so about one salted session in 256 fails (see scripts/patches).
/// A failed enrollment changes nothing, so a retry is safe.
fn enroll_with_retries(f: &Fixture, make: &dyn Fn() -> Command) {
    let mut last = String::new();
    for _ in 0..3 {
        let out = make().output().expect("enrollment tool");
        flush(f);
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!("enrollment failed three times: {last}");
}

fn systemd_enroll(f: &Fixture, extra: &[&str], pin: Option<&str>) {
    enroll_with_retries(f, &|| systemd_command(f, extra, pin));
}

fn systemd_command(f: &Fixture, extra: &[&str], pin: Option<&str>) -> Command {
    let mut cmd = Command::new("systemd-cryptenroll");
    cmd.arg(format!("--tpm2-device={}", f.tpm.tcti()))
        .args(extra)
        .arg(&f.image)
        .env("PASSWORD", common::PASSPHRASE)
        .stdin(std::process::Stdio::null());
    if let Some(p) = pin {
        cmd.env("NEWPIN", p).arg("--tpm2-with-pin=yes");
    }
    cmd
}

fn clevis_bind(f: &Fixture, config: &str) {
    clevis_bind_pin(f, "tpm2", config)
}

fn clevis_bind_pin(f: &Fixture, pin: &str, config: &str) {
    enroll_with_retries(f, &|| {
        let mut cmd = Command::new("clevis");
        cmd.args(["luks", "bind", "-y", "-k"])
            .arg(&f.passfile)
            .arg("-d")
            .arg(&f.image)
            .args([pin, config])
            .env("TPM2TOOLS_TCTI", f.tpm.tcti());
        cmd
    });
}

fn status_says(f: &Fixture, want: &str) {
    let s = f.run(&["status", f.image.to_str().unwrap()]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(s.stdout.contains(want), "status: {}", s.stdout);
}

/// Unlocks, then fails with the policy-mismatch code once `pcr` changes; `status` agrees.
fn unlocks_then_mismatch(f: &Fixture, pcr: u32, extra: &[&str]) {
    let mut args = vec!["--no-fence"];
    args.extend_from_slice(extra);
    status_says(f, "would unseal now: yes");
    let r = f.unlock_test(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    f.tpm.extend(pcr, b"changed");
    status_says(f, "would unseal now: no");
    let r = f.unlock_test(&args);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("PCR"), "{}", r.stderr);
}

#[test]
fn systemd_pcr_only_ecc() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], None);
    assert_eq!(export_token(&f.image, 0)["type"], "systemd-tpm2");
    unlocks_then_mismatch(&f, 7, &[]);
}

#[test]
fn systemd_pin() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], Some("4711"));
    let pin = f.write("pin", b"4711\n");
    let wrong = f.write("wrong", b"1234\n");
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = f.unlock_test(&["--no-fence", "--pin-file", wrong.to_str().unwrap()]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    // A changed PCR is found before the PIN is tried (no dictionary-attack cost).
    f.tpm.extend(7, b"changed");
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
}

#[test]
fn systemd_two_tokens_on_one_volume() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], None);
    systemd_enroll(&f, &["--tpm2-pcrs=8"], None);
    f.tpm.extend(7, b"changed");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "the second token must be tried: {}", r.stderr);
    f.tpm.extend(8, b"changed");
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 5);
}

#[test]
fn clevis_sha256_bank_ecc() {
    let f = Fixture::new();
    clevis_bind(&f, r#"{"pcr_ids":"7","pcr_bank":"sha256"}"#);
    unlocks_then_mismatch(&f, 7, &[]);
}

#[test]
fn clevis_sha1_bank_ecc() {
    let f = Fixture::new();
    clevis_bind(&f, r#"{"pcr_ids":"7","pcr_bank":"sha1"}"#);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Extend in the sha1 bank too: clevis' policy reads that one.
    f.tpm.extend_banks(
        7,
        &[
            sealroot::tpm::pcr::PcrBank::Sha1,
            sealroot::tpm::pcr::PcrBank::Sha256,
        ],
        b"changed",
    );
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 5);
}

#[test]
fn clevis_rsa_primary() {
    let f = Fixture::new();
    clevis_bind(&f, r#"{"pcr_ids":"7","pcr_bank":"sha256","key":"rsa"}"#);
    unlocks_then_mismatch(&f, 7, &[]);
}

#[test]
fn clevis_sss_threshold_one_around_tpm2() {
    let f = Fixture::new();
    clevis_bind_pin(
        &f,
        "sss",
        r#"{"t":1,"pins":{"tpm2":{"pcr_ids":"7","pcr_bank":"sha256"}}}"#,
    );
    unlocks_then_mismatch(&f, 7, &[]);
}

#[test]
fn systemd_signed_pcr11_policy_with_systemd_measure() {
    let f = Fixture::new();
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("tool");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let (key, public) = (f.path("priv.pem"), f.path("pub.pem"));
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    run(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public));
    // A UKI's sections, as systemd-stub measures them into PCR 11 before the initrd.
    let sections: [(&str, Vec<u8>); 3] = [
        (".linux", (0..1000u32).map(|i| (i * 7) as u8).collect()),
        (".osrel", b"ID=test\n".to_vec()),
        (".cmdline", b"root=/dev/x\n".to_vec()),
    ];
    let mut measure = Command::new("/lib/systemd/systemd-measure");
    measure
        .arg("sign")
        .arg(format!("--tpm2-device={}", f.tpm.tcti()));
    for (name, content) in &sections {
        let file = f.write(&name[1..], content);
        measure.arg(format!("--{}={}", &name[1..], file.display()));
    }
    measure.args(["--bank=sha256", "--phase=enter-initrd"]);
    measure.arg(format!("--private-key={}", key.display()));
    measure.arg(format!("--public-key={}", public.display()));
    let signature = f.write("tpm2-pcr-signature.json", &run(&mut measure));
    flush(&f);
    systemd_enroll(
        &f,
        &[
            &format!("--tpm2-public-key={}", public.display()),
            "--tpm2-public-key-pcrs=11",
            "--tpm2-pcrs=",
        ],
        None,
    );
    for (name, content) in &sections {
        f.tpm.extend(11, format!("{name}\0").as_bytes());
        f.tpm.extend(11, content);
    }
    f.tpm.extend(11, b"enter-initrd");
    let sig = signature.to_str().unwrap();
    let image = f.image.to_str().unwrap();
    // status checks the signature against the current PCR 11 in software, as the TPM will.
    let s = f.run(&["status", image, "--signature", sig]);
    assert!(s.stdout.contains("would unseal now: yes"), "{}", s.stdout);
    let r = f.unlock_test(&["--no-fence", "--signature", sig]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Leaving the initrd: no signature covers that value any more.
    f.tpm.extend(11, b"leave-initrd");
    let r = f.unlock_test(&["--no-fence", "--signature", sig]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("no signature"), "{}", r.stderr);
    let s = f.run(&["status", image, "--signature", sig]);
    assert!(
        s.stdout.contains(
            "would unseal now: no, no valid signature (tpm2-pcr-signature.json) approves the current sha256 PCR 11 value"
        ),
        "{}",
        s.stdout
    );
}

#[test]
fn a_foreign_mismatch_names_only_the_pcr_that_changed() {
    let f = Fixture::new();
    f.tpm.extend(0, b"firmware");
    f.tpm.extend(7, b"secure boot state");
    systemd_enroll(&f, &["--tpm2-pcrs=0+7+14"], None);
    f.tpm.extend(14, b"shim's MOK list changed");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("sha256 PCR 14 differs"), "{}", r.stderr);
    assert!(!r.stderr.contains("PCRs"), "{}", r.stderr);
    let s = f.run(&["status", "--json", f.image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["tokens"][0]["pcrs_differ"], serde_json::json!([14]));
    assert_eq!(v["tokens"][0]["pcrs_differ_certain"], true);
    // A PCR that changed from a value other than its reset value cannot be told apart:
    // the message says so instead of guessing.
    f.tpm.extend(7, b"dbx update");
    let r = f.unlock_test(&["--no-fence"]);
    assert!(
        r.stderr
            .contains("one or more of the sha256 PCRs 0, 7, 14 differ"),
        "{}",
        r.stderr
    );
}

#[test]
fn corrupted_foreign_tokens_are_clear_errors() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], None);
    clevis_bind(&f, r#"{"pcr_ids":"7","pcr_bank":"sha256"}"#);
    let before = f.image_hash();
    let mut sd = export_token(&f.image, 0);
    let blob = sd["tpm2-blob"].as_str().unwrap().to_string();
    sd["tpm2-blob"] = serde_json::Value::from(&blob[..blob.len() / 2]);
    replace_token(&f.image, 0, &sd);
    let mut cl = export_token(&f.image, 1);
    cl["jwe"]["protected"] = serde_json::Value::from("bm90IGpzb24");
    replace_token(&f.image, 1, &cl);
    let after_tamper = f.image_hash();
    assert_ne!(before, after_tamper);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
    assert_eq!(f.image_hash(), after_tamper, "unlock must not write");
}

#[test]
fn an_unfenced_foreign_token_is_called_out_by_enroll_and_status() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], None);
    let r = f.enroll(&[]);
    assert!(
        r.stderr.contains("does not bind the fence PCR 15"),
        "{}",
        r.stderr
    );
    let s = f.run(&["status", f.image.to_str().unwrap()]);
    assert!(s.stdout.contains("WARNING"), "{}", s.stdout);
    // What the warning is about: after the fence, the systemd token still unseals.
    assert_eq!(f.run(&["fence"]).code, 0);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_tpm2_srk_naming_another_key_is_refused_before_any_session() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], Some("4711"));
    f.enroll(&["--fence-pcr", "none"]); // creates this TPM's SRK; its token is removed below
    let attacker = Fixture::new();
    attacker.enroll(&[]);
    let attacker_srk = base64::engine::general_purpose::STANDARD
        .decode(
            export_token(&attacker.image, 0)["tpm2_srk_public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // systemd >= 253 records the parent as a serialized ESYS_TR (`tpm2_srk`): the header's
    // word. Here it names the attacker's key at the SRK handle.
    let mut t = export_token(&f.image, 0);
    let srk = sealroot::tpm::serialized_key_resource(0x8100_0001, &attacker_srk).unwrap();
    t["tpm2_srk"] = serde_json::json!(base64::engine::general_purpose::STANDARD.encode(srk));
    replace_token(&f.image, 0, &t);
    let pin = f.write("pin", b"4711\n");
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert_eq!(
        f.tpm.lockout_counter(),
        0,
        "a dictionary-attack strike was spent"
    );
}

#[test]
fn with_a_pinned_srk_a_pin_is_never_salted_to_a_template_primary() {
    let f = Fixture::new();
    systemd_enroll(&f, &["--tpm2-pcrs=7"], Some("4711"));
    f.enroll(&["--fence-pcr", "none"]); // this TPM's SRK, to pin its Name
    let srk = base64::engine::general_purpose::STANDARD
        .decode(
            export_token(&f.image, 1)["tpm2_srk_public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let name = hex::encode(sealroot::tpm::object::name_of(&srk).unwrap());
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pin = f.write("pin", b"4711\n");
    let pin_s = pin.to_str().unwrap();
    // systemd 252's PIN tokens re-create their parent from a template: refused when pinned.
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--srk-name", &name]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("template"), "{}", r.stderr);
    // Without a pinned Name they still open, as before.
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
