//! Signed policies for sealroot's own tokens (`enroll --policy-key`, `approve`): an update
//! that changes PCR values needs a new approval, not a new seal; approvals that are not the
//! token's own (another key, another token, other values) unlock nothing. Keys are made by
//! openssl, approvals by `sealroot approve` (forgeries by the library's own signer).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, checked, export_token, replace_token, run};

/// An ECDSA P-256 key pair made by openssl: (private PEM, public PEM).
fn policy_key(f: &Fixture, name: &str) -> (PathBuf, PathBuf) {
    let private = f.path(&format!("{name}.pem"));
    let public = f.path(&format!("{name}.pub.pem"));
    checked(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&private),
    );
    checked(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
    );
    (private, public)
}

fn pcr7(f: &Fixture) -> String {
    format!("7:sha256={}", hex::encode(f.tpm.read(7)))
}

fn approve(image: &Path, key: &Path, sets: &[&str], extra: &[&str]) -> common::Run {
    let mut args = vec![
        "approve",
        image.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    for s in sets {
        args.push("--pcr-values");
        args.push(s);
    }
    args.extend_from_slice(extra);
    run(&args)
}

/// `enroll --srk-public SRK --policy-key PUBLIC`: sealed offline to a signed policy.
fn enroll_offline(f: &Fixture, srk: &Path, public: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "enroll",
        f.image.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
        "--srk-public",
        srk.to_str().unwrap(),
        "--policy-key",
        public.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Enrolls with the policy key; nothing unlocks until an approval exists.
fn enroll_signed(f: &Fixture, public: &Path, extra: &[&str]) {
    let mut args = vec!["--policy-key", public.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = f.enroll(&args);
    assert!(r.stderr.contains("sealroot approve"), "{}", r.stderr);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("no approval"), "{}", r.stderr);
}

#[test]
fn an_update_needs_an_approval_not_a_new_seal() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    enroll_signed(&f, &public, &[]);
    let old = pcr7(&f);
    let r = approve(&f.image, &private, &[&old], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = f.image_hash();
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.image_hash(), before, "an unlock changed the header");

    // The update: PCR 7 moves; the old approval no longer holds.
    f.tpm.extend(7, b"a new boot chain");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("PCR 7"), "{}", r.stderr);
    let keyslots = export_token(&f.image, 0)["keyslots"].clone();
    let new = pcr7(&f);
    assert_eq!(approve(&f.image, &private, &[&new], &[]).code, 0);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        export_token(&f.image, 0)["keyslots"],
        keyslots,
        "re-sealed?"
    );
    let s = f.run(&["status", f.image.to_str().unwrap()]);
    assert!(s.stdout.contains("matches now"), "{}", s.stdout);
    assert!(s.stdout.contains("does not match now"), "{}", s.stdout);
}

#[test]
fn one_approval_for_the_old_and_the_new_values() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    enroll_signed(&f, &public, &[]);
    let old = pcr7(&f);
    let mut probe = Fixture::new();
    probe.tpm.extend(7, b"the next kernel");
    let next = pcr7(&probe);
    probe.tpm.stop();
    let r = approve(&f.image, &private, &[&old, &next], &["--replace"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 0);
    f.tpm.extend(7, b"the next kernel");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "the new state: {}", r.stderr);
}

