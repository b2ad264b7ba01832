//! Signed PCR policies for sealroot's own tokens: the sealed object trusts a policy key
//! (ECDSA P-256) through PolicyAuthorize, and an *approval* — the key's signature over a
//! PCR policy — lets it unseal under those PCR values. An update then needs a new approval,
//! not a new seal. The key's private half stays with the admin or builder (`approve`);
//! approvals are stored in the LUKS2 header or in files, both untrusted: the TPM checks the
//! signature (VerifySignature, PolicyAuthorize) and sealroot checks it first in software so
//! that a bad one costs no TPM command.
//!
//! - static policy of the object: PolicyAuthorize(Name(key), policyRef), then PolicyPCR of
//!   the fence PCR at zeros (so no approval can lift the fence), then PolicyAuthValue with
//!   a PIN;
//! - policyRef: "sealroot-v1:" ‖ 16 random bytes chosen at enrollment, so an approval for
//!   one token cannot serve another token sealed to the same key;
//! - approved policy: PolicyPCR of one PCR set, or PolicyOR of up to 8 such branches (the
//!   running kernel and the next one); signed as SHA-256(approved ‖ policyRef).

use std::collections::BTreeMap;

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::tpm::nv::NvCounter;
use crate::tpm::object::name_of_template;
use crate::tpm::pcr::{PCR_COUNT, PcrBank};
use crate::tpm::policy::PolicyBuilder;

pub const TOKEN_TYPE: &str = "sealroot-approval";
pub const POLICY_REF_PREFIX: &[u8] = b"sealroot-v1:";
/// PolicyOR takes at most 8 branches.
pub const MAX_SETS: usize = 8;
const TPM_CC_POLICY_OR: u32 = 0x0000_0171;

/// A policy key's public half: what the token records and the TPM loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyKey {
    key: VerifyingKey,
}

impl PolicyKey {
    /// A PEM public key (SPKI, `openssl ec -pubout`).
    pub fn from_pem(text: &str) -> Result<PolicyKey, String> {
        let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| {
            "not an ECDSA P-256 public key in PEM (`openssl ec -in key.pem -pubout`)".to_string()
        })?;
        Ok(PolicyKey { key })
    }

    /// The TPMT_PUBLIC the token records, parsed back.
    pub fn from_template(tpmt: &[u8]) -> Result<PolicyKey, String> {
        let head = template_head();
        let rest = tpmt
            .strip_prefix(head.as_slice())
            .ok_or("not a sealroot policy key (ECDSA P-256, SHA-256)")?;
        let (x, rest) = take_tpm2b(rest)?;
        let (y, rest) = take_tpm2b(rest)?;
        if !rest.is_empty() || x.len() != 32 || y.len() != 32 {
            return Err("malformed policy key point".into());
        }
        let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
        let key = VerifyingKey::from_encoded_point(&point)
            .map_err(|_| "the policy key is not a point on P-256".to_string())?;
        Ok(PolicyKey { key })
    }

    pub fn from_verifying(key: VerifyingKey) -> PolicyKey {
        PolicyKey { key }
    }

    /// TPMT_PUBLIC for TPM2_LoadExternal: ECC P-256, SHA-256 name, sign, ECDSA-SHA256.
    pub fn template(&self) -> Vec<u8> {
        let point = self.key.to_encoded_point(false);
        let mut t = template_head();
        for coordinate in [point.x(), point.y()] {
            let c = coordinate.map(|c| c.to_vec()).unwrap_or_default();
            t.extend_from_slice(&(c.len() as u16).to_be_bytes());
            t.extend_from_slice(&c);
        }
        t
    }

    /// The key's TPM Name, which the object's policy names.
    pub fn name(&self) -> Vec<u8> {
        name_of_template(&self.template()).unwrap_or_default()
    }

    fn verifies(&self, digest: &[u8], signature: &Signature) -> bool {
        self.key.verify_prehash(digest, signature).is_ok()
    }
}

/// type ECC, nameAlg SHA-256, attributes sign|userWithAuth, empty authPolicy, symmetric
/// NULL, scheme ECDSA with SHA-256, curve NIST P-256, KDF NULL; the point follows.
fn template_head() -> Vec<u8> {
    let mut t = Vec::with_capacity(88);
    t.extend_from_slice(&0x0023u16.to_be_bytes());
    t.extend_from_slice(&0x000bu16.to_be_bytes());
    t.extend_from_slice(&0x0004_0040u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes());
    t.extend_from_slice(&0x0010u16.to_be_bytes());
    t.extend_from_slice(&0x0018u16.to_be_bytes());
    t.extend_from_slice(&0x000bu16.to_be_bytes());
    t.extend_from_slice(&0x0003u16.to_be_bytes());
    t.extend_from_slice(&0x0010u16.to_be_bytes());
    t
}

