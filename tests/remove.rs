//! `sealroot remove`: tokens and their keyslots go; the last way in stays unless --force.

mod common;

use std::process::Command;

use common::Fixture;

fn keyslots(f: &Fixture) -> Vec<u64> {
    let r = f.run(&["status", f.image.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn remove_token_and_its_keyslot() {
    let f = Fixture::new();
    f.enroll(&[]);
    f.enroll(&[]);
    assert_eq!(keyslots(&f), vec![0, 1, 2]);
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(keyslots(&f), vec![0, 2]);
    // The other enrollment still works.
    assert_eq!(f.unlock_test(&[]).code, 0);
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(keyslots(&f), vec![0]);
    assert_eq!(f.unlock_test(&[]).code, 3);
}

#[test]
fn refuses_to_remove_the_last_keyslot() {
    let f = Fixture::new();
    f.enroll(&[]);
    // Drop the passphrase: the TPM keyslot is now the only way in.
    let out = Command::new("cryptsetup")
        .args(["luksKillSlot", "-q"])
        .arg(&f.image)
        .arg("0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = f.image_hash();
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--all"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(f.image_hash(), before, "a refused removal changes nothing");
    assert_eq!(f.unlock_test(&[]).code, 0, "still unlocks");
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--all", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(keyslots(&f).is_empty());
}

#[test]
fn remove_keeps_the_recovery_key_and_foreign_tokens() {
    let f = Fixture::new();
    let key = f.enroll(&["--recovery-key"]).stdout.trim().to_string();
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(keyslots(&f), vec![0, 2]);
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "1"]);
    assert_eq!(
        r.code, 2,
        "the recovery marker is not a sealroot token: {}",
        r.stderr
    );
    let r = f.recover_test(&key);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn unknown_token_is_a_usage_error() {
    let f = Fixture::new();
    f.enroll(&[]);
    let r = f.run(&["remove", f.image.to_str().unwrap(), "--token", "7"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
