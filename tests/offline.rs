//! Sealing offline (`enroll --srk-public --pcr-values`): the sealed object is built in
//! software for a TPM known only by its storage key's public area, with no TPM reachable,
//! and the target swtpm imports and unseals it. ECC and RSA storage keys (the RSA one made
//! and exported by tpm2-tools), with and without a PIN; the failures a deployment can meet.

mod common;

use common::{BusCapture, Fixture, Swtpm, export_token, file_hash, replace_token, run_with_env};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Where no TPM answers: enrollment offline must not even try.
const NO_TPM: &str = "swtpm:host=127.0.0.1,port=1";

/// The target's storage key: `sealroot srk-public` (ECC, created when absent) or the TCG
/// RSA SRK template made and exported by tpm2-tools.
fn export_srk(f: &Fixture, rsa: bool) -> PathBuf {
    let out = f.path("srk.pub");
    if rsa {
        f.tpm.provision_rsa_srk(&out);
    } else {
        let r = f.run(&["srk-public", "--out", out.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    out
}

/// `enroll --srk-public` with the TPM stopped and the environment pointing nowhere.
fn enroll_offline(f: &mut Fixture, srk: &Path, values: &str, extra: &[&str]) -> common::Run {
    f.tpm.stop();
    let mut args = vec![
        "enroll",
        f.image.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
        "--srk-public",
        srk.to_str().unwrap(),
        "--pcr-values",
        values,
    ];
    args.extend_from_slice(extra);
    let r = run_with_env(&args, b"", &[("SEALROOT_TCTI", NO_TPM)]);
    f.tpm.reset();
    r
}

fn pcr7_spec(f: &Fixture) -> String {
    format!("7:sha256={}", hex::encode(f.tpm.read(7)))
}

/// Offline enroll, unlock on the target, then the PCR mismatch names PCR 7.
fn round_trip(rsa: bool, pin: bool) {
    let mut f = Fixture::new();
    let srk = export_srk(&f, rsa);
    let values = pcr7_spec(&f);
    let pin_file = f.write("pin", b"2468\n");
    let pin_s = pin_file.to_str().unwrap().to_string();
    let pin_args: Vec<&str> = if pin {
        vec!["--pin", "--pin-file", &pin_s]
    } else {
        vec![]
    };
    let r = enroll_offline(&mut f, &srk, &values, &pin_args);
    assert_eq!(r.code, 0, "offline enroll: {}", r.stderr);

    let token = export_token(&f.image, 0);
    assert_eq!(token["sealroot_version"], 2, "{token}");
    let blob = B64.decode(token["tpm2_blob"].as_str().unwrap()).unwrap();
    assert_eq!(tpm2b_parts(&blob), 3, "private, public and the import seed");
    let status = f.run(&["status", f.image.to_str().unwrap()]);
    assert!(
        status
            .stdout
            .contains("offline-sealed to the storage key 0x81000001"),
        "{}",
        status.stdout
    );

    let before = f.image_hash();
    let unlock_args: Vec<&str> = if pin {
        vec!["--no-fence", "--pin-file", &pin_s]
    } else {
        vec!["--no-fence"]
    };
    let r = f.unlock_test(&unlock_args);
    assert_eq!(r.code, 0, "unlock on the target: {}", r.stderr);
    assert_eq!(f.image_hash(), before, "an unlock changed the header");

    if pin {
        let wrong = f.write("wrong", b"1357\n");
        let r = f.unlock_test(&["--no-fence", "--pin-file", wrong.to_str().unwrap()]);
        assert_eq!(r.code, 6, "{}", r.stderr);
        assert!(r.stderr.contains("wrong PIN"), "{}", r.stderr);
    }

    f.tpm.extend(7, b"another boot loader");
    let r = f.unlock_test(&unlock_args);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("PCR 7"), "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}

fn tpm2b_parts(mut blob: &[u8]) -> usize {
    let mut n = 0;
    while blob.len() >= 2 {
        let size = u16::from_be_bytes([blob[0], blob[1]]) as usize;
        assert!(blob.len() >= 2 + size, "truncated TPM2B");
        blob = &blob[2 + size..];
        n += 1;
    }
    assert!(blob.is_empty());
    n
}

#[test]
fn ecc_storage_key_without_pin() {
    round_trip(false, false);
}

#[test]
fn ecc_storage_key_with_pin() {
    round_trip(false, true);
}

#[test]
fn rsa_storage_key_from_tpm2_readpublic_without_pin() {
    round_trip(true, false);
}

#[test]
fn rsa_storage_key_with_pin() {
    round_trip(true, true);
}

#[test]
fn the_same_blob_on_another_tpm_is_refused_with_exit_3() {
    let mut f = Fixture::new();
    let srk = export_srk(&f, false);
    let values = pcr7_spec(&f);
    assert_eq!(enroll_offline(&mut f, &srk, &values, &[]).code, 0);
    let before = f.image_hash();

    // Another machine's TPM, with its own SRK at the same handle.
    let other = Swtpm::start(f.dir.path());
    let created = common::run(&["srk-public", "--out", "/dev/null", "--tcti", &other.tcti()]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let img = f.image.to_str().unwrap();
    let other_tcti = other.tcti();
    let on_other = || {
        common::run(&[
            "unlock",
            img,
            "root",
            "--test",
            "--no-fence",
            "--tcti",
            &other_tcti,
        ])
    };
    let r = on_other();
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the token's storage key is not the key at 0x81000001"),
        "{}",
        r.stderr
    );

    // A header edited to name the other TPM's key passes that check: the TPM's Import
    // then refuses the blob, which only the real key can take in.
    let mut t = export_token(&f.image, 0);
    let other_pub = f.path("other.pub");
    let r = common::run(&[
        "srk-public",
        "--out",
        other_pub.to_str().unwrap(),
        "--tcti",
        &other.tcti(),
    ]);
    assert_eq!(r.code, 0);
    t["tpm2_srk_public"] = B64.encode(std::fs::read(&other_pub).unwrap()).into();
    replace_token(&f.image, 0, &t);
    let edited = f.image_hash();
    let r = on_other();
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("rejected the sealed key (Import"),
        "{}",
        r.stderr
    );
    assert_eq!(f.image_hash(), edited);
    assert_ne!(before, edited);
}

#[test]
fn corrupt_seed_or_duplicate_is_a_clear_error_and_changes_nothing() {
    let mut f = Fixture::new();
    let srk = export_srk(&f, false);
    let values = pcr7_spec(&f);
    assert_eq!(enroll_offline(&mut f, &srk, &values, &[]).code, 0);
    let good = export_token(&f.image, 0);
    let blob = B64.decode(good["tpm2_blob"].as_str().unwrap()).unwrap();
    let private_len = 2 + u16::from_be_bytes([blob[0], blob[1]]) as usize;
    let public_len = 2 + u16::from_be_bytes([blob[private_len], blob[private_len + 1]]) as usize;
    let seed_at = private_len + public_len;
    // A byte of the encrypted sensitive area, of the HMAC, of the seed's x coordinate; and
    // the seed cut short.
    for (what, edit) in [
        ("ciphertext", private_len - 1),
        ("integrity HMAC", 10),
        ("seed", seed_at + 10),
    ] {
        let mut bad = blob.clone();
        bad[edit] ^= 0x5a;
        let mut t = good.clone();
        t["tpm2_blob"] = B64.encode(&bad).into();
        replace_token(&f.image, 0, &t);
        let before = f.image_hash();
        let r = f.unlock_test(&["--no-fence"]);
        assert_eq!(r.code, 3, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains("rejected the sealed key") && r.stderr.contains("sealroot recover"),
            "{what}: {}",
            r.stderr
        );
        assert_eq!(f.image_hash(), before, "{what}: the header changed");
    }
    let mut t = good.clone();
    t["tpm2_blob"] = B64.encode(&blob[..blob.len() - 3]).into();
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("import seed"), "{}", r.stderr);
    // The same blob without its seed claims to be a version 1 token: refused as corrupt.
    let mut t = good.clone();
    t["tpm2_blob"] = B64.encode(&blob[..seed_at]).into();
    replace_token(&f.image, 0, &t);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("lacks an import seed"), "{}", r.stderr);
}

#[test]
fn seven_tpm_commands_per_unlock_with_a_pinned_srk() {
    let mut f = Fixture::new();
    let srk = export_srk(&f, false);
    let values = pcr7_spec(&f);
    assert_eq!(enroll_offline(&mut f, &srk, &values, &[]).code, 0);
    let name = f.srk_name();
    let bus = BusCapture::start(&f.tpm);
    let r = f.unlock_test(&["--srk-name", &name, "--tcti", &bus.tcti()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Import, Load, StartAuthSession, PolicyPCR, Unseal, FlushContext, PCR_Event.
    assert_eq!(
        bus.command_codes(),
        [0x156, 0x157, 0x176, 0x17F, 0x15E, 0x165, 0x13C]
    );
}

#[test]
fn bad_offline_inputs_are_refused_before_anything_is_written() {
    let mut f = Fixture::new();
    let srk = export_srk(&f, false);
    let values = pcr7_spec(&f);
    let before = f.image_hash();
    let garbage = f.write("garbage.pub", b"-----BEGIN PUBLIC KEY-----\n");
    let sealed_obj = f.write("not-a-storage-key.pub", &{
        // A sealed data object's public area, not a storage key.
        let blob_token = {
            let mut g = Fixture::new();
            let s = export_srk(&g, false);
            let v = pcr7_spec(&g);
            assert_eq!(enroll_offline(&mut g, &s, &v, &[]).code, 0);
            export_token(&g.image, 0)
        };
        let blob = B64
            .decode(blob_token["tpm2_blob"].as_str().unwrap())
            .unwrap();
        let p = 2 + u16::from_be_bytes([blob[0], blob[1]]) as usize;
        let q = p + 2 + u16::from_be_bytes([blob[p], blob[p + 1]]) as usize;
        blob[p..q].to_vec()
    });
    let fence = format!("15:sha256={}", "11".repeat(32));
    let cases: Vec<(PathBuf, String, &str)> = vec![
        (garbage, values.clone(), "not a TPM2B_PUBLIC"),
        (sealed_obj, values.clone(), "not a storage key"),
        (f.path("missing.pub"), values.clone(), "cannot read"),
        (srk.clone(), "7:sha256=abcd".into(), "has 2 bytes"),
        (srk.clone(), "7:sha256=zz".into(), "not hex"),
        (srk.clone(), fence, "fence PCR"),
        (
            srk.clone(),
            f.path("missing.json").display().to_string(),
            "cannot read",
        ),
    ];
    for (srk, values, want) in cases {
        let r = enroll_offline(&mut f, &srk, &values, &[]);
        assert_eq!(r.code, 2, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert_eq!(f.image_hash(), before, "{want}: the header changed");
    }
    // --pcrs reads this TPM: it makes no sense with --srk-public.
    let img = f.image.to_str().unwrap();
    let r = common::run(&[
        "enroll",
        img,
        "--srk-public",
        srk.to_str().unwrap(),
        "--pcrs",
        "7",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(file_hash(&f.image), before);
}

#[test]
fn pcr_values_from_a_json_file() {
    let mut f = Fixture::new();
    let srk = export_srk(&f, false);
    f.tpm.extend(9, b"a kernel command line");
    let json = serde_json::json!({
        "pcr_bank": "sha256",
        "pcr_values": {
            "7": hex::encode(f.tpm.read(7)),
            "9": hex::encode(f.tpm.read(9)),
        },
        "comment": "from a reference boot",
    });
    let file = f.write("values.json", json.to_string().as_bytes());
    let r = enroll_offline(&mut f, &srk, file.to_str().unwrap(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The TPM was reset by the enrollment helper: replay PCR 9.
    f.tpm.extend(9, b"a kernel command line");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = export_token(&f.image, 0);
    assert_eq!(t["tpm2_pcrs"], serde_json::json!([7, 9, 15]));
}