fn take_tpm2b(buf: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if buf.len() < 2 {
        return Err("truncated".into());
    }
    let n = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if buf.len() < 2 + n {
        return Err("truncated".into());
    }
    Ok((&buf[2..2 + n], &buf[2 + n..]))
}

/// The policy a token with a policy key carries: PolicyAuthorize, then the fence PCR at
/// zeros, then PolicyAuthValue with a PIN.
pub fn static_policy(
    key: &PolicyKey,
    policy_ref: &[u8],
    bank: PcrBank,
    fence: &[(u32, Vec<u8>)],
    pin: bool,
) -> [u8; 32] {
    let b = PolicyBuilder::new(PcrBank::Sha256)
        .authorize(&key.name(), policy_ref)
        .pcr(bank, fence);
    let d = if pin { b.auth_value() } else { b }.digest();
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// One branch from a fresh session: PolicyNV(counter == value) when the token is
/// revocable, then PolicyPCR of the set.
pub fn branch_digest(bank: PcrBank, set: &[(u32, Vec<u8>)], nv: Option<&NvCounter>) -> Vec<u8> {
    let b = PolicyBuilder::new(PcrBank::Sha256);
    let b = match nv {
        Some(c) => b.nv_equals(&c.name, c.value),
        None => b,
    };
    b.pcr(bank, set).digest()
}

/// The approved policy for these PCR sets: the one branch, or PolicyOR of all.
pub fn approved_policy(
    bank: PcrBank,
    sets: &[Vec<(u32, Vec<u8>)>],
    nv: Option<&NvCounter>,
) -> Vec<u8> {
    let branches: Vec<Vec<u8>> = sets.iter().map(|s| branch_digest(bank, s, nv)).collect();
    match branches.as_slice() {
        [one] => one.clone(),
        _ => policy_or(&branches),
    }
}

/// PolicyOR from a fresh session: the digest is reset, then extended with all branches.
pub fn policy_or(branches: &[Vec<u8>]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_OR.to_be_bytes());
    for b in branches {
        h.update(b);
    }
    h.finalize().to_vec()
}

/// What the key signs: aHash = SHA-256(approved policy ‖ policyRef).
pub fn signed_digest(approved: &[u8], policy_ref: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(approved);
    h.update(policy_ref);
    h.finalize().to_vec()
}

/// An approval as stored (header token or file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    pub sealroot_version: u32,
    /// hex: which token's policyRef it approves for.
    pub policy_ref: String,
    /// hex Name of the signing key.
    pub key_name: String,
    pub pcr_bank: String,
    /// Each set: decimal PCR index → hex value.
    pub pcr_sets: Vec<BTreeMap<String, String>>,
    /// Newest first when several apply: seconds since the epoch at signing.
    pub serial: u64,
    pub signature_r: String,
    pub signature_s: String,
    /// Revocable tokens: the counter (index, Name) and the value it must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nv_index: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nv_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nv_value: Option<u64>,
    /// Not signed, for explanations only: per set, the events of the approved boot
    /// (`predict`'s output carries them), so `status` can say which one changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Vec<RecordedEvent>>>,
}

/// The words `RecordedEvent::what` may hold (an approval carrying others has its events
/// ignored: header strings do not reach the terminal).
pub const EVENT_WORDS: &[&str] = &[
    "kernel image",
    "boot application",
    "initrd",
    "command line",
    "separator",
    "firmware event",
];

/// One measurement of an approved boot, as `status` compares it with this boot's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedEvent {
    pub pcr: u32,
    /// What it measured ("kernel image", "initrd", "command line", ...).
    pub what: String,
    /// hex digest in the approval's bank.
    pub digest: String,
}

/// An approval that verified in software against a token's key and policyRef.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub bank: PcrBank,
    pub sets: Vec<Vec<(u32, Vec<u8>)>>,
    pub approved: Vec<u8>,
    pub serial: u64,
    /// (r, s), 32 bytes each.
    pub signature: (Vec<u8>, Vec<u8>),
    /// The counter value it holds for, on revocable tokens.
    pub nv: Option<NvCounter>,
    /// Where it came from, for messages ("header token 3", a file name).
    pub source: String,
    /// The approved boots' events, per set, when recorded (unsigned: explanations only,
    /// in sealroot's own words).
    pub events: Option<Vec<Vec<RecordedEvent>>>,
}

