//! `predict`: the Authenticode hash against pesign on real EFI binaries (systemd-boot and
//! its EFI stub, from Debian's systemd-boot-efi), and the event log replay against a swtpm
//! that tpm2-tools extended the way firmware does: the predicted values are what the TPM
//! holds after the "next boot".

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, checked, run};
use sealroot::tpm::pcr::PcrBank;

const EFI_BINARIES: &[&str] = &[
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
];
const EV_SEPARATOR: u32 = 4;
const EV_EVENT_TAG: u32 = 6;
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;

fn pesign_hash(file: &str) -> String {
    let out = checked(Command::new("pesign").args(["-h", "-i", file]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .last()
        .expect("pesign prints the hash")
        .to_string()
}

#[test]
fn authenticode_hash_matches_pesign() {
    for file in EFI_BINARIES {
        let image = std::fs::read(file).expect("systemd-boot-efi must be installed (make deps)");
        let ours = sealroot::authenticode::pe_hash(&image, PcrBank::Sha256).unwrap();
        assert_eq!(hex::encode(ours), pesign_hash(file), "{file}");
    }
}

/// A crypto-agile log (SHA-256 bank) as firmware writes it, for these events.
fn log(events: &[(u32, u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&0u32.to_le_bytes());
    spec.extend_from_slice(&[0, 2, 0, 2]);
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&0x000bu16.to_le_bytes());
    spec.extend_from_slice(&32u16.to_le_bytes());
    spec.push(0);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for (pcr, kind, digest, data) in events {
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x000bu16.to_le_bytes());
        out.extend_from_slice(digest);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn tagged(tag: u32, text: &[u8]) -> Vec<u8> {
    let mut d = tag.to_le_bytes().to_vec();
    d.extend_from_slice(&(text.len() as u32).to_le_bytes());
    d.extend_from_slice(text);
    d
}

fn utf16z(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

fn sha256(data: &[u8]) -> Vec<u8> {
    PcrBank::Sha256.hash(data)
}

/// Extends the swtpm as the firmware and the EFI stub would for a boot of these parts.
fn boot(f: &Fixture, kernel: &str, initrd: &[u8], cmdline: &str) {
    for (pcr, digest) in [
        (4, sha256(&[0, 0, 0, 0])),
        (4, hex::decode(pesign_hash(kernel)).unwrap()),
        (9, sha256(initrd)),
        (9, sha256(&utf16z(cmdline))),
    ] {
        f.tpm.tools(&[
            "tpm2_pcrextend",
            &format!("{pcr}:sha256={}", hex::encode(digest)),
        ]);
    }
}

fn events(kernel: &[u8], initrd: &[u8], cmdline: &str) -> Vec<(u32, u32, Vec<u8>, Vec<u8>)> {
    vec![
        (4, EV_SEPARATOR, sha256(&[0, 0, 0, 0]), vec![0, 0, 0, 0]),
        (
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            sealroot::authenticode::pe_hash(kernel, PcrBank::Sha256).unwrap(),
            b"kernel device path".to_vec(),
        ),
        (
            9,
            EV_EVENT_TAG,
            sha256(initrd),
            tagged(0x8F3B_22EC, b"Linux initrd\0"),
        ),
        (
            9,
            EV_EVENT_TAG,
            sha256(&utf16z(cmdline)),
            tagged(0x8F3B_22ED, b"LOADED_IMAGE::LoadOptions\0"),
        ),
    ]
}

#[test]
fn verify_then_predict_the_next_boot() {
    let mut f = Fixture::new();
    let (kernel_a, kernel_b) = (EFI_BINARIES[0], EFI_BINARIES[1]);
    let image_a = std::fs::read(kernel_a).unwrap();
    boot(&f, kernel_a, b"initrd one", "root=/dev/vda ro");
    let log_file = f.write(
        "eventlog",
        &log(&events(&image_a, b"initrd one", "root=/dev/vda ro")),
    );
    let log_s = log_file.to_str().unwrap();
    let r = f.run(&["predict", "--eventlog", log_s, "--verify", "--pcrs", "4,9"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The next boot: another kernel, initrd and command line.
    let initrd_b = f.write("initrd-b", b"initrd two");
    let r = run(&[
        "predict",
        "--eventlog",
        log_s,
        "--kernel",
        kernel_b,
        "--initrd",
        initrd_b.to_str().unwrap(),
        "--cmdline",
        "root=/dev/vda ro quiet",
        "--pcrs",
        "4,9",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let predicted: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    f.tpm.reset();
    boot(&f, kernel_b, b"initrd two", "root=/dev/vda ro quiet");
    for pcr in [4, 9] {
        assert_eq!(
            predicted["pcr_values"][pcr.to_string()].as_str().unwrap(),
            hex::encode(f.tpm.read(pcr)),
            "PCR {pcr}"
        );
    }
    // The prediction is what enroll reads.
    let values = f.write("next.json", r.stdout.as_bytes());
    assert!(Path::new(&values).exists());
    let srk = f.path("srk.pub");
    assert_eq!(
        f.run(&["srk-public", "--out", srk.to_str().unwrap()]).code,
        0
    );
    let r = run(&[
        "enroll",
        f.image.to_str().unwrap(),
        "--unlock-key-file",
        f.passfile.to_str().unwrap(),
        "--srk-public",
        srk.to_str().unwrap(),
        "--pcr-values",
        values.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.unlock_test(&["--no-fence"]).code, 0);
}

#[test]
fn a_log_that_does_not_replay_is_an_error() {
    let f = Fixture::new();
    let image = std::fs::read(EFI_BINARIES[0]).unwrap();
    // The TPM saw a different command line than the log says.
    boot(&f, EFI_BINARIES[0], b"initrd", "root=/dev/vda");
    let log_file = f.write(
        "eventlog",
        &log(&events(&image, b"initrd", "root=/dev/sda")),
    );
    let r = f.run(&[
        "predict",
        "--eventlog",
        log_file.to_str().unwrap(),
        "--verify",
        "--pcrs",
        "4,9",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("PCR 4: the log replays") || r.stderr.contains("PCR 4: the log replays"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("PCR(s) [9]"), "{}", r.stderr);
    let broken = f.write("broken", b"not an event log at all, really not");
    let r = f.run(&[
        "predict",
        "--eventlog",
        broken.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Spec ID"), "{}", r.stderr);
}

/// Two real logs, captured from the VM suite's guest (QEMU 7.2 direct kernel boot, OVMF):
/// the same kernel and command line, the initrd changed between them.
#[test]
fn real_logs_replay_to_their_pcrs_and_name_what_changed() {
    use sealroot::eventlog::EventLog;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/eventlog");
    let mut recorded = Vec::new();
    for name in ["qemu-ovmf-boot-a", "qemu-ovmf-boot-b"] {
        let log = EventLog::parse(&std::fs::read(dir.join(format!("{name}.bin"))).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let replayed = log.replay(PcrBank::Sha256).unwrap();
        for pcr in [4u32, 9] {
            assert_eq!(
                hex::encode(&replayed[&pcr]),
                meta["pcrs_sha256"][pcr.to_string()].as_str().unwrap(),
                "{name} PCR {pcr}"
            );
        }
        let events = sealroot::predict::record(&log, &[4, 9], PcrBank::Sha256);
        let initrd = events.iter().find(|e| e.what == "initrd").expect("initrd");
        assert_eq!(initrd.digest, meta["initrd_sha256"].as_str().unwrap());
        let cmdline = events.iter().find(|e| e.what == "command line").unwrap();
        // OVMF hands the stub -append plus " initrd=initrd", in UTF-16 with its NUL.
        let options = format!("{} initrd=initrd", meta["append"].as_str().unwrap());
        assert_eq!(cmdline.digest, hex::encode(sha256(&utf16z(&options))));
        assert!(
            events
                .iter()
                .any(|e| e.what == "kernel image" && e.pcr == 4)
        );
        recorded.push(events);
    }
    // Between them the initrd changed, and with it (QEMU writes its size and address into
    // the kernel's header) the kernel's measurement.
    assert_eq!(
        sealroot::predict::explain(9, &recorded[0], &recorded[1]),
        "PCR 9: the initrd differs from the approved one"
    );
    assert_eq!(
        sealroot::predict::explain(4, &recorded[0], &recorded[1]),
        "PCR 4: a different kernel image"
    );
}

/// The local approval key stays in the test runner's (root's) keyring after enroll: gone
/// again when the test ends, pass or fail.
struct KeyringEntry(String);

impl Drop for KeyringEntry {
    fn drop(&mut self) {
        let _ = sealroot::keyring::remove(&self.0);
    }
}

fn status_json(f: &Fixture, log: &Path) -> serde_json::Value {
    let r = f.run(&[
        "status",
        f.image.to_str().unwrap(),
        "--json",
        "--eventlog",
        log.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// A machine that approves its own boots: enrolled with a local key, the update hook's
/// command approves the next kernel, initrd and command line; that boot unlocks; the
/// prune narrows the approval to it; a boot with an initrd changed behind the hooks'
/// back does not unlock, is not approved by a prune, and `status` names the initrd.
#[test]
fn local_approvals_follow_updates() {
    let mut f = Fixture::new();
    let img = f.image.to_str().unwrap().to_string();
    let (kernel_a, kernel_b) = (EFI_BINARIES[0], EFI_BINARIES[1]);
    let (image_a, image_b) = (
        std::fs::read(kernel_a).unwrap(),
        std::fs::read(kernel_b).unwrap(),
    );
    boot(&f, kernel_a, b"initrd one", "root=/dev/vda ro");
    let log_a = f.write(
        "log-a",
        &log(&events(&image_a, b"initrd one", "root=/dev/vda ro")),
    );
    f.enroll(&["--local-approval", "--pcrs", "4,9"]);
    let uuid = status_json(&f, &log_a)["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let _cleanup = KeyringEntry(sealroot::local_key::keyring_name(&uuid));
    assert!(
        sealroot::local_key::find(&uuid).unwrap().is_some(),
        "enroll leaves the key in root's keyring"
    );
    let s = status_json(&f, &log_a);
    let token = &s["tokens"][0];
    assert_eq!(token["local_approval_key"], "loaded", "{s}");
    assert_eq!(token["would_unseal"], true, "{s}");
    assert_eq!(f.unlock_test(&[]).code, 0);
    f.tpm.reset();
    boot(&f, kernel_a, b"initrd one", "root=/dev/vda ro");

    // The update: a new kernel, initrd and command line, approved by the hook's command.
    let initrd_b = f.write("initrd-b", b"initrd two");
    let r = f.run(&[
        "update-approvals",
        &img,
        "--eventlog",
        log_a.to_str().unwrap(),
        "--kernel",
        kernel_b,
        "--initrd",
        initrd_b.to_str().unwrap(),
        "--cmdline",
        "root=/dev/vda ro quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("approved this boot and the next"),
        "{}",
        r.stderr
    );
    let s = status_json(&f, &log_a);
    let approvals = s["tokens"][0]["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "the old approval is replaced: {s}");
    assert_eq!(approvals[0]["sets"], 2);
    // This boot still unlocks, and so does the next.
    assert_eq!(f.unlock_test(&[]).code, 0);
    f.tpm.reset();
    boot(&f, kernel_b, b"initrd two", "root=/dev/vda ro quiet");
    let log_b = f.write(
        "log-b",
        &log(&events(&image_b, b"initrd two", "root=/dev/vda ro quiet")),
    );
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    f.tpm.reset();
    boot(&f, kernel_b, b"initrd two", "root=/dev/vda ro quiet");
    let r = f.run(&[
        "update-approvals",
        &img,
        "--prune",
        "--eventlog",
        log_b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("approved this boot only"), "{}", r.stderr);
    let s = status_json(&f, &log_b);
    assert_eq!(s["tokens"][0]["approvals"][0]["sets"], 1, "{s}");
    assert_eq!(f.unlock_test(&[]).code, 0);

    // The initrd replaced behind the hooks' back.
    f.tpm.reset();
    boot(
        &f,
        kernel_b,
        b"initrd of someone else",
        "root=/dev/vda ro quiet",
    );
    let log_c = f.write(
        "log-c",
        &log(&events(
            &image_b,
            b"initrd of someone else",
            "root=/dev/vda ro quiet",
        )),
    );
    let before = f.image_hash();
    let r = f.unlock_test(&[]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = f.run(&[
        "update-approvals",
        &img,
        "--prune",
        "--eventlog",
        log_c.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("this boot is not approved"),
        "{}",
        r.stderr
    );
    assert_eq!(
        f.image_hash(),
        before,
        "an unapproved boot approves nothing"
    );
    let r = f.run(&["status", &img, "--eventlog", log_c.to_str().unwrap()]);
    assert!(
        r.stdout
            .contains("PCR 9: the initrd differs from the approved one"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("  PCR 4:"),
        "only the initrd changed: {}",
        r.stdout
    );
    // An update hook on this boot approves only the next boot, never this one.
    let r = f.run(&[
        "update-approvals",
        &img,
        "--eventlog",
        log_c.to_str().unwrap(),
        "--initrd",
        initrd_b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("only the next boot is"), "{}", r.stderr);
    assert_eq!(f.unlock_test(&[]).code, 5);
}

/// Without the key in the keyring there is nothing to approve with, and nothing changes.
#[test]
fn update_approvals_needs_the_local_key() {
    let f = Fixture::new();
    let img = f.image.to_str().unwrap();
    boot(&f, EFI_BINARIES[0], b"initrd", "root=/dev/vda");
    let log_file = f.write(
        "log",
        &log(&events(
            &std::fs::read(EFI_BINARIES[0]).unwrap(),
            b"initrd",
            "root=/dev/vda",
        )),
    );
    let before = f.image_hash();
    let r = f.run(&[
        "update-approvals",
        img,
        "--prune",
        "--eventlog",
        log_file.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("no local approval key"), "{}", r.stderr);
    assert_eq!(f.image_hash(), before);
}
