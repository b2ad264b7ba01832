//! `sealroot recover`: the recovery key (any spelling) or a passphrase, no TPM needed.

mod common;

use common::{Fixture, PASSPHRASE};

fn recovery_key(f: &Fixture) -> String {
    let r = f.enroll(&["--recovery-key"]);
    let key = r.stdout.trim().to_string();
    assert_eq!(key.len(), 71, "8 groups of 8 with 7 dashes: {key}");
    assert!(!r.stderr.contains(&key), "the key goes to stdout only");
    key
}

fn recover(f: &Fixture, key: &str) -> common::Run {
    f.recover_test(key)
}

#[test]
fn recovery_key_with_and_without_dashes_in_any_case() {
    let f = Fixture::new();
    let key = recovery_key(&f);
    // The TPM is gone: recovery must not need it.
    let mut f = f;
    f.tpm.stop();
    for spelling in [
        key.clone(),
        key.replace('-', ""),
        key.to_uppercase(),
        key.replace('-', " "),
        key.replace('-', "").to_uppercase(),
    ] {
        let r = recover(&f, &spelling);
        assert_eq!(r.code, 0, "{spelling}: {}", r.stderr);
    }
}

#[test]
fn passphrase_works_and_wrong_key_is_rejected() {
    let f = Fixture::new();
    let key = recovery_key(&f);
    assert_eq!(recover(&f, PASSPHRASE).code, 0);
    let mut wrong = key.into_bytes();
    wrong[0] = if wrong[0] == b'c' { b'b' } else { b'c' };
    let r = recover(&f, &String::from_utf8(wrong).unwrap());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);
}

#[test]
fn recovery_key_is_a_systemd_style_keyslot_passphrase() {
    // The keyslot passphrase is the canonical dashed lowercase string, so cryptsetup (and
    // systemd's recovery prompt) accept it as typed.
    let f = Fixture::new();
    let key = recovery_key(&f);
    let file = f.write("key", key.as_bytes());
    let out = std::process::Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&file)
        .arg(&f.image)
        .output()
        .unwrap();
    assert!(out.status.success());
}
