//! `sealroot unlock` against a real swtpm and real LUKS2 images.

mod common;

use common::{Fixture, Swtpm, make_image};
use sealroot::luks::Volume;
use sealroot::tpm::fence;
use sealroot::tpm::pcr::PcrBank;

#[test]
fn enroll_then_unlock_test_leaves_header_unchanged() {
    let f = Fixture::new();
    f.enroll(&[]);
    let before = f.image_hash();
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        f.image_hash(),
        before,
        "an unlock must not write to the volume"
    );
}

#[test]
fn pcr7_change_is_a_policy_mismatch_naming_pcr7() {
    let f = Fixture::new();
    f.enroll(&[]);
    f.tpm.extend(7, b"secure boot db changed");
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("PCR 7 differs"), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "one line per problem: {}",
        r.stderr
    );
}

#[test]
fn fence_stops_a_second_unlock_until_the_tpm_is_reset() {
    let mut f = Fixture::new();
    f.enroll(&[]);
    assert_eq!(f.tpm.read(15), vec![0u8; 32]);
    assert_eq!(f.unlock_test(&[]).code, 0);
    assert_ne!(
        f.tpm.read(15),
        vec![0u8; 32],
        "the fence PCR must be extended"
    );
    let second = f.unlock_test(&[]);
    assert_eq!(second.code, 5, "{}", second.stderr);
    assert!(second.stderr.contains("fence PCR 15"), "{}", second.stderr);
    f.tpm.reset();
    let after_reset = f.unlock_test(&[]);
    assert_eq!(after_reset.code, 0, "{}", after_reset.stderr);
}

#[test]
fn failed_unlock_still_extends_the_fence() {
    let f = Fixture::new();
    f.enroll(&[]);
    f.tpm.extend(7, b"changed");
    assert_eq!(f.unlock_test(&[]).code, 5);
    assert_ne!(f.tpm.read(15), vec![0u8; 32]);
}

#[test]
fn no_fence_leaves_the_pcr_alone() {
    let f = Fixture::new();
    f.enroll(&[]);
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 0);
    assert_eq!(f.tpm.read(15), vec![0u8; 32]);
    assert_eq!(f.unlock_test(&[]).code, 0);
}

#[test]
fn fence_command_blocks_unlock() {
    let f = Fixture::new();
    f.enroll(&[]);
    assert_eq!(f.run(&["fence"]).code, 0);
    assert_eq!(f.unlock_test(&[]).code, 5);
}

#[test]
fn fence_none_enrollment_survives_repeated_unlocks_where_configured() {
    let f = Fixture::new();
    f.enroll(&["--fence-pcr", "none"]);
    // Outside the boot path, with no fence configured, such a token works every time.
    assert_eq!(f.unlock_test(&["--fence-pcr", "none"]).code, 0);
    assert_eq!(f.unlock_test(&["--fence-pcr", "none"]).code, 0);
    // The boot path's configuration has a fence: a token without one is refused.
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("without a fence"), "{}", r.stderr);
}

