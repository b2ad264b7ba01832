//! LUKS2 tokens, each kind read into the same `UnsealPlan`: what to load under which
//! parent, which policy to satisfy, how a PIN becomes the authValue, how the unsealed bytes
//! become the keyslot passphrase, which keyslot. `unlock` runs plans; `status` checks them
//! against the current PCRs without unsealing. Token-format knowledge lives only in the
//! file of its kind. Anything a format allows that is not implemented fails closed with a
//! clear message, so the next token (or the passphrase prompt) is tried.

pub mod approvals;
pub mod clevis;
pub mod provision;
pub mod sealroot;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use crate::secret::Secret;
use crate::tpm::pcr::PcrBank;
use crate::tpm::policy::PolicyBuilder;
use crate::tpm::seal::SealedObject;
use crate::tpm::srk::ExpectedParent;
use crate::tpm::unseal::{Parent, SignedPolicy, Unseal};
use crate::tpm::{Tpm, TpmError};
use crate::trust::Trust;

pub use approvals::Approvals;

/// Why a token cannot be planned: the whole message, naming the token and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

pub enum ParentSpec {
    /// A persistent key and its TPM2B_PUBLIC as recorded at enrollment (sealroot).
    Recorded { handle: u32, public: Vec<u8> },
    /// A serialized ESYS_TR of a persistent key (systemd's `tpm2_srk`).
    Serialized(Vec<u8>),
    /// A TPMT_PUBLIC template for CreatePrimary under the owner hierarchy.
    Primary(Vec<u8>),
}

pub enum PinDerivation {
    /// sealroot, systemd ≥ 253: salted and stretched (`pin::auth_value`).
    Salted { salt: Vec<u8>, iterations: u32 },
    /// systemd 251–252: SHA-256 of the PIN.
    Sha256,
}

pub enum Finish {
    /// sealroot, systemd: the passphrase is the base64 of the unsealed bytes.
    Base64,
    /// clevis: the unsealed bytes are a JWK that decrypts this JWE (dir + A256GCM).
    Jwe(clevis::Jwe),
    /// clevis sss (threshold 1) around a tpm2 pin.
    Sss(clevis::Sss),
}

pub struct UnsealPlan {
    pub kind: &'static str,
    pub id: u32,
    pub keyslot: u32,
    pub sealed: SealedObject,
    pub parent: ParentSpec,
    /// Hash of the policy session (the sealed object's name algorithm for clevis' sha1).
    pub session_hash: PcrBank,
    pub bank: PcrBank,
    /// PCRs of the literal PolicyPCR (none: no such assertion).
    pub pcrs: Vec<u32>,
    /// Their expected values, when the token records them (sealroot): the TPM checks them
    /// at PolicyPCR, and a mismatch names exactly the PCRs that differ.
    pub pcr_values: Option<Vec<(u32, Vec<u8>)>>,
    /// The policy digest the object carries, compared in the session before Unseal so a
    /// mismatch never reaches the dictionary-attack counter (tokens without PCR values).
    pub expected_policy: Option<Vec<u8>>,
    pub pin: Option<PinDerivation>,
    pub finish: Finish,
    /// A signed PCR policy (PolicyAuthorize); its approvals are added by
    /// `load_signatures`.
    pub signed: Option<SignedPolicy>,
    pub fence: Fence,
    /// sealroot tokens with a policy key: the approvals that may unlock them.
    pub approvals: Option<Approvals>,
}

/// What a token says about the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The format has none (systemd-tpm2, clevis): the token is usable after the fence
    /// unless its own PCRs changed.
    Unknown,
    /// sealroot tokens: sealed with this PCR at its reset value (None: no fence).
    Declared(Option<u32>),
}

/// How the current PCR values compare with a plan's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyCheck {
    /// The TPM would accept the policy now (a PIN aside).
    Satisfied,
    /// These PCRs differ from the values sealed to. `certain` is false when the token
    /// records only a digest and no single small change explains it: then `pcrs` is every
    /// bound PCR, one or more of which differ.
    Differ { pcrs: Vec<u32>, certain: bool },
    /// No valid approval for the current values of these signed PCRs.
    Unapproved { pcrs: Vec<u32> },
}

