//! `sealroot enroll`: what it writes, and that bad input changes nothing.

mod common;

use common::{Fixture, export_token};

#[test]
fn token_records_what_unlock_needs() {
    let f = Fixture::new();
    f.enroll(&["--pcrs", "7,8"]);
    let t = export_token(&f.image, 0);
    assert_eq!(t["type"], "sealroot");
    assert_eq!(t["sealroot_version"], 1);
    assert_eq!(t["keyslots"], serde_json::json!(["1"]));
    assert_eq!(t["tpm2_pcrs"], serde_json::json!([7, 8, 15]));
    assert_eq!(t["tpm2_pcr_bank"], "sha256");
    assert_eq!(t["fence_pcr"], 15);
    assert_eq!(t["tpm2_pin"], false);
    assert_eq!(t["tpm2_srk_handle"], "0x81000001");
    assert_eq!(t["tpm2_pcr_values"]["15"], "00".repeat(32));
    // The keyslot uses the minimal PBKDF.
    let dump = std::process::Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(&f.image)
        .output()
        .unwrap();
    let md: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let kdf = &md["keyslots"]["1"]["kdf"];
    assert_eq!(kdf["type"], "pbkdf2");
    assert_eq!(kdf["hash"], "sha512");
    assert_eq!(kdf["iterations"], 1000);
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let f = Fixture::new();
    let wrong = f.write("wrong", b"not it");
    let before = f.image_hash();
    let r = f.run(&[
        "enroll",
        f.image.to_str().unwrap(),
        "--unlock-key-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}

#[test]
fn tpm_absent_changes_nothing() {
    let f = Fixture::new();
    let before = f.image_hash();
    let r = f.run(&[
        "enroll",
        f.image.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
        "--tcti",
        "device:/nonexistent/tpm0",
    ]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let f = Fixture::new();
    let img = f.image.to_str().unwrap();
    for args in [
        vec!["enroll", img, "--pcrs", "24"],
        vec!["enroll", img, "--pcr-bank", "md5"],
        vec!["enroll", img, "--fence-pcr", "x"],
        vec!["unlock", img],
        vec!["remove", img],
        vec!["bogus"],
    ] {
        let r = common::run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
}

#[test]
fn existing_srk_is_reused() {
    let f = Fixture::new();
    f.enroll(&[]);
    f.enroll(&[]);
    let a = export_token(&f.image, 0);
    let b = export_token(&f.image, 1);
    assert_eq!(a["tpm2_srk_public"], b["tpm2_srk_public"]);
}

#[test]
fn help_documents_exit_codes() {
    let r = common::run(&["--help"]);
    assert_eq!(r.code, 0);
    for code in [
        "3  no usable token",
        "5  policy mismatch",
        "7  device missing",
    ] {
        assert!(r.stdout.contains(code), "{code}: {}", r.stdout);
    }
}
