//! The fuzz harnesses: one function per target, each taking the raw input bytes and driving
//! one parser of untrusted bytes through sealroot's public API, then everything the program
//! does in software with what it parsed. A harness must never panic on any input; a panic,
//! an overflow (the targets are built with debug assertions) or an abort is a finding.
//!
//! The fuzz targets (`fuzz_targets/*.rs`) call these functions, and so does the regression
//! test (`tests/fuzz_regressions.rs`, which includes this file) for every input kept under
//! `fuzz/regressions/<target>/`: the same function, under plain `cargo test`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use sealroot::approval::{self, ApprovalJson, PolicyKey, RecordedEvent};
use sealroot::eventlog::EventLog;
use sealroot::luks::volume::TokenEntry;
use sealroot::predict::{self, Loader, NextBoot};
use sealroot::secret::Secret;
use sealroot::tokens::provision::ProvisionToken;
use sealroot::tokens::sealroot::SealrootToken;
use sealroot::tokens::{self, UnsealPlan};
use sealroot::tpm::nv::NvCounter;
use sealroot::tpm::object::{self, PublicArea};
use sealroot::tpm::pcr::{PCR_COUNT, PcrBank};
use sealroot::tpm::seal::SealedObject;
use sealroot::tpm::srk::ExpectedParent;
use sealroot::tpm::wire;
use sealroot::trust::Trust;

/// A harness: the function a fuzz target calls with each input.
pub type Harness = fn(&[u8]);

/// Every target, by the name of its directory under fuzz/corpus and fuzz/regressions.
pub const TARGETS: &[(&str, Harness)] = &[
    ("token_sealroot", token_sealroot),
    ("token_systemd", token_systemd),
    ("token_clevis", token_clevis),
    ("token_provision", token_provision),
    ("systemd_signature", systemd_signature),
    ("approval", approval_file),
    ("tpm_blob", tpm_blob),
    ("tpm_public", tpm_public),
    ("esys_tr", esys_tr),
    ("pcr_values", pcr_values),
    ("eventlog", eventlog),
    ("pe_image", pe_image),
    ("initrd_config", initrd_config),
];

/// The harness of a target, by name.
pub fn target(name: &str) -> Option<Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

const BANKS: [PcrBank; 3] = [PcrBank::Sha1, PcrBank::Sha256, PcrBank::Sha384];

/// The JWK unsealed from the clevis test vector (shared/reference/tokens-clevis.md §11.1):
/// with it the vector's JWE decrypts, so mutations of the token reach the decryption.
const CLEVIS_JWK: &str = r#"{"alg":"A256GCM","k":"um7NVnFkzNM7RAsc8McKO1bHGy8PZrA8lUxmDn2lA0s","key_ops":["encrypt","decrypt"],"kty":"oct"}"#;

/// A throwaway policy key (the one of src/approval.rs's unit test): approvals in the seeds
/// are signed with it, for the policyRef `POLICY_REF`.
const POLICY_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJl6fW/4DJcE5zL+O
R5VMVsXLaJci4kQ3+7A3YaGOF+ShRANCAASdaL05uF+nGV373qe7n4b1A8oFTfX+
4bcA1WSkyGVySPMCk/uxqgG+GkF0deeLLMigSouwPOIOLFrwUWAzzaD2
-----END PRIVATE KEY-----";

fn policy_ref() -> Vec<u8> {
    [approval::POLICY_REF_PREFIX, &[1u8; 16]].concat()
}