impl UnsealPlan {
    pub fn auth_value(&self, pin: &Secret) -> Option<Secret> {
        use sha2::{Digest, Sha256};
        Some(match self.pin.as_ref()? {
            PinDerivation::Salted { salt, iterations } => {
                crate::pin::auth_value(pin, salt, *iterations)
            }
            PinDerivation::Sha256 => {
                let mut s = Secret::from_slice(&Sha256::digest(pin.expose()));
                s.trim_end_matches(|b| b == 0);
                s
            }
        })
    }

    /// The keyslot passphrase from the unsealed bytes.
    pub fn passphrase(&self, unsealed: &Secret) -> Result<Secret, PlanError> {
        let result = match &self.finish {
            Finish::Base64 => Ok(passphrase_of(unsealed)),
            Finish::Jwe(jwe) => jwe.decrypt(unsealed),
            Finish::Sss(sss) => sss.decrypt(unsealed),
        };
        result.map_err(|reason| PlanError(format!("{}: {reason}", self.label())))
    }

    /// The fence PCR a sealroot token was sealed with.
    pub fn fence_pcr(&self) -> Option<u32> {
        match self.fence {
            Fence::Declared(f) => f,
            Fence::Unknown => None,
        }
    }

    /// A token usable after the fence: its format has none, and its policy does not bind
    /// the fence PCR. Anything in the booted system can unseal it (if its PCRs hold).
    pub fn outlives_fence(&self, fence_pcr: u32) -> bool {
        self.fence == Fence::Unknown && !self.pcrs.contains(&fence_pcr)
    }

    /// Whether the parent is a persistent key that `unlock` checks against the expected
    /// one (not a primary re-created from a template): only such tokens are offered a PIN
    /// that served another volume.
    pub fn parent_is_checked(&self) -> bool {
        !matches!(self.parent, ParentSpec::Primary(_))
    }

    /// The persistent parent the token records (handle, Name), as the header says it: for
    /// `status`, and for pinning the SRK's Name in the initrd.
    pub fn recorded_parent(&self) -> Option<(u32, Vec<u8>)> {
        match &self.parent {
            ParentSpec::Recorded { handle, public } => {
                Some((*handle, crate::tpm::object::name_of(public).ok()?))
            }
            ParentSpec::Serialized(bytes) => {
                let (handle, name, _) = crate::tpm::wire::parse_key_resource(bytes).ok()?;
                Some((handle, name))
            }
            ParentSpec::Primary(_) => None,
        }
    }

    /// "systemd-tpm2 token 2", for messages.
    pub fn label(&self) -> String {
        format!("{} token {}", self.kind, self.id)
    }

    /// Refuses a token whose header contradicts trusted configuration, before the TPM is
    /// asked anything: a sealroot token must carry the configured fence (a header without
    /// one would leave the fence PCR at zero for the rest of the boot).
    pub fn admit(&self, trust: &Trust) -> Result<(), PlanError> {
        // A parent re-created from a template is whatever key the TPM's answer carries: with
        // a pinned SRK Name (the defence against an interposer) a PIN must not be salted to
        // such a key, where the interposer could attack the PIN offline.
        if trust.parent.name.is_some()
            && self.pin.is_some()
            && matches!(self.parent, ParentSpec::Primary(_))
        {
            return Err(PlanError(format!(
                "{}: refused: its PIN would be sent in a session salted to a key created from a template, not to the pinned storage key; re-enroll it under the SRK (systemd >= 253, or sealroot enroll), or use `sealroot recover`",
                self.label()
            )));
        }
        let (Fence::Declared(declared), Some(configured)) = (self.fence, trust.fence_pcr) else {
            return Ok(());
        };
        if declared == Some(configured) {
            return Ok(());
        }
        Err(PlanError(format!(
            "{}: refused: it is sealed {}, but this system's fence is PCR {configured} (the header may have been altered); use `sealroot recover`",
            self.label(),
            match declared {
                Some(f) => format!("with fence PCR {f}"),
                None => "without a fence".to_string(),
            }
        )))
    }

