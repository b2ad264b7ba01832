//! The `sealroot` LUKS2 token: everything needed to unseal a volume's key on this TPM,
//! versioned JSON in the LUKS2 header. Parsing validates every field and cross-checks the
//! policy, so a corrupt token is reported as such instead of as a PCR mismatch.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Fence, Finish, ParentSpec, PinDerivation, PlanError, UnsealPlan};
use crate::approval::PolicyKey;
use crate::tpm::nv::NvCounter;
use crate::tpm::object::PublicArea;
use crate::tpm::pcr::{PCR_COUNT, PcrBank};
use crate::tpm::policy::{PolicySpec, pcr_values_digest};
use crate::tpm::seal::SealedObject;

pub const TOKEN_TYPE: &str = "sealroot";
/// Marks the keyslot of a recovery key, so `status` can name it and `remove --all` keeps it.
pub const RECOVERY_TOKEN_TYPE: &str = "sealroot-recovery";
pub const FORMAT_VERSION: u32 = 1;
/// Tokens sealed offline (an import seed in `tpm2_blob`): a sealroot that only knows
/// version 1 refuses them as too new instead of failing at Load.
pub const OFFLINE_FORMAT_VERSION: u32 = 2;

/// Fewer iterations than this would make a stolen token's PIN cheap to guess offline
/// against a TPM without DA protection; more than this would stall the boot.
/// Fewer iterations than enroll writes would only make a PIN cheaper to guess offline;
/// a header asking for fewer is refused.
const PIN_ITERATIONS_MIN: u32 = crate::pin::DEFAULT_ITERATIONS;
const PIN_ITERATIONS_MAX: u32 = 10_000_000;

#[derive(Debug, thiserror::Error)]
#[error("token {id} is corrupt: {reason}")]
pub struct TokenError {
    pub id: u32,
    pub reason: String,
}

/// The JSON as stored. Field names follow systemd's `tpm2_*` style where the meaning is the
/// same, so tooling that knows one can read the other.
#[derive(Serialize, Deserialize)]
struct TokenJson {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    sealroot_version: u32,
    /// base64(TPM2B_PRIVATE ‖ TPM2B_PUBLIC) of the sealed object.
    tpm2_blob: String,
    /// "0x81000001".
    tpm2_srk_handle: String,
    /// base64(TPM2B_PUBLIC) of the parent, the salt key of every session.
    tpm2_srk_public: String,
    tpm2_pcr_bank: String,
    tpm2_pcrs: Vec<u32>,
    /// Expected value of every PCR in `tpm2_pcrs`, hex, keyed by decimal index.
    tpm2_pcr_values: BTreeMap<String, String>,
    /// hex of the policy digest the sealed object carries.
    tpm2_policy_hash: String,
    fence_pcr: Option<u32>,
    tpm2_pin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_pin_salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_pin_iterations: Option<u32>,
    /// base64(TPMT_PUBLIC) of the policy key (ECDSA P-256): approvals signed by it unlock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_policy_key: Option<String>,
    /// hex policyRef of PolicyAuthorize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_policy_ref: Option<String>,
    /// Revocable approvals: the NV counter ("0x01535200"), its Name (hex) and the value
    /// it held at the last `revoke` (what new approvals are signed for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_nv_counter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_nv_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_nv_value: Option<u64>,
    /// base64 of the local approval key's private half, encrypted under the sealed secret
    /// (`enroll --local-approval`, `local_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm2_local_approval_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinParams {
    pub salt: Vec<u8>,
    pub iterations: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealrootToken {
    pub keyslot: u32,
    pub sealed: SealedObject,
    pub srk_handle: u32,
    pub srk_public: Vec<u8>,
    pub bank: PcrBank,
    /// Ascending (index, expected value); the fence PCR, if any, expects all zeros.
    pub pcrs: Vec<(u32, Vec<u8>)>,
    pub policy_digest: [u8; 32],
    pub fence_pcr: Option<u32>,
    pub pin: Option<PinParams>,
    /// A signed policy: the key and policyRef; `pcrs` then holds only the fence.
    pub policy_key: Option<(PolicyKey, Vec<u8>)>,
    /// The revocation counter of a signed policy, if any.
    pub counter: Option<NvCounter>,
    /// The policy key's private half, encrypted under the sealed secret.
    pub local_key: Option<Vec<u8>>,
}

impl SealrootToken {
    pub fn pcr_indexes(&self) -> Vec<u32> {
        self.pcrs.iter().map(|(i, _)| *i).collect()
    }