#[test]
fn several_volumes_unlock_then_fence_once_with_the_documented_event() {
    let f = Fixture::new();
    let second = make_image(f.dir.path(), "second.img", &f.passfile);
    f.enroll(&[]);
    let r = f.run(&[
        "enroll",
        second.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = f.run(&[
        "unlock",
        f.image.to_str().unwrap(),
        "root",
        second.to_str().unwrap(),
        "home",
        "--test",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Recompute the fence from the volume keys: exactly one extend of the documented event.
    let mut ms = Vec::new();
    for (img, name) in [(&f.image, "root"), (&second, "home")] {
        let mut vol = Volume::open(img).unwrap();
        let uuid = vol.uuid().unwrap();
        let (_, vk) = vol.volume_key(None, common::PASSPHRASE.as_bytes()).unwrap();
        ms.push(fence::unlocked_measurement(vk.expose(), name, &uuid));
    }
    let expected = PcrBank::Sha256.extend(&[0u8; 32], &PcrBank::Sha256.hash(&fence::event(&ms)));
    assert_eq!(f.tpm.read(15), expected);
}

#[test]
fn right_and_wrong_pin() {
    let f = Fixture::new();
    let pin = f.write("pin", b"4711\n");
    let wrong = f.write("wrong", b"1234\n");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let bad = f.unlock_test(&["--pin-file", wrong.to_str().unwrap(), "--no-fence"]);
    assert_eq!(bad.code, 6, "{}", bad.stderr);
    assert!(bad.stderr.contains("wrong PIN"), "{}", bad.stderr);
    let none = f.unlock_test(&["--no-fence"]);
    assert_eq!(none.code, 6, "no PIN, no terminal: {}", none.stderr);
    assert!(none.stderr.contains("needs a PIN"), "{}", none.stderr);
    let good = f.unlock_test(&["--pin-file", pin.to_str().unwrap()]);
    assert_eq!(good.code, 0, "{}", good.stderr);
}

#[test]
fn pin_from_stdin() {
    let f = Fixture::new();
    let pin = f.write("pin", b"2468");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let tcti = f.tpm.tcti();
    let r = common::run_with_stdin(
        &[
            "unlock",
            f.image.to_str().unwrap(),
            "root",
            "--test",
            "--pin-file",
            "-",
            "--tcti",
            &tcti,
        ],
        b"2468\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn blob_from_another_tpm_is_a_clear_error() {
    let f = Fixture::new();
    f.enroll(&[]);
    // A factory-fresh TPM: no SRK at all.
    let other = Swtpm::start(f.dir.path());
    let tcti = other.tcti();
    let r = f.unlock_test(&["--tcti", &tcti]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("another TPM"), "{}", r.stderr);

    // A TPM with its own SRK at the same handle.
    let g = Fixture::new();
    g.enroll(&[]);
    let tcti = g.tpm.tcti();
    let r = f.unlock_test(&["--tcti", &tcti]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("another TPM"), "{}", r.stderr);
}

#[test]
fn two_enrollments_are_both_tried() {
    let f = Fixture::new();
    f.enroll(&["--pcrs", "7"]);
    f.enroll(&["--pcrs", "8"]);
    // Token 0 no longer fits; token 1 must unlock.
    f.tpm.extend(7, b"changed");
    let r = f.unlock_test(&["--no-fence"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Both no longer fit: the mismatch is reported.
    f.tpm.extend(8, b"changed");
    assert_eq!(f.unlock_test(&[]).code, 5);
}

#[test]
fn tpm_absent_is_exit_4() {
    let f = Fixture::new();
    f.enroll(&[]);
    let r = f.unlock_test(&["--tcti", "device:/nonexistent/tpm0"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("TPM unavailable"), "{}", r.stderr);
    // A swtpm address nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    assert_eq!(f.unlock_test(&["--tcti", &tcti]).code, 4);
}

#[test]
fn missing_or_foreign_device_is_exit_7() {
    let f = Fixture::new();
    let r = f.run(&["unlock", "/nonexistent/disk", "root", "--test"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    let plain = f.write("plain.img", &vec![0u8; 1 << 20]);
    let r = f.run(&["unlock", plain.to_str().unwrap(), "root", "--test"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("not a LUKS2 volume"), "{}", r.stderr);
}

#[test]
fn volume_without_token_is_exit_3() {
    let f = Fixture::new();
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no sealroot, systemd-tpm2 or clevis token"),
        "{}",
        r.stderr
    );
}

#[test]
fn sha384_and_sha1_banks() {
    for bank in ["sha384", "sha1"] {
        let f = Fixture::new();
        f.enroll(&["--pcr-bank", bank]);
        let r = f.unlock_test(&[]);
        assert_eq!(r.code, 0, "{bank}: {}", r.stderr);
    }
}

#[test]
fn pin_through_an_askpass_program() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let pin = f.write("pin", b"1357");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    // Stands in for /lib/cryptsetup/askpass: prints what the user typed, gets the prompt.
    let seen = f.path("prompt-seen");
    let script = f.write(
        "askpass",
        format!(
            "#!/bin/sh\nprintf '%s' \"$1\" > {}\necho 1357\n",
            seen.display()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = f.unlock_test(&["--askpass", script.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let prompt = std::fs::read_to_string(&seen).unwrap();
    assert!(prompt.contains("PIN"), "{prompt}");
}