/// The signed-policy token of shared/reference/tokens-systemd.md §11.3: the key the
/// signature-file target checks signatures against.
const SYSTEMD_SIGNED_TOKEN: &str = r#"{"type":"systemd-tpm2","keyslots":["4"],"tpm2-blob":"AJ4AIOJBjaO79m0OXsFx3yc0110hAjndy+r7kSOLqEhiiFHnABC/5EicOQj8+RwOBmiSs4W7ayYgt7bwjc3B4htzu6Az+7kIdER+mJflIPECmUXSox/h/+73rQnsrmX5JdqTrlNMgvbN9/b31zPNHw45+Mybldb9NSjEpEnuzWuyoKlcgxwyNIebNPdLNH/6zgIowiVbXZQ0+m3NoKXWvQBOAAgACwAAABIAIMQr0l3F200ZyCpAEbgRmXEXTBbp6Poi5f9poXJKs7zjABAAIDbubpsDVkRIndV13Ub6b4cu/alPsbu1adohiJRaqhbO","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"c42bd25dc5db4d19c82a4011b8119971174c16e9e8fa22e5ff69a1724ab3bce3","tpm2-pin":false,"tpm2_pubkey_pcrs":[11],"tpm2_pubkey":"LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUlJQklqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FROEFNSUlCQ2dLQ0FRRUE4cHJZSVZOU0pOTktzL3NtUm1NbApHcElTdzVseEpEbGpLbm1PNDVqZDB0S2lIMUNiM2s1KzBaclBQV0JtOWk4bERTZHJXL0owSncxSHQ3Y2g4S3dECkF6TlRLRXNRYnZyWEZvZWpTcEJZMzJRNHZlWUJtUE1TTXR4OHVUeWU0bG44UzZPOE9yeTZkcFNYVk5zSFVJMEIKYUllckF0d3B0bGIzR2RiM0VhWXF4REtEZVpQVFRBc3VxU2lzYm96NWpnSEVOdU1lcThNeGh5bnI5bTJCUXRQYwpwN092OVlRb1RmR2xVSjgvc0JiVEJZOWFVWmtYQXhHZmZlZVp3ZUY0c3ZoU1hOSDNxdFFlcC96dFJRK1RWTWxVCnNMNVVoMkVaWnk3QzFzcmtRV29IbkFEU0M5SGJ2OHVQOXB2VkpibVhLRkF4Y3JGT0NmTVc1MVkySjZGNmFJMHoKaVFJREFRQUIKLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg=="}"#;

/// The event log of a QEMU/OVMF direct kernel boot (tests/testdata): the log the kernel
/// image target predicts the next boot from.
const EVENTLOG: &[u8] = include_bytes!("../../tests/testdata/eventlog/qemu-ovmf-boot-a.bin");