    pub fn expected_pcr_digest(&self) -> [u8; 32] {
        pcr_values_digest(&self.pcrs)
    }

    /// The digest the policy of this token must have, computed in software.
    pub fn computed_policy(&self) -> [u8; 32] {
        if let Some((key, policy_ref)) = &self.policy_key {
            return crate::approval::static_policy(
                key,
                policy_ref,
                self.bank,
                &self.pcrs,
                self.pin.is_some(),
            );
        }
        PolicySpec {
            bank: self.bank,
            pcrs: &self.pcrs,
            pin: self.pin.is_some(),
        }
        .digest()
    }

    pub fn to_json(&self) -> Value {
        let json = TokenJson {
            kind: TOKEN_TYPE.into(),
            keyslots: vec![self.keyslot.to_string()],
            sealroot_version: if self.sealed.needs_import() || self.policy_key.is_some() {
                OFFLINE_FORMAT_VERSION
            } else {
                FORMAT_VERSION
            },
            tpm2_blob: B64.encode(self.sealed.to_blob()),
            tpm2_srk_handle: format!("0x{:08x}", self.srk_handle),
            tpm2_srk_public: B64.encode(&self.srk_public),
            tpm2_pcr_bank: self.bank.name().into(),
            tpm2_pcrs: self.pcr_indexes(),
            tpm2_pcr_values: self
                .pcrs
                .iter()
                .map(|(i, v)| (i.to_string(), hex::encode(v)))
                .collect(),
            tpm2_policy_hash: hex::encode(self.policy_digest),
            fence_pcr: self.fence_pcr,
            tpm2_pin: self.pin.is_some(),
            tpm2_pin_salt: self.pin.as_ref().map(|p| B64.encode(&p.salt)),
            tpm2_pin_iterations: self.pin.as_ref().map(|p| p.iterations),
            tpm2_policy_key: self
                .policy_key
                .as_ref()
                .map(|(k, _)| B64.encode(k.template())),
            tpm2_policy_ref: self.policy_key.as_ref().map(|(_, r)| hex::encode(r)),
            tpm2_nv_counter: self.counter.as_ref().map(|c| format!("0x{:08x}", c.index)),
            tpm2_nv_name: self.counter.as_ref().map(|c| hex::encode(&c.name)),
            tpm2_nv_value: self.counter.as_ref().map(|c| c.value),
            tpm2_local_approval_key: self.local_key.as_ref().map(|k| B64.encode(k)),
        };
        // Serializing a struct of strings, numbers and maps with string keys cannot fail.
        serde_json::to_value(json).unwrap_or(Value::Null)
    }

