//! Offline-sealed `systemd-tpm2` tokens: made by systemd-cryptenroll 257 from Debian 13
//! (`--tpm2-device-key`: sealed to the SRK's public area with an import seed, no TPM
//! involved), then unlocked by sealroot against this test's swtpm, which imports the blob.
//! Debian 12's systemd 252 predates `--tpm2-device-key` (255): the newer one runs from a
//! debootstrapped Debian 13 root (tests/common `trixie_root`, built once and cached).

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use common::{Fixture, export_token};

/// Makes PCR 7 hold something other than its reset value, so an unlock shows that the value
/// handed to systemd is the one sealed; returns its hex.
fn measured_pcr7(f: &Fixture) -> String {
    f.tpm.extend(7, b"secure boot state");
    hex::encode(f.tpm.read(7))
}

/// The SRK's TPM2B_PUBLIC as sealroot exports it for sealing elsewhere (creating the SRK at
/// 0x81000001 if the TPM has none).
fn srk_public(f: &Fixture, name: &str) -> PathBuf {
    let out = f.path(name);
    let r = f.run(&["srk-public", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "srk-public: {}", r.stderr);
    out
}

/// `systemd-cryptenroll --tpm2-device-key=SRK --tpm2-pcrs=7:sha256=HEX` from the Debian 13
/// root: the PCR value is given, so systemd touches no TPM (it sees none: its /dev has no
/// TPM and no TCTI is named).
fn offline_enroll(f: &Fixture, srk: &Path, pcr7: &str, pin: Option<&str>) {
    let root = common::trixie_root();
    let mut args = vec![
        format!("--tpm2-device-key={}", srk.display()),
        format!("--tpm2-pcrs=7:sha256={pcr7}"),
        format!("--unlock-key-file={}", f.passfile.display()),
    ];
    let mut env = vec![];
    if let Some(p) = pin {
        args.push("--tpm2-with-pin=yes".into());
        env.push(("NEWPIN", p));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::trixie_systemd_cryptenroll(&root, &f.image, &args, &env);
    assert!(
        out.status.success(),
        "systemd-cryptenroll (Debian 13) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The token as systemd wrote it: a PCR 7 policy whose `tpm2-blob` is three TPM2B parts,
/// private, public and the import seed (TPM2B_ENCRYPTED_SECRET), with nothing after them.
/// Returns the parts.
fn check_offline_token(f: &Fixture, pin: bool) -> [Vec<u8>; 3] {
    let t = export_token(&f.image, 0);
    assert_eq!(t["type"], "systemd-tpm2", "{t}");
    assert_eq!(t["tpm2-pcrs"], serde_json::json!([7]), "{t}");
    assert_eq!(t["tpm2-pcr-bank"], "sha256", "{t}");
    assert_eq!(t["tpm2-pin"].as_bool().unwrap_or(false), pin, "{t}");
    assert!(t["tpm2_srk"].is_string(), "the parent is recorded: {t}");
    let blob = B64
        .decode(t["tpm2-blob"].as_str().expect("tpm2-blob is one string"))
        .expect("tpm2-blob is base64");
    let mut rest = &blob[..];
    let mut parts = Vec::new();
    while rest.len() >= 2 {
        let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        assert!(
            size > 0 && rest.len() >= 2 + size,
            "a truncated TPM2B in {}",
            hex::encode(&blob)
        );
        parts.push(rest[2..2 + size].to_vec());
        rest = &rest[2 + size..];
    }
    assert!(rest.is_empty(), "a stray byte after the TPM2Bs");
    let parts: [Vec<u8>; 3] = parts.try_into().unwrap_or_else(|p: Vec<Vec<u8>>| {
        panic!(
            "tpm2-blob has {} TPM2B parts, not private, public and seed",
            p.len()
        )
    });
    parts
}

fn status(f: &Fixture) -> String {
    let s = f.run(&["status", f.image.to_str().unwrap()]);
    assert_eq!(s.code, 0, "status: {}", s.stderr);
    s.stdout
}

/// The mismatch message names PCR 7 alone: "sha256 PCR 7 differs", or "… the sha256 PCRs 7
/// differ …" when the PCR had left its reset value before enrollment.
fn names_pcr7_alone(stderr: &str) -> bool {
    stderr.contains("sha256 PCR 7 ") || stderr.contains("sha256 PCRs 7 ")
}

/// Opens with the PCR value sealed, exit 5 naming PCR 7 once it changes; the header is
/// never written.
fn unlocks_then_mismatch(f: &Fixture, extra: &[&str]) {
    let mut args = vec!["--no-fence"];
    args.extend_from_slice(extra);
    let before = f.image_hash();
    let r = f.unlock_test(&args);
    assert_eq!(r.code, 0, "unlock: {}", r.stderr);
    assert!(status(f).contains("would unseal now: yes"));
    f.tpm.extend(7, b"another boot chain");
    let r = f.unlock_test(&args);
    assert_eq!(r.code, 5, "unlock after PCR 7 changed: {}", r.stderr);
    assert!(names_pcr7_alone(&r.stderr), "{}", r.stderr);
    assert_eq!(f.image_hash(), before, "unlock must not write the header");
}

#[test]
fn systemd_device_key_token_unlocks() {
    let f = Fixture::new();
    let srk = srk_public(&f, "srk.pub");
    let pcr7 = measured_pcr7(&f);
    offline_enroll(&f, &srk, &pcr7, None);
    let [_, _, seed] = check_offline_token(&f, false);
    // sealroot's SRK is ECC P-256: the seed is an ephemeral point, two coordinates of up
    // to 32 bytes (systemd drops leading zero bytes, 1 point in 128).
    let x_len = u16::from_be_bytes([seed[0], seed[1]]) as usize;
    let y_len = u16::from_be_bytes([seed[2 + x_len], seed[3 + x_len]]) as usize;
    assert!(
        (1..=32).contains(&x_len) && (1..=32).contains(&y_len) && seed.len() == 4 + x_len + y_len,
        "seed {}",
        hex::encode(&seed)
    );
    let s = status(&f);
    assert!(s.contains("offline-sealed"), "status: {s}");
    unlocks_then_mismatch(&f, &[]);
}

#[test]
fn systemd_device_key_token_with_an_rsa_srk() {
    let f = Fixture::new();
    // The TCG's RSA-2048 SRK template, made persistent before anything else touches the TPM.
    let srk = f.path("srk.pub");
    f.tpm.provision_rsa_srk(&srk);
    // sealroot exports the same key: it uses the SRK the TPM has.
    let ours = srk_public(&f, "srk-sealroot.pub");
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&srk).unwrap());
    let pcr7 = measured_pcr7(&f);
    offline_enroll(&f, &srk, &pcr7, None);
    let [_, _, seed] = check_offline_token(&f, false);
    // The seed is RSA-OAEP encrypted to the 2048-bit key.
    assert_eq!(seed.len(), 256, "seed {}", hex::encode(&seed));
    assert_eq!(export_token(&f.image, 0)["tpm2-primary-alg"], "rsa");
    let s = status(&f);
    assert!(s.contains("offline-sealed"), "status: {s}");
    unlocks_then_mismatch(&f, &[]);
}

#[test]
fn systemd_device_key_token_with_a_pin() {
    let f = Fixture::new();
    let srk = srk_public(&f, "srk.pub");
    let pcr7 = measured_pcr7(&f);
    offline_enroll(&f, &srk, &pcr7, Some("4711"));
    check_offline_token(&f, true);
    let s = status(&f);
    assert!(s.contains("offline-sealed"), "status: {s}");
    assert!(s.contains("PIN yes"), "status: {s}");
    let before = f.image_hash();
    let pin = f.write("pin", b"4711\n");
    let wrong = f.write("wrong", b"1234\n");
    let (pin, wrong) = (pin.to_str().unwrap(), wrong.to_str().unwrap());
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin]);
    assert_eq!(r.code, 0, "unlock with the PIN: {}", r.stderr);
    let r = f.unlock_test(&["--no-fence", "--pin-file", wrong]);
    assert_eq!(r.code, 6, "unlock with a wrong PIN: {}", r.stderr);
    // A changed PCR is found before the PIN is tried (no dictionary-attack cost).
    f.tpm.extend(7, b"another boot chain");
    let strikes = f.tpm.lockout_counter();
    let r = f.unlock_test(&["--no-fence", "--pin-file", pin]);
    assert_eq!(r.code, 5, "unlock after PCR 7 changed: {}", r.stderr);
    assert!(names_pcr7_alone(&r.stderr), "{}", r.stderr);
    assert_eq!(f.tpm.lockout_counter(), strikes, "a strike was spent");
    assert_eq!(f.image_hash(), before, "unlock must not write the header");
}