fn json(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// The current PCR values a plan's check reads, all at `fill`.
fn current_at(plan: &UnsealPlan, fill: u8) -> BTreeMap<(PcrBank, u32), Vec<u8>> {
    let mut current = BTreeMap::new();
    for (bank, pcrs) in plan.pcrs_to_read() {
        for i in pcrs {
            current.insert((bank, i), vec![fill; bank.digest_len()]);
        }
    }
    current
}

/// What `unlock` and `status` do with a plan in software: admission against the trusted
/// configuration, the recorded parent, the policy check against current PCR values and
/// its explanation, the request for the TPM layer, and the passphrase from unsealed bytes.
fn exercise(mut plan: UnsealPlan, token: &Value) {
    let _ = plan.label();
    let _ = plan.fence_pcr();
    let _ = plan.outlives_fence(15);
    let _ = plan.parent_is_checked();
    let _ = plan.recorded_parent();
    let pinned = Trust {
        parent: ExpectedParent {
            handle: 0x8100_0001,
            name: Some(vec![0; 34]),
        },
        ..Trust::default()
    };
    for trust in [Trust::default(), pinned] {
        let _ = plan.admit(&trust);
    }
    // Only the unsalted (v252) derivation: PBKDF2 with the header's iteration count is the
    // cost the header is allowed to ask for, not something to fuzz.
    if matches!(plan.pin, Some(tokens::PinDerivation::Sha256)) {
        let _ = plan.auth_value(&Secret::from_slice(b"1234"));
    }
    // The values the token records (sealroot), zeros, and something else.
    let mut currents = vec![current_at(&plan, 0), current_at(&plan, 0xa5)];
    if let Some(values) = &plan.pcr_values {
        let mut c = current_at(&plan, 0);
        for (i, v) in values {
            c.insert((plan.bank, *i), v.clone());
        }
        currents.push(c);
    }
    for current in &currents {
        let check = plan.check(current);
        let _ = plan.explain(&check);
    }
    // The local approval key as `unlock` unwraps it with the unsealed secret (which an
    // attacker's header does not know: the decryption fails, the parsing is exercised).
    if let Some(a) = &plan.approvals
        && let Some(wrapped) = &a.local_key
    {
        let by = sealroot::local_key::WrappedBy::SealedSecret;
        let _ = sealroot::local_key::unwrap(&[0x5a; 32], by, &a.policy_ref, wrapped);
    }
    if let Some(a) = plan.approvals.as_mut()
        && !a.found.is_empty()
    {
        let branches = a.found[0].or_branches();
        a.chosen = Some((0, 0, branches));
    }
    let expected = ExpectedParent::default();
    let auth = Secret::from_slice(&[7u8; 32]);
    let _ = plan.request(Some(&auth), &expected);
    // The unsealed bytes: the clevis vector's JWK, and whatever the input puts in
    // "__fuzz_unsealed" (an object sealed by an attacker unseals to anything).
    let mut unsealed = vec![Secret::from_slice(CLEVIS_JWK.as_bytes())];
    if let Some(s) = token.get("__fuzz_unsealed").and_then(Value::as_str) {
        unsealed.push(Secret::from_slice(s.as_bytes()));
    }
    for u in &unsealed {
        let _ = plan.passphrase(u);
    }
}

/// A sealroot token (an object), or a header (an array: the token, then the approval
/// tokens its plan verifies).
pub fn token_sealroot(data: &[u8]) {
    let Some(v) = json(data) else { return };
    let (token, header) = match &v {
        Value::Array(all) if !all.is_empty() => (&all[0], &all[1..]),
        _ => (&v, &[][..]),
    };
    if let Ok(t) = SealrootToken::from_json(3, token) {
        let _ = t.computed_policy();
        let _ = t.expected_pcr_digest();
        // What `to_json` writes must read back as the same token.
        let again = SealrootToken::from_json(3, &t.to_json());
        assert_eq!(
            again.ok().as_ref(),
            Some(&t),
            "a sealroot token does not round-trip"
        );
    }
    let Some(plan) = tokens::plan(3, token) else {
        return;
    };
    let Ok(mut plan) = plan else { return };
    let entries: Vec<TokenEntry> = header
        .iter()
        .enumerate()
        .map(|(i, json)| TokenEntry {
            id: i as u32 + 4,
            json: json.clone(),
        })
        .collect();
    plan.load_approvals(&entries, &[]);
    exercise(plan, token);
}

pub fn token_systemd(data: &[u8]) {
    let Some(v) = json(data) else { return };
    let _ = tokens::token_keyslots(&v);
    let _ = tokens::single_keyslot(&v);
    if let Ok(plan) = tokens::systemd::plan(2, &v) {
        exercise(plan, &v);
    }
}

pub fn token_clevis(data: &[u8]) {
    let Some(v) = json(data) else { return };
    if let Ok(plan) = tokens::clevis::plan(1, &v) {
        exercise(plan, &v);
    }
}

pub fn token_provision(data: &[u8]) {
    let Some(v) = json(data) else { return };
    let Ok(t) = ProvisionToken::from_json(5, &v) else {
        return;
    };
    let _ = t.passphrase();
    let written = t.to_json();
    let again = ProvisionToken::from_json(5, &written)
        .unwrap_or_else(|e| panic!("a provision token does not round-trip: {e}"));
    assert_eq!(
        again.to_json(),
        written,
        "a provision token does not round-trip"
    );
}

/// A systemd `tpm2-pcr-signature.json` (`--signature`, /run/systemd, /.extra): the
/// approvals of the signed-policy token's key, then the policy check with them.
pub fn systemd_signature(data: &[u8]) {
    let Some(sig) = json(data) else { return };
    let token: Value = serde_json::from_str(SYSTEMD_SIGNED_TOKEN).expect("the seed token");
    let Ok(mut plan) = tokens::systemd::plan(4, &token) else {
        panic!("the signed systemd seed token no longer plans");
    };
    let found = match &plan.signed {
        Some(signed) => tokens::systemd::signatures_for(&sig, signed),
        None => panic!("the signed systemd seed token has no key"),
    };
    if let Some(signed) = plan.signed.as_mut() {
        signed.signatures = found;
    }
    exercise(plan, &token);
}

/// An approval (a `sealroot-approval` header token or an `--approval` file), verified
/// against the seeds' policy key as it is, and again signed by that key: with a valid
/// signature everything after the signature check is reached too.
pub fn approval_file(data: &[u8]) {
    let Some(v) = json(data) else { return };
    let key = approval::public_of(POLICY_KEY).expect("the policy key");
    let policy_ref = policy_ref();
    let counter = NvCounter {
        index: 0x0153_5200,
        name: [&[0x00, 0x0b][..], &[0x11; 32]].concat(),
        value: 3,
    };
    for c in [None, Some(&counter)] {
        if let Ok(a) = approval::verify(&v, &key, &policy_ref, c, "fuzz") {
            use_approval(&a);
        }
    }
    let Ok(mut a) = serde_json::from_value::<ApprovalJson>(v) else {
        return;
    };
    // The sets as `approve` would write them (canonical indexes, right sizes); sign them
    // and the round trip through JSON must verify to the same sets.
    let Ok(bank) = a.pcr_bank.parse::<PcrBank>() else {
        return;
    };
    let sets: Vec<Vec<(u32, Vec<u8>)>> = a
        .pcr_sets
        .iter()
        .map(|set| {
            set.iter()
                .filter_map(|(i, v)| {
                    let i: u32 = i.parse().ok().filter(|i| *i < PCR_COUNT)?;
                    let v = hex::decode(v)
                        .ok()
                        .filter(|v| v.len() == bank.digest_len())?;
                    Some((i, v))
                })
                .collect::<BTreeMap<u32, Vec<u8>>>()
                .into_iter()
                .collect::<Vec<_>>()
        })
        .filter(|s: &Vec<_>| !s.is_empty())
        .collect();
    let nv = a.nv_value.map(|value| NvCounter { value, ..counter });
    let signing = approval::signing_key_of(POLICY_KEY).expect("the policy key");
    let Ok(signed) = approval::sign_with(&signing, &policy_ref, bank, &sets, a.serial, nv.as_ref())
    else {
        return;
    };
    let round = serde_json::to_value(&signed).expect("an approval serializes");
    let verified = approval::verify(&round, &key, &policy_ref, nv.as_ref(), "fuzz")
        .unwrap_or_else(|e| panic!("an approval signed by `sign_with` does not verify: {e}"));
    let sorted = |sets: &[Vec<(u32, Vec<u8>)>]| -> Vec<Vec<(u32, Vec<u8>)>> {
        sets.iter()
            .map(|s| {
                let mut s = s.clone();
                s.sort();
                s
            })
            .collect()
    };
    assert_eq!(
        sorted(&verified.sets),
        sorted(&sets),
        "an approval does not round-trip"
    );
    // The input's own fields (events, other names) under a valid signature.
    a.signature_r = signed.signature_r;
    a.signature_s = signed.signature_s;
    a.key_name = signed.key_name;
    a.policy_ref = signed.policy_ref;
    let v = serde_json::to_value(&a).expect("an approval serializes");
    if let Ok(a) = approval::verify(&v, &key, &policy_ref, nv.as_ref(), "fuzz") {
        use_approval(&a);
    }
}

fn use_approval(a: &approval::Approval) {
    let _ = a.pcrs();
    let _ = a.or_branches();
    let mut current = BTreeMap::new();
    for (i, v) in a.sets.iter().flatten() {
        current.insert((a.bank, *i), v.clone());
    }
    let _ = a.matching_set(&current);
    let now = vec![RecordedEvent {
        pcr: 4,
        what: "kernel image".into(),
        digest: "00".repeat(a.bank.digest_len()),
    }];
    for events in a.events.iter().flatten() {
        for pcr in [4, 7, 9] {
            let _ = predict::explain(pcr, events, &now);
        }
    }
}

/// `tpm2_blob` (sealroot, systemd) or jwk_priv ‖ jwk_pub (clevis): TPM2B_PRIVATE ‖
/// TPM2B_PUBLIC [‖ TPM2B_ENCRYPTED_SECRET].
pub fn tpm_blob(data: &[u8]) {
    let Ok(obj) = SealedObject::from_blob(data) else {
        return;
    };
    let _ = obj.needs_import();
    let _ = obj.auth_policy();
    // What Load and Import unmarshal before the TPM sees anything.
    let _ = wire::unmarshal_private(&obj.private);
    let _ = wire::unmarshal_public(&obj.public);
    if let Some(seed) = &obj.import_seed {
        let _ = wire::unmarshal_encrypted_secret(seed);
    }
    let _ = object::name_of(&obj.public);
    assert_eq!(
        SealedObject::from_blob(&obj.to_blob()).ok().as_ref(),
        Some(&obj),
        "a sealed blob does not round-trip"
    );
}

/// A TPM2B_PUBLIC: a token's SRK public area (tpm2_srk_public), an `--srk-public` file for
/// offline sealing (StorageKey, then sealing to it), and TPMT_PUBLIC templates (policy
/// keys) from the same bytes without their size.
pub fn tpm_public(data: &[u8]) {
    if let Ok(area) = PublicArea::parse(data) {
        let _ = area.is_storage_key();
    }
    let _ = object::name_of(data);
    if let Ok(key) = sealroot::tpm::duplicate::StorageKey::parse(data) {
        let _ = key.algorithm();
        let secret = Secret::from_slice(&[0x5a; 32]);
        let sealed = sealroot::tpm::duplicate::seal_offline(&key, &secret, &[0; 32], None)
            .expect("sealing to a parsed storage key");
        assert!(SealedObject::from_blob(&sealed.to_blob()).is_ok());
    }
    let template = data.get(2..).unwrap_or_default();
    let _ = object::name_of_template(template);
    if let Ok(k) = PolicyKey::from_template(template) {
        assert_eq!(PolicyKey::from_template(&k.template()).ok(), Some(k));
    }
}

/// A serialized ESYS_TR (systemd's tpm2_srk): handle ‖ TPM2B_NAME ‖ type ‖ TPM2B_PUBLIC.
pub fn esys_tr(data: &[u8]) {
    if let Ok((handle, _name, public)) = wire::parse_key_resource(data) {
        let again =
            wire::serialized_key_resource(handle, &public).expect("a parsed key serializes");
        assert_eq!(again, data, "a serialized ESYS_TR does not round-trip");
    }
}

/// `--pcr-values`: the list form and a predict output file.
pub fn pcr_values(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for bank in [
        None,
        Some(PcrBank::Sha1),
        Some(PcrBank::Sha256),
        Some(PcrBank::Sha384),
    ] {
        let _ = sealroot::pcr_values::parse_list(text, bank);
        let _ = sealroot::pcr_values::parse_json(text, bank);
    }
    let _ = sealroot::tpm::pcr::parse_pcr_list(text);
}

/// A TCG event log (binary_bios_measurements, `--eventlog`): parsed, replayed in every
/// bank, recorded and explained as `status` and `approve` do, and edited into the next
/// boot as `predict` does.
pub fn eventlog(data: &[u8]) {
    let Ok(log) = EventLog::parse(data) else {
        return;
    };
    for e in &log.events {
        let _ = e.describe();
    }
    let mut records = Vec::new();
    for bank in BANKS {
        let _ = log.replay(bank);
        records.push(predict::record(&log, &[0, 4, 7, 9, 11, 14, 23], bank));
    }
    for pcr in [4, 7, 9] {
        let _ = predict::explain(pcr, &records[0], &records[1]);
    }
    let next = [
        NextBoot {
            kernel: None,
            initrd: Some(b"initrd"),
            cmdline: Some("root=/dev/mapper/root ro quiet"),
            loader: Loader::EfiStub,
        },
        NextBoot {
            kernel: None,
            initrd: None,
            cmdline: Some("console=ttyS0 \u{e9}"),
            loader: Loader::QemuDirect { memory_mib: 1024 },
        },
    ];
    for n in &next {
        let mut edited = log.clone();
        if predict::apply(&mut edited, n).is_ok() {
            for bank in &edited.banks {
                let _ = edited.replay(*bank);
                let _ = predict::explain(9, &records[1], &predict::record(&edited, &[9], *bank));
            }
        }
    }
}

/// A kernel image (`--kernel`): its Authenticode hash in every bank, as QEMU's direct boot
/// patches it (memory sizes, an initrd or not, edge values included), and the prediction
/// of a boot of it from a real log.
pub fn pe_image(data: &[u8]) {
    for bank in BANKS {
        let _ = sealroot::authenticode::pe_hash(data, bank);
    }
    for memory_mib in [0, 1, 160, 1024, 2816, 4096, u64::MAX] {
        for (initrd_len, cmdline) in [(0, ""), (18 << 20, "root=/dev/sda vga=791")] {
            if let Ok(patched) = predict::qemu_patched_kernel(data, initrd_len, memory_mib, cmdline)
            {
                let _ = sealroot::authenticode::pe_hash(&patched, PcrBank::Sha256);
            }
        }
    }
    let Ok(log) = EventLog::parse(EVENTLOG) else {
        panic!("the test event log no longer parses");
    };
    for loader in [Loader::EfiStub, Loader::QemuDirect { memory_mib: 1024 }] {
        let mut edited = log.clone();
        let next = NextBoot {
            kernel: Some(data),
            initrd: Some(b"initrd"),
            cmdline: Some("root=/dev/mapper/root"),
            loader,
        };
        let _ = predict::apply(&mut edited, &next);
    }
}

/// The initrd's trusted configuration (/etc/sealroot/sealroot.conf → `initrd-config`):
/// parsed, rendered, and the rendering parsed back to the same configuration. Also the
/// other text sealroot reads from files and prompts: age recipients, PEM policy keys,
/// recovery keys, the kernel command line as /proc/cmdline shows it.
pub fn initrd_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Trust::parse(text) {
        let rendered = t.render();
        let again = Trust::parse(&rendered)
            .unwrap_or_else(|e| panic!("a rendered configuration does not parse: {e}"));
        assert_eq!(
            again.render(),
            rendered,
            "a configuration does not round-trip"
        );
    }
    let _ = sealroot::escrow::Recipient::parse(text);
    // Key files: `enroll --policy-key`, `approve --key`.
    let _ = PolicyKey::from_pem(text);
    let _ = approval::public_of(text);
    let _ = sealroot::recovery::normalize(data);
    for loader in [Loader::EfiStub, Loader::QemuDirect { memory_mib: 1024 }] {
        let given = loader.given_cmdline(text);
        let _ = loader.load_options(&given, true);
    }
    let _ = sealroot::trust::parse_srk_name(text);
    let _ = sealroot::trust::parse_persistent_handle(text);
    let _ = sealroot::trust::parse_nv_index(text);
    let _ = B64.decode(text);
}