#[test]
fn approvals_that_are_not_the_tokens_own_unlock_nothing() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    let (other_private, _) = policy_key(&f, "other");
    enroll_signed(&f, &public, &[]);
    let now = pcr7(&f);
    let token = export_token(&f.image, 0);
    let policy_ref = hex::decode(token["tpm2_policy_ref"].as_str().unwrap()).unwrap();

    // Another key, even for this token's policyRef and the right values.
    let pem = std::fs::read_to_string(&other_private).unwrap();
    let forged = sealroot::approval::sign(
        &pem,
        &policy_ref,
        sealroot::tpm::pcr::PcrBank::Sha256,
        &[vec![(7, f.tpm.read(7))]],
        1,
        None,
    )
    .unwrap();
    let forged = serde_json::to_value(&forged).unwrap();
    // ...naming this token's key, so only the signature check can stop it.
    let mut renamed = forged.clone();
    let admin_pem = std::fs::read_to_string(&private).unwrap();
    let admin_name = sealroot::approval::public_of(&admin_pem).unwrap().name();
    renamed["key_name"] = hex::encode(admin_name).into();
    // The other key refuses to sign for this token at all.
    let r = approve(&f.image, &other_private, &[&now], &[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("trusts this key"), "{}", r.stderr);

    // An approval of the right key for another token (another volume, same key).
    let g = Fixture::new();
    g.enroll(&["--policy-key", public.to_str().unwrap()]);
    let other_token_file = f.path("other-token.json");
    let r = approve(
        &g.image,
        &private,
        &[&now],
        &["--out", other_token_file.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // And an approval of the right key and token for other values.
    let other_values = f.path("other-values.json");
    let r = approve(
        &f.image,
        &private,
        &[&format!("7:sha256={}", "ab".repeat(32))],
        &["--out", other_values.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let files: Vec<(PathBuf, &str)> = vec![
        (
            f.write("forged.json", forged.to_string().as_bytes()),
            "signed by another key",
        ),
        (
            f.write("renamed.json", renamed.to_string().as_bytes()),
            "does not verify",
        ),
        (other_token_file, "for another token"),
    ];
    for (file, why) in &files {
        let r = f.unlock_test(&["--no-fence", "--approval", file.to_str().unwrap()]);
        assert_eq!(r.code, 5, "{why}: {}", r.stderr);
        let s = f.run(&[
            "status",
            f.image.to_str().unwrap(),
            "--approval",
            file.to_str().unwrap(),
        ]);
        assert!(s.stdout.contains(why), "{why}: {}", s.stdout);
    }
    let r = f.unlock_test(&["--no-fence", "--approval", other_values.to_str().unwrap()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("PCR 7"), "{}", r.stderr);

    // The same in the header: a tampered approval token is ignored, the real one works.
    assert_eq!(approve(&f.image, &private, &[&now], &[]).code, 0);
    let mut approval = export_token(&f.image, 1);
    approval["pcr_sets"][0]["7"] = "cd".repeat(32).into();
    replace_token(&f.image, 1, &approval);
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 5);
    assert_eq!(approve(&f.image, &private, &[&now], &[]).code, 0);
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 0);
}

#[test]
fn approval_files_and_offline_enrollment_with_a_pin() {
    // Sealed offline to the SRK with a policy key and a PIN; the approval lives in a file.
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "builder");
    let srk = f.path("srk.pub");
    assert_eq!(
        f.run(&["srk-public", "--out", srk.to_str().unwrap()]).code,
        0
    );
    let pin = f.write("pin", b"2468\n");
    let r = enroll_offline(
        &f,
        &srk,
        &public,
        &["--pin", "--pin-file", pin.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = f.path("approval.json");
    let r = approve(
        &f.image,
        &private,
        &[&pcr7(&f)],
        &["--out", file.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let approval = file.to_str().unwrap();
    let pin_s = pin.to_str().unwrap();
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--approval", approval]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let wrong = f.write("wrong", b"1357\n");
    let r = f.unlock_test(&[
        "--no-fence",
        "--pin-file",
        wrong.to_str().unwrap(),
        "--approval",
        approval,
    ]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    // Approvals that do not hold are skipped before the TPM sees the PIN: no strike.
    f.tpm.extend(7, b"a new boot chain");
    let strikes = f.tpm.lockout_counter();
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin_s, "--approval", approval]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(f.tpm.lockout_counter(), strikes);
}

#[test]
fn the_fence_holds_whatever_the_approval_says() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    enroll_signed(&f, &public, &[]);
    assert_eq!(approve(&f.image, &private, &[&pcr7(&f)], &[]).code, 0);
    // The fence PCR is the token's business: an approval may not name it.
    let r = approve(
        &f.image,
        &private,
        &[&format!("{},15:sha256={}", pcr7(&f), "00".repeat(32))],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // After the fence, no approval unseals.
    assert_eq!(f.unlock_test(&[]).code, 0);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("fence"), "{}", r.stderr);
}

#[test]
fn revoking_retires_every_earlier_approval() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    enroll_signed(&f, &public, &["--revocable"]);
    let now = pcr7(&f);
    // A copy of an approval kept elsewhere, as someone who wants it back might keep it.
    let kept = f.path("kept.json");
    let r = approve(
        &f.image,
        &private,
        &[&now],
        &["--out", kept.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(approve(&f.image, &private, &[&now], &[]).code, 0);
    let bus = common::BusCapture::start(&f.tpm);
    let r = f.unlock_test(&["--no-fence", "--tcti", &bus.tcti()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // What revocability costs at unlock: NV_ReadPublic (the counter's handle), PolicyNV.
    let codes = bus.command_codes();
    assert!(
        codes.contains(&0x169) && codes.contains(&0x149),
        "{codes:x?}"
    );

    let r = f.run(&["revoke", f.image.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 5, "the header's approval is gone: {}", r.stderr);
    let r = f.unlock_test(&["--no-fence", "--approval", kept.to_str().unwrap()]);
    assert_eq!(r.code, 5, "the kept approval: {}", r.stderr);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    // Approved again, for the counter's new value.
    assert_eq!(approve(&f.image, &private, &[&now], &[]).code, 0);
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_counter_is_never_made_offline() {
    let f = Fixture::new();
    let (_, public) = policy_key(&f, "builder");
    let srk = f.path("srk.pub");
    assert_eq!(
        f.run(&["srk-public", "--out", srk.to_str().unwrap()]).code,
        0
    );
    let before = f.image_hash();
    let r = enroll_offline(&f, &srk, &public, &["--revocable"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}

#[test]
fn commands_per_unlock_with_an_approval() {
    let f = Fixture::new();
    let (private, public) = policy_key(&f, "admin");
    enroll_signed(&f, &public, &[]);
    assert_eq!(approve(&f.image, &private, &[&pcr7(&f)], &[]).code, 0);
    let name = f.srk_name();
    let bus = common::BusCapture::start(&f.tpm);
    let r = f.unlock_test(&["--srk-name", &name, "--tcti", &bus.tcti()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // PCR_Read (which approval holds), Load, StartAuthSession, PolicyPCR, LoadExternal,
    // VerifySignature, PolicyAuthorize, FlushContext (the key), PolicyPCR (the fence),
    // Unseal, FlushContext (the object), PCR_Event.
    assert_eq!(
        bus.command_codes(),
        [
            0x17E, 0x157, 0x176, 0x17F, 0x167, 0x177, 0x16A, 0x165, 0x17F, 0x15E, 0x165, 0x13C
        ]
    );
}