    pub fn from_json(id: u32, value: &Value) -> Result<SealrootToken, TokenError> {
        let bad = |reason: String| TokenError { id, reason };
        let json: TokenJson =
            serde_json::from_value(value.clone()).map_err(|e| bad(format!("{e}")))?;
        if json.kind != TOKEN_TYPE {
            return Err(bad(format!("type is '{}', not '{TOKEN_TYPE}'", json.kind)));
        }
        if ![FORMAT_VERSION, OFFLINE_FORMAT_VERSION].contains(&json.sealroot_version) {
            return Err(bad(format!(
                "format version {} is not supported by this sealroot (knows {FORMAT_VERSION} and {OFFLINE_FORMAT_VERSION}); update sealroot",
                json.sealroot_version
            )));
        }
        let keyslot = match json.keyslots.as_slice() {
            [one] => one
                .parse::<u32>()
                .map_err(|_| bad(format!("keyslot '{one}' is not a number")))?,
            other => return Err(bad(format!("expected one keyslot, found {}", other.len()))),
        };
        let blob = B64
            .decode(&json.tpm2_blob)
            .map_err(|e| bad(format!("tpm2_blob is not base64: {e}")))?;
        let sealed = SealedObject::from_blob(&blob).map_err(|e| bad(e.to_string()))?;
        let signed = json.tpm2_policy_key.is_some() || json.tpm2_policy_ref.is_some();
        if (sealed.needs_import() || signed) != (json.sealroot_version == OFFLINE_FORMAT_VERSION) {
            return Err(bad(format!(
                "tpm2_blob {} an import seed and the token {} a policy key, but the format version is {}",
                if sealed.needs_import() {
                    "has"
                } else {
                    "lacks"
                },
                if signed { "has" } else { "lacks" },
                json.sealroot_version
            )));
        }
        let policy_key = match (&json.tpm2_policy_key, &json.tpm2_policy_ref) {
            (None, None) => None,
            (Some(key), Some(policy_ref)) => {
                let template = B64
                    .decode(key)
                    .map_err(|e| bad(format!("tpm2_policy_key is not base64: {e}")))?;
                let key = PolicyKey::from_template(&template)
                    .map_err(|e| bad(format!("tpm2_policy_key: {e}")))?;
                let policy_ref = hex::decode(policy_ref)
                    .ok()
                    .filter(|r| r.starts_with(crate::approval::POLICY_REF_PREFIX) && r.len() <= 32)
                    .ok_or_else(|| bad("tpm2_policy_ref is not a sealroot policyRef".into()))?;
                Some((key, policy_ref))
            }
            _ => return Err(bad("tpm2_policy_key and tpm2_policy_ref disagree".into())),
        };
        let counter = match (
            &json.tpm2_nv_counter,
            &json.tpm2_nv_name,
            json.tpm2_nv_value,
        ) {
            (None, None, None) => None,
            (Some(index), Some(name), Some(value)) if policy_key.is_some() => Some(NvCounter {
                index: crate::trust::parse_nv_index(index)
                    .ok_or_else(|| bad("tpm2_nv_counter is not an NV index".into()))?,
                name: hex::decode(name)
                    .ok()
                    .filter(|n| n.len() == 34)
                    .ok_or_else(|| bad("tpm2_nv_name is not a SHA-256 Name".into()))?,
                value,
            }),
            _ => {
                return Err(bad(
                    "tpm2_nv_counter, tpm2_nv_name and tpm2_nv_value disagree (or no policy key)"
                        .into(),
                ));
            }
        };
        let srk_handle =
            crate::trust::parse_persistent_handle(&json.tpm2_srk_handle).ok_or_else(|| {
                bad(format!(
                    "tpm2_srk_handle '{}' is not a persistent handle",
                    json.tpm2_srk_handle
                ))
            })?;
        let srk_public = B64
            .decode(&json.tpm2_srk_public)
            .map_err(|e| bad(format!("tpm2_srk_public is not base64: {e}")))?;
        PublicArea::parse(&srk_public).map_err(|e| bad(format!("tpm2_srk_public: {e}")))?;
        let bank: PcrBank = json.tpm2_pcr_bank.parse().map_err(bad)?;

        let mut indexes = json.tpm2_pcrs.clone();
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.len() != json.tpm2_pcrs.len() || indexes.iter().any(|&i| i >= PCR_COUNT) {
            return Err(bad(format!(
                "tpm2_pcrs {:?} is not a set of PCRs 0-23",
                json.tpm2_pcrs
            )));
        }
        let mut pcrs = Vec::with_capacity(indexes.len());
        for i in indexes {
            let value = json
                .tpm2_pcr_values
                .get(&i.to_string())
                .ok_or_else(|| bad(format!("no expected value for PCR {i}")))?;
            let value =
                hex::decode(value).map_err(|_| bad(format!("value of PCR {i} is not hex")))?;
            if value.len() != bank.digest_len() {
                return Err(bad(format!(
                    "value of PCR {i} has {} bytes, {bank} needs {}",
                    value.len(),
                    bank.digest_len()
                )));
            }
            pcrs.push((i, value));
        }
        if let Some(f) = json.fence_pcr {
            match pcrs.iter().find(|(i, _)| *i == f) {
                Some((_, v)) if v.iter().all(|&b| b == 0) => {}
                Some(_) => return Err(bad(format!("fence PCR {f} must expect all zeros"))),
                None => return Err(bad(format!("fence PCR {f} is not in tpm2_pcrs"))),
            }
        }
        let policy_digest: [u8; 32] = hex::decode(&json.tpm2_policy_hash)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("tpm2_policy_hash is not 32 bytes of hex".into()))?;
        let pin = match (json.tpm2_pin, json.tpm2_pin_salt, json.tpm2_pin_iterations) {
            (false, None, None) => None,
            (true, Some(salt), Some(iterations)) => {
                let salt = B64
                    .decode(salt)
                    .map_err(|e| bad(format!("tpm2_pin_salt is not base64: {e}")))?;
                if salt.len() < 16 {
                    return Err(bad("tpm2_pin_salt is shorter than 16 bytes".into()));
                }
                if !(PIN_ITERATIONS_MIN..=PIN_ITERATIONS_MAX).contains(&iterations) {
                    return Err(bad(format!(
                        "tpm2_pin_iterations {iterations} out of range"
                    )));
                }
                Some(PinParams { salt, iterations })
            }
            _ => {
                return Err(bad(
                    "tpm2_pin, tpm2_pin_salt and tpm2_pin_iterations disagree".into(),
                ));
            }
        };
        let token = SealrootToken {
            keyslot,
            sealed,
            srk_handle,
            srk_public,
            bank,
            pcrs,
            policy_digest,
            fence_pcr: json.fence_pcr,
            pin,
            local_key: match &json.tpm2_local_approval_key {
                Some(_) if policy_key.is_none() => {
                    return Err(bad("tpm2_local_approval_key without a policy key".into()));
                }
                Some(k) => Some(
                    B64.decode(k)
                        .map_err(|e| bad(format!("tpm2_local_approval_key is not base64: {e}")))?,
                ),
                None => None,
            },
            policy_key,
            counter,
        };
        if token.computed_policy() != token.policy_digest {
            return Err(bad(
                "tpm2_policy_hash does not match the PCRs and PIN flag recorded".into(),
            ));
        }
        let object_policy = token.sealed.auth_policy().map_err(|e| bad(e.to_string()))?;
        if object_policy != token.policy_digest {
            return Err(bad(
                "the sealed object's policy differs from tpm2_policy_hash".into(),
            ));
        }
        Ok(token)
    }
}