    /// What the TPM layer needs to unseal, with the authValue of a PIN if there is one.
    pub fn request<'r>(
        &'r self,
        auth: Option<&'r Secret>,
        expected_parent: &'r ExpectedParent,
    ) -> Unseal<'r> {
        Unseal {
            expected_parent,
            parent: match &self.parent {
                ParentSpec::Recorded { handle, public } => Parent::Recorded {
                    handle: *handle,
                    public,
                },
                ParentSpec::Serialized(b) => Parent::Serialized(b),
                ParentSpec::Primary(t) => Parent::Primary(t),
            },
            object: &self.sealed,
            session_hash: self.session_hash,
            bank: self.bank,
            pcrs: &self.pcrs,
            expected_pcr_digest: self
                .pcr_values
                .as_ref()
                .map(|v| crate::tpm::policy::pcr_values_digest(v).to_vec()),
            expected_policy: self.expected_policy.as_deref(),
            signed: self.signed.as_ref(),
            approved: self.approvals.as_ref().and_then(|a| {
                let (i, j, or_branches) = a.chosen.as_ref()?;
                let approval = a.found.get(*i)?;
                Some(crate::tpm::unseal::Approved {
                    key_public: &a.key_public,
                    policy_ref: &a.policy_ref,
                    approved: &approval.approved,
                    bank: approval.bank,
                    branch: approval.sets.get(*j)?,
                    or_branches,
                    signature: (&approval.signature.0, &approval.signature.1),
                    nv: approval.nv.as_ref().map(|c| (c.index, c.value)),
                })
            }),
            auth,
        }
    }

    /// Every PCR whose current value the check needs, by bank.
    pub fn pcrs_to_read(&self) -> Vec<(PcrBank, Vec<u32>)> {
        let mut out = vec![(self.bank, self.pcrs.clone())];
        if let Some(s) = &self.signed {
            out.push((s.bank, s.pcrs.clone()));
        }
        for ap in self.approvals.iter().flat_map(|a| &a.found) {
            out.push((ap.bank, ap.pcrs()));
        }
        out
    }

    /// The current values of every PCR the check needs (PCR_Read; on failure paths and in
    /// `status` only).
    pub fn current_pcrs(
        &self,
        tpm: &mut Tpm,
    ) -> Result<BTreeMap<(PcrBank, u32), Vec<u8>>, TpmError> {
        let mut out = BTreeMap::new();
        for (bank, pcrs) in self.pcrs_to_read() {
            for (i, v) in tpm.pcr_read(bank, &pcrs)? {
                out.insert((bank, i), v);
            }
        }
        Ok(out)
    }

    /// Approvals of a signed policy from `--signature`, else where the token's tool keeps
    /// them. Invalid approvals are dropped here, so they cost no TPM command.
    pub fn load_signatures(&mut self, explicit: Option<&PathBuf>) {
        if self.kind == systemd::TOKEN_TYPE {
            systemd::load_signatures(self, explicit);
        }
    }

    /// Compares the plan's policy with `current` (bank → index → value) in software: the
    /// same answer the TPM would give, with the PCRs that differ named.
    pub fn check(&self, current: &BTreeMap<(PcrBank, u32), Vec<u8>>) -> PolicyCheck {
        let now = |bank: PcrBank, pcrs: &[u32]| -> Vec<(u32, Vec<u8>)> {
            pcrs.iter()
                .map(|&i| (i, current.get(&(bank, i)).cloned().unwrap_or_default()))
                .collect()
        };
        if let Some(a) = &self.approvals
            && !a.found.iter().any(|ap| ap.matching_set(current).is_some())
        {
            let mut pcrs: Vec<u32> = a.found.iter().flat_map(|ap| ap.pcrs()).collect();
            pcrs.sort_unstable();
            pcrs.dedup();
            return PolicyCheck::Unapproved { pcrs };
        }
        if let Some(signed) = &self.signed {
            let approved = PolicyBuilder::new(PcrBank::Sha256)
                .pcr(signed.bank, &now(signed.bank, &signed.pcrs))
                .digest();
            if !signed.signatures.iter().any(|(pol, _)| *pol == approved) {
                return PolicyCheck::Unapproved {
                    pcrs: signed.pcrs.clone(),
                };
            }
        }
        let literal = now(self.bank, &self.pcrs);
        if let Some(expected) = &self.pcr_values {
            let pcrs: Vec<u32> = expected
                .iter()
                .filter(|(i, v)| literal.iter().find(|(j, _)| j == i).map(|(_, n)| n) != Some(v))
                .map(|(i, _)| *i)
                .collect();
            return if pcrs.is_empty() {
                PolicyCheck::Satisfied
            } else {
                PolicyCheck::Differ {
                    pcrs,
                    certain: true,
                }
            };
        }
        let Some(expected) = &self.expected_policy else {
            return PolicyCheck::Satisfied;
        };
        let policy_with = |values: &[(u32, Vec<u8>)]| self.policy_digest(values);
        if policy_with(&literal) == *expected {
            return PolicyCheck::Satisfied;
        }
        match explain_by_resets(&literal, self.bank, |v| policy_with(v) == *expected) {
            Some(pcrs) => PolicyCheck::Differ {
                pcrs,
                certain: true,
            },
            None => PolicyCheck::Differ {
                pcrs: self.pcrs.clone(),
                certain: false,
            },
        }
    }

    /// The object's policy if the literal PCRs held `values`: PolicyAuthorize (signed),
    /// PolicyPCR, PolicyAuthValue, in that order (systemd's; clevis and sealroot have no
    /// PolicyAuthorize). Several key encodings: any may be the one sealed to.
    fn policy_digest(&self, values: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let finish = |b: PolicyBuilder| {
            let b = b.pcr(self.bank, values);
            if self.pin.is_some() {
                b.auth_value()
            } else {
                b
            }
            .digest()
        };
        let Some(signed) = &self.signed else {
            return finish(PolicyBuilder::new(self.session_hash));
        };
        let candidates: Vec<Vec<u8>> = signed
            .key_publics
            .iter()
            .filter_map(|k| crate::tpm::object::name_of_template(k).ok())
            .map(|name| finish(PolicyBuilder::new(self.session_hash).authorize(&name, &[])))
            .collect();
        match &self.expected_policy {
            Some(e) if candidates.contains(e) => e.clone(),
            _ => candidates.into_iter().next().unwrap_or_default(),
        }
    }

    /// A one-line explanation of a failed check, saying what to do.
    pub fn explain(&self, check: &PolicyCheck) -> String {
        match check {
            PolicyCheck::Satisfied => String::new(),
            PolicyCheck::Unapproved { pcrs } => format!(
                "no valid {} approves the current {} PCR {} value{}; {}",
                if self.approvals.is_some() {
                    "approval (sealroot-approval token or --approval file)"
                } else {
                    "signature (tpm2-pcr-signature.json)"
                },
                self.signed.as_ref().map_or(self.bank, |s| s.bank),
                join(pcrs),
                if pcrs.len() == 1 { "" } else { "s" },
                if self.approvals.is_some() {
                    "approve this boot (`sealroot approve`) if it is yours, or use `sealroot recover`"
                } else {
                    "use `sealroot recover`"
                }
            ),
            PolicyCheck::Differ { pcrs, certain } => {
                let fence = match self.fence {
                    Fence::Declared(Some(f)) if pcrs.contains(&f) => Some(f),
                    _ => None,
                };
                let others: Vec<u32> = pcrs.iter().copied().filter(|&i| Some(i) != fence).collect();
                match (others.len(), fence, certain) {
                    (0, Some(f), _) => format!(
                        "fence PCR {f} is already extended: this boot has unlocked once; reboot to unlock with the TPM again, or use `sealroot recover`"
                    ),
                    // With one bound PCR (the fence apart) the culprit is certain.
                    (n, _, false) if n > 1 => format!(
                        "one or more of the {} PCRs {} differ from enrollment (the token records only a digest of their values); use `sealroot recover`, then re-enroll",
                        self.bank,
                        join(&others)
                    ),
                    (n, _, _) => format!(
                        "{} {} {} {} since enrollment; use `sealroot recover`, then re-enroll",
                        self.bank,
                        if n == 1 { "PCR" } else { "PCRs" },
                        join(&others),
                        if n == 1 { "differs" } else { "differ" }
                    ),
                }
            }
        }
    }
}

