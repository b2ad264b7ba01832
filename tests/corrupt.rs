//! Corrupt and truncated tokens and blobs: a clear error, never a panic, and the LUKS
//! header bytes unchanged by the attempt.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Fixture, export_token, replace_token};
use serde_json::{Value, json};

fn mutations(original: &Value) -> Vec<(&'static str, Value)> {
    let blob = B64.decode(original["tpm2_blob"].as_str().unwrap()).unwrap();
    let with = |field: &str, v: Value| {
        let mut t = original.clone();
        t[field] = v;
        t
    };
    let without = |field: &str| {
        let mut t = original.clone();
        t.as_object_mut().unwrap().remove(field);
        t
    };
    let mut flipped = blob.clone();
    let mid = flipped.len() / 3; // inside the encrypted private part
    flipped[mid] ^= 0x55;
    let mut flipped_public = blob.clone();
    let last = flipped_public.len() - 3; // inside the public area's unique field
    flipped_public[last] ^= 0x01;
    vec![
        (
            "blob truncated",
            with("tpm2_blob", json!(B64.encode(&blob[..blob.len() / 2]))),
        ),
        ("blob empty", with("tpm2_blob", json!(""))),
        (
            "blob one byte short",
            with("tpm2_blob", json!(B64.encode(&blob[..blob.len() - 1]))),
        ),
        (
            "blob not base64",
            with("tpm2_blob", json!("%%%not base64%%%")),
        ),
        (
            "private part corrupted",
            with("tpm2_blob", json!(B64.encode(&flipped))),
        ),
        (
            "public part corrupted",
            with("tpm2_blob", json!(B64.encode(&flipped_public))),
        ),
        ("blob missing", without("tpm2_blob")),
        ("pcr values missing", without("tpm2_pcr_values")),
        (
            "pcr value truncated",
            with("tpm2_pcr_values", json!({"7": "00", "15": "00"})),
        ),
        (
            "policy hash wrong",
            with("tpm2_policy_hash", json!("00".repeat(32))),
        ),
        ("policy hash not hex", with("tpm2_policy_hash", json!("zz"))),
        ("bank unknown", with("tpm2_pcr_bank", json!("md5"))),
        ("pcrs wrong type", with("tpm2_pcrs", json!("7"))),
        ("pcr out of range", with("tpm2_pcrs", json!([7, 15, 99]))),
        (
            "srk public truncated",
            with("tpm2_srk_public", json!("AAE=")),
        ),
        (
            "srk handle bogus",
            with("tpm2_srk_handle", json!("0x01000001")),
        ),
        (
            "version from the future",
            with("sealroot_version", json!(99)),
        ),
        ("pin flag without salt", with("tpm2_pin", json!(true))),
        ("fence not in pcrs", with("fence_pcr", json!(3))),
    ]
}

#[test]
fn every_corruption_is_reported_and_nothing_is_written() {
    let f = Fixture::new();
    f.enroll(&[]);
    let original = export_token(&f.image, 0);
    for (what, bad) in mutations(&original) {
        let t0 = std::time::Instant::now();
        replace_token(&f.image, 0, &bad);
        let before = f.image_hash();
        let r = f.unlock_test(&["--no-fence"]);
        assert_eq!(f.image_hash(), before, "{what}: unlock wrote to the header");
        assert!(
            r.code == 3 || r.code == 5,
            "{what}: expected a no-usable-token error, got {}: {}",
            r.code,
            r.stderr
        );
        assert!(
            r.stderr.contains("token 0"),
            "{what}: message must name the token or the cause: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("recover"),
            "{what}: must say what to do next: {}",
            r.stderr
        );
        let s = f.run(&["status", f.image.to_str().unwrap()]);
        assert_eq!(s.code, 0, "{what}: status must still work: {}", s.stderr);
        assert_eq!(f.image_hash(), before, "{what}: status wrote to the header");
        eprintln!("{what} ({:?}): {}", t0.elapsed(), r.stderr.trim());
    }
    // And the original still works afterwards: nothing was consumed or locked out.
    replace_token(&f.image, 0, &original);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn truncated_blobs_of_every_length_never_panic() {
    let f = Fixture::new();
    f.enroll(&[]);
    let original = export_token(&f.image, 0);
    let blob = B64.decode(original["tpm2_blob"].as_str().unwrap()).unwrap();
    // Every cut that crosses a structure boundary, plus a few inside each part.
    let cuts = [
        0usize,
        1,
        2,
        3,
        40,
        blob.len() / 2,
        blob.len() - 80,
        blob.len() - 2,
        blob.len() - 1,
    ];
    for cut in cuts {
        let mut t = original.clone();
        t["tpm2_blob"] = json!(B64.encode(&blob[..cut]));
        replace_token(&f.image, 0, &t);
        let r = f.unlock_test(&[]);
        assert_eq!(r.code, 3, "cut at {cut}: {}", r.stderr);
        assert!(
            r.stderr.contains("token 0 is corrupt"),
            "cut at {cut}: {}",
            r.stderr
        );
    }
}
