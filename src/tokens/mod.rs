//! Tokens written by other tools, read into one plan: what to load under which parent,
//! which policy to satisfy, and how the unsealed bytes become the keyslot passphrase.
//! Anything a format allows that is not implemented fails closed with a clear message, so
//! the next token (or the passphrase prompt) is tried.

pub mod clevis;
pub mod systemd;

use crate::secret::Secret;
use crate::tpm::pcr::PcrBank;
use crate::tpm::seal::SealedObject;

#[derive(Debug, thiserror::Error)]
#[error("{kind} token {id}: {reason}")]
pub struct ForeignError {
    pub kind: &'static str,
    pub id: u32,
    pub reason: String,
}

pub enum ParentSpec {
    /// A serialized ESYS_TR of a persistent key.
    Serialized(Vec<u8>),
    /// A TPMT_PUBLIC template for CreatePrimary under the owner hierarchy.
    Primary(Vec<u8>),
}

pub enum PinDerivation {
    /// systemd ≥ 253: salted, stretched (same as sealroot's own).
    Salted { salt: Vec<u8>, iterations: u32 },
    /// systemd 251–252: SHA-256 of the PIN.
    Sha256,
}

pub enum Finish {
    /// systemd: the passphrase is the base64 of the unsealed bytes.
    Base64,
    /// clevis: the unsealed bytes are a JWK that decrypts this JWE (dir + A256GCM).
    Jwe(clevis::Jwe),
    /// clevis sss (threshold 1) around a tpm2 pin.
    Sss(clevis::Sss),
}

pub struct ForeignPlan {
    pub kind: &'static str,
    pub id: u32,
    pub keyslot: u32,
    pub sealed: SealedObject,
    pub parent: ParentSpec,
    pub session_hash: PcrBank,
    pub bank: PcrBank,
    pub pcrs: Vec<u32>,
    pub expected_policy: Option<Vec<u8>>,
    pub pin: Option<PinDerivation>,
    pub finish: Finish,
    /// systemd's signed PCR policy; its signatures are filled in at unlock time.
    pub signed: Option<crate::tpm::esys::SignedPolicy>,
    /// SHA-256 of the signing key's PKCS#1 DER, to pick entries from signature files.
    pub signature_pkfp: Option<Vec<u8>>,
}

impl ForeignPlan {
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
    pub fn passphrase(&self, unsealed: &Secret) -> Result<Secret, ForeignError> {
        let result = match &self.finish {
            Finish::Base64 => Ok(crate::cmd::enroll::passphrase_of(unsealed)),
            Finish::Jwe(jwe) => jwe.decrypt(unsealed),
            Finish::Sss(sss) => sss.decrypt(unsealed),
        };
        result.map_err(|reason| ForeignError {
            kind: self.kind,
            id: self.id,
            reason,
        })
    }
}

/// The one keyslot a token claims (LUKS2 stores it as a decimal string).
pub fn single_keyslot(json: &serde_json::Value) -> Option<u32> {
    match json.get("keyslots")?.as_array()?.as_slice() {
        [k] => k.as_str()?.parse().ok(),
        _ => None,
    }
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
}