impl Approval {
    /// The set that the current PCR values satisfy, if any.
    pub fn matching_set(&self, current: &BTreeMap<(PcrBank, u32), Vec<u8>>) -> Option<usize> {
        self.sets.iter().position(|set| {
            set.iter()
                .all(|(i, v)| current.get(&(self.bank, *i)) == Some(v))
        })
    }

    /// Every PCR the approval looks at.
    pub fn pcrs(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.sets.iter().flatten().map(|(i, _)| *i).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The PolicyOR branch digests, when there are several sets.
    pub fn or_branches(&self) -> Vec<Vec<u8>> {
        if self.sets.len() < 2 {
            return Vec::new();
        }
        self.sets
            .iter()
            .map(|s| branch_digest(self.bank, s, self.nv.as_ref()))
            .collect()
    }
}

/// Signs an approval of `sets` for the token with `policy_ref`. The fence PCR is not the
/// approval's business: the static policy asserts it after PolicyAuthorize.
pub fn sign(
    key_pem: &str,
    policy_ref: &[u8],
    bank: PcrBank,
    sets: &[Vec<(u32, Vec<u8>)>],
    serial: u64,
    nv: Option<&NvCounter>,
) -> Result<ApprovalJson, String> {
    sign_with(
        &signing_key_of(key_pem)?,
        policy_ref,
        bank,
        sets,
        serial,
        nv,
    )
}

pub fn signing_key_of(key_pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(key_pem.trim())
        .or_else(|_| p256::SecretKey::from_sec1_pem(key_pem.trim()).map(|k| SigningKey::from(&k)))
        .map_err(|_| "not an ECDSA P-256 private key in PEM (PKCS#8 or SEC1)".to_string())
}

pub fn sign_with(
    key: &SigningKey,
    policy_ref: &[u8],
    bank: PcrBank,
    sets: &[Vec<(u32, Vec<u8>)>],
    serial: u64,
    nv: Option<&NvCounter>,
) -> Result<ApprovalJson, String> {
    if sets.is_empty() || sets.len() > MAX_SETS {
        return Err(format!(
            "give 1 to {MAX_SETS} sets of PCR values (PolicyOR takes at most {MAX_SETS})"
        ));
    }
    let public = PolicyKey {
        key: *key.verifying_key(),
    };
    let approved = approved_policy(bank, sets, nv);
    let digest = signed_digest(&approved, policy_ref);
    let signature: Signature = key
        .sign_prehash(&digest)
        .map_err(|e| format!("signing failed: {e}"))?;
    let (r, s) = signature.split_bytes();
    Ok(ApprovalJson {
        kind: TOKEN_TYPE.into(),
        keyslots: Vec::new(),
        sealroot_version: 1,
        policy_ref: hex::encode(policy_ref),
        key_name: hex::encode(public.name()),
        pcr_bank: bank.name().into(),
        pcr_sets: sets
            .iter()
            .map(|set| {
                set.iter()
                    .map(|(i, v)| (i.to_string(), hex::encode(v)))
                    .collect()
            })
            .collect(),
        serial,
        signature_r: hex::encode(r),
        signature_s: hex::encode(s),
        nv_index: nv.map(|c| format!("0x{:08x}", c.index)),
        nv_name: nv.map(|c| hex::encode(&c.name)),
        nv_value: nv.map(|c| c.value),
        events: None,
    })
}

/// The public half of a private key file, to find the tokens it can approve for.
pub fn public_of(key_pem: &str) -> Result<PolicyKey, String> {
    let key = signing_key_of(key_pem)?;
    Ok(PolicyKey {
        key: *key.verifying_key(),
    })
}

/// Checks a stored approval against a token's key and policyRef: everything recomputed,
/// the signature verified. Err says why it does not apply (for status and debug logs).
pub fn verify(
    json: &Value,
    key: &PolicyKey,
    policy_ref: &[u8],
    counter: Option<&NvCounter>,
    source: &str,
) -> Result<Approval, String> {
    let a: ApprovalJson =
        serde_json::from_value(json.clone()).map_err(|e| format!("malformed: {e}"))?;
    if a.kind != TOKEN_TYPE || a.sealroot_version != 1 {
        return Err("not a version 1 sealroot approval".into());
    }
    if hex::decode(&a.policy_ref).ok().as_deref() != Some(policy_ref) {
        return Err("for another token".into());
    }
    if hex::decode(&a.key_name).ok() != Some(key.name()) {
        return Err("signed by another key".into());
    }
    let bank: PcrBank = a.pcr_bank.parse()?;
    if a.pcr_sets.is_empty() || a.pcr_sets.len() > MAX_SETS {
        return Err(format!("{} PCR sets (1 to {MAX_SETS})", a.pcr_sets.len()));
    }
    let mut sets = Vec::new();
    for set in &a.pcr_sets {
        let mut values = Vec::new();
        for (i, v) in set {
            let i: u32 = i
                .parse()
                .ok()
                .filter(|i| *i < PCR_COUNT)
                .ok_or("a PCR index out of range")?;
            let v = hex::decode(v)
                .ok()
                .filter(|v| v.len() == bank.digest_len())
                .ok_or("a PCR value of the wrong size")?;
            values.push((i, v));
        }
        if values.is_empty() {
            return Err("an empty PCR set".into());
        }
        sets.push(values);
    }
    let r = hex::decode(&a.signature_r).map_err(|_| "bad signature")?;
    let s = hex::decode(&a.signature_s).map_err(|_| "bad signature")?;
    let signature = match (
        <[u8; 32]>::try_from(r.as_slice()),
        <[u8; 32]>::try_from(s.as_slice()),
    ) {
        (Ok(r), Ok(s)) => Signature::from_scalars(r, s).map_err(|_| "bad signature")?,
        _ => return Err("bad signature".into()),
    };
    // A revocable token's approvals name its counter; the value is the approval's own.
    let nv = match (&a.nv_index, &a.nv_name, a.nv_value) {
        (None, None, None) => None,
        (Some(index), Some(name), Some(value)) => {
            let index = crate::trust::parse_nv_index(index).ok_or("a bad NV index")?;
            let name = hex::decode(name).map_err(|_| "a bad NV Name")?;
            if counter.is_some_and(|c| c.index != index || c.name != name) {
                return Err("for another revocation counter".into());
            }
            Some(NvCounter { index, name, value })
        }
        _ => return Err("incomplete revocation counter".into()),
    };
    let approved = approved_policy(bank, &sets, nv.as_ref());
    if !key.verifies(&signed_digest(&approved, policy_ref), &signature) {
        return Err("the signature does not verify".into());
    }
    let events = a.events.filter(|e| {
        e.len() == sets.len()
            && e.iter().flatten().all(|ev| {
                EVENT_WORDS.contains(&ev.what.as_str())
                    && ev.pcr < PCR_COUNT
                    && hex::decode(&ev.digest).is_ok_and(|d| d.len() == bank.digest_len())
            })
    });
    Ok(Approval {
        bank,
        sets,
        approved,
        serial: a.serial,
        signature: (r, s),
        nv,
        source: source.to_string(),
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key made for this test (openssl genpkey -algorithm EC).
    const PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJl6fW/4DJcE5zL+O
R5VMVsXLaJci4kQ3+7A3YaGOF+ShRANCAASdaL05uF+nGV373qe7n4b1A8oFTfX+
4bcA1WSkyGVySPMCk/uxqgG+GkF0deeLLMigSouwPOIOLFrwUWAzzaD2
-----END PRIVATE KEY-----";

    #[test]
    fn an_approval_verifies_only_for_its_key_token_and_values() {
        let key = public_of(PRIV).unwrap();
        let policy_ref = [POLICY_REF_PREFIX, &[1u8; 16]].concat();
        let sets = vec![vec![(7u32, vec![1u8; 32])], vec![(7u32, vec![2u8; 32])]];
        let json =
            serde_json::to_value(sign(PRIV, &policy_ref, PcrBank::Sha256, &sets, 5, None).unwrap())
                .unwrap();
        let a = verify(&json, &key, &policy_ref, None, "test").unwrap();
        assert_eq!(a.or_branches().len(), 2);
        let mut current = BTreeMap::new();
        current.insert((PcrBank::Sha256, 7), vec![2u8; 32]);
        assert_eq!(a.matching_set(&current), Some(1));

        let other_ref = [POLICY_REF_PREFIX, &[2u8; 16]].concat();
        assert!(
            verify(&json, &key, &other_ref, None, "test")
                .unwrap_err()
                .contains("another token")
        );
        let mut tampered = json.clone();
        tampered["pcr_sets"][0]["7"] = hex::encode([3u8; 32]).into();
        assert!(
            verify(&tampered, &key, &policy_ref, None, "test")
                .unwrap_err()
                .contains("does not verify")
        );
        let template = key.template();
        assert_eq!(PolicyKey::from_template(&template).unwrap(), key);
    }
}