/// A sealroot token as a plan: the parent recorded at enrollment, the PCR values the TPM
/// checks at PolicyPCR, the fence, base64 of the secret as the passphrase.
pub fn plan(id: u32, json: &Value) -> Result<UnsealPlan, PlanError> {
    let token = SealrootToken::from_json(id, json)
        .map_err(|e| PlanError(format!("{e}; use `sealroot recover`, then re-enroll")))?;
    Ok(UnsealPlan {
        kind: TOKEN_TYPE,
        id,
        keyslot: token.keyslot,
        pcrs: token.pcr_indexes(),
        sealed: token.sealed,
        parent: ParentSpec::Recorded {
            handle: token.srk_handle,
            public: token.srk_public,
        },
        session_hash: PcrBank::Sha256,
        bank: token.bank,
        pcr_values: Some(token.pcrs),
        expected_policy: None,
        pin: token.pin.map(|p| PinDerivation::Salted {
            salt: p.salt,
            iterations: p.iterations,
        }),
        finish: Finish::Base64,
        signed: None,
        fence: Fence::Declared(token.fence_pcr),
        approvals: token.policy_key.map(|(key, policy_ref)| super::Approvals {
            key_public: key.template(),
            key,
            policy_ref,
            counter: token.counter,
            local_key: token.local_key,
            found: Vec::new(),
            refused: Vec::new(),
            chosen: None,
        }),
    })
}