fn join(pcrs: &[u32]) -> String {
    pcrs.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Tokens that record only a digest of the PCR values cannot say which PCR changed. The
/// common case can be told: a PCR extended since enrollment from its reset value (0 for
/// PCRs 0–16 and 23, all ones for 17–22). Tries every set of up to three PCRs at their
/// reset values and returns the smallest that explains the digest.
fn explain_by_resets(
    current: &[(u32, Vec<u8>)],
    bank: PcrBank,
    matches: impl Fn(&[(u32, Vec<u8>)]) -> bool,
) -> Option<Vec<u32>> {
    let reset = |i: u32| {
        let fill = if (17..=22).contains(&i) { 0xFF } else { 0 };
        vec![fill; bank.digest_len()]
    };
    let n = current.len();
    for size in 1..=n.min(3) {
        let mut pick: Vec<usize> = (0..size).collect();
        loop {
            let mut values = current.to_vec();
            for &k in &pick {
                values[k].1 = reset(values[k].0);
            }
            // A PCR already at its reset value cannot be the one that changed.
            let changed = pick.iter().all(|&k| current[k].1 != values[k].1);
            if changed && matches(&values) {
                return Some(pick.iter().map(|&k| current[k].0).collect());
            }
            // Next combination of `size` out of `n`, in lexicographic order.
            let Some(pos) = (0..size).rev().find(|&j| pick[j] < n - size + j) else {
                break;
            };
            pick[pos] += 1;
            for j in pos + 1..size {
                pick[j] = pick[j - 1] + 1;
            }
        }
    }
    None
}

/// The plan of a token of any kind sealroot reads; None for other token types.
pub fn plan(id: u32, json: &Value) -> Option<Result<UnsealPlan, PlanError>> {
    Some(match token_type(json) {
        sealroot::TOKEN_TYPE => sealroot::plan(id, json),
        systemd::TOKEN_TYPE => systemd::plan(id, json),
        clevis::TOKEN_TYPE => clevis::plan(id, json),
        _ => return None,
    })
}

/// The order `unlock` tries tokens in: sealroot's own first, then the others by id.
pub fn unlock_order(kind: &str) -> u8 {
    match kind {
        sealroot::TOKEN_TYPE => 0,
        _ => 1,
    }
}

/// The LUKS passphrase of a sealed secret: its standard base64 (as systemd does), so the
/// keyslot passphrase is printable and the same derivation serves both formats.
pub fn passphrase_of(secret: &Secret) -> Secret {
    let mut out = Secret::zeroed(secret.len().div_ceil(3) * 4);
    let n = B64
        .encode_slice(secret.expose(), out.expose_mut())
        .unwrap_or(0);
    out.truncate(n);
    out
}

/// The one keyslot a token claims (LUKS2 stores it as a decimal string).
pub fn single_keyslot(json: &Value) -> Option<u32> {
    match json.get("keyslots")?.as_array()?.as_slice() {
        [k] => k.as_str()?.parse().ok(),
        _ => None,
    }
}

/// The keyslots a token of any type claims.
pub fn token_keyslots(json: &Value) -> Vec<u32> {
    json.get("keyslots")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn token_type(json: &Value) -> &str {
    json.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// The legacy primary templates (TPMT_PUBLIC) of systemd ≤ 253 and clevis: tpm2-tools'
/// default `createprimary -G ecc|rsa`, bit-exact, with the given name algorithm.
pub fn primary_template(rsa: bool, name_alg: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(if rsa { &[0x00, 0x01] } else { &[0x00, 0x23] });
    t.extend_from_slice(&name_alg.to_be_bytes());
    t.extend_from_slice(&[0x00, 0x03, 0x00, 0x72]); // fixedTPM|fixedParent|sDO|userWithAuth|restricted|decrypt
    t.extend_from_slice(&[0x00, 0x00]); // empty authPolicy
    t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
    t.extend_from_slice(&[0x00, 0x10]); // scheme NULL
    if rsa {
        t.extend_from_slice(&[0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]); // 2048, exponent 0, unique empty
    } else {
        t.extend_from_slice(&[0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00]); // P-256, kdf NULL, x/y empty
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_the_references() {
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(primary_template(false, 0x000b)),
            "0023000b00030072000000060080004300100003001000000000"
        );
        assert_eq!(
            hex(primary_template(true, 0x000b)),
            "0001000b00030072000000060080004300100800000000000000"
        );
    }

    // tokens-systemd.md §11.3: systemd-cryptenroll 252, signed PCR 11 + literal PCR 7.
    const SIGNED_TOKEN: &str = r#"{"type":"systemd-tpm2","keyslots":["4"],"tpm2-blob":"AJ4AIOJBjaO79m0OXsFx3yc0110hAjndy+r7kSOLqEhiiFHnABC/5EicOQj8+RwOBmiSs4W7ayYgt7bwjc3B4htzu6Az+7kIdER+mJflIPECmUXSox/h/+73rQnsrmX5JdqTrlNMgvbN9/b31zPNHw45+Mybldb9NSjEpEnuzWuyoKlcgxwyNIebNPdLNH/6zgIowiVbXZQ0+m3NoKXWvQBOAAgACwAAABIAIMQr0l3F200ZyCpAEbgRmXEXTBbp6Poi5f9poXJKs7zjABAAIDbubpsDVkRIndV13Ub6b4cu/alPsbu1adohiJRaqhbO","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"c42bd25dc5db4d19c82a4011b8119971174c16e9e8fa22e5ff69a1724ab3bce3","tpm2-pin":false,"tpm2_pubkey_pcrs":[11],"tpm2_pubkey":"LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUlJQklqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FROEFNSUlCQ2dLQ0FRRUE4cHJZSVZOU0pOTktzL3NtUm1NbApHcElTdzVseEpEbGpLbm1PNDVqZDB0S2lIMUNiM2s1KzBaclBQV0JtOWk4bERTZHJXL0owSncxSHQ3Y2g4S3dECkF6TlRLRXNRYnZyWEZvZWpTcEJZMzJRNHZlWUJtUE1TTXR4OHVUeWU0bG44UzZPOE9yeTZkcFNYVk5zSFVJMEIKYUllckF0d3B0bGIzR2RiM0VhWXF4REtEZVpQVFRBc3VxU2lzYm96NWpnSEVOdU1lcThNeGh5bnI5bTJCUXRQYwpwN092OVlRb1RmR2xVSjgvc0JiVEJZOWFVWmtYQXhHZmZlZVp3ZUY0c3ZoU1hOSDNxdFFlcC96dFJRK1RWTWxVCnNMNVVoMkVaWnk3QzFzcmtRV29IbkFEU0M5SGJ2OHVQOXB2VkpibVhLRkF4Y3JGT0NmTVc1MVkySjZGNmFJMHoKaVFJREFRQUIKLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg=="}"#;

    #[test]
    fn signed_policy_digest_in_software_matches_the_token() {
        let json: Value = serde_json::from_str(SIGNED_TOKEN).unwrap();
        let plan = plan(4, &json).unwrap().unwrap();
        assert!(plan.signed.is_some());
        let zeros = [(7, vec![0u8; 32])];
        assert_eq!(Some(plan.policy_digest(&zeros)), plan.expected_policy);
        // Without an approval for the current PCR 11, the check says so, not "PCR 7".
        let mut now = BTreeMap::new();
        now.insert((PcrBank::Sha256, 7), vec![0u8; 32]);
        now.insert((PcrBank::Sha256, 11), vec![0u8; 32]);
        assert_eq!(plan.check(&now), PolicyCheck::Unapproved { pcrs: vec![11] });
    }

    #[test]
    fn resets_explain_a_single_extended_pcr() {
        let bank = PcrBank::Sha256;
        let enrolled = vec![(0, vec![1u8; 32]), (7, vec![2u8; 32]), (14, vec![0u8; 32])];
        let target = PolicyBuilder::new(bank).pcr(bank, &enrolled).digest();
        let mut now = enrolled.clone();
        now[2].1 = vec![9u8; 32];
        let found = explain_by_resets(&now, bank, |v| {
            PolicyBuilder::new(bank).pcr(bank, v).digest() == target
        });
        assert_eq!(found, Some(vec![14]));
        // A change no reset explains is not guessed.
        now[0].1 = vec![5u8; 32];
        let none = explain_by_resets(&now, bank, |v| {
            PolicyBuilder::new(bank).pcr(bank, v).digest() == target
        });
        assert_eq!(none, None);
    }
}
