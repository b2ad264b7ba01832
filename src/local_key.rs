//! A volume's local approval key: a policy key made at `enroll --local-approval` whose
//! private half is kept in the token encrypted under the sealed disk secret. Only a boot
//! that unsealed the secret can decrypt it; the initrd then leaves it in root's kernel
//! keyring so that the booted system's update hooks can approve the next boot
//! (`sealroot update-approvals`). The trade-off: root of a booted system can approve any
//! boot chain it likes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use p256::ecdsa::SigningKey;
use sha2::Sha256;

use crate::approval::PolicyKey;
use crate::keyring;
use crate::secret::Secret;

/// What a wrapped copy is keyed by: the sealed secret (unlocks by the TPM), or the
/// volume key (a passphrase unlock, to recover after a boot that was not approved — no
/// weaker: whoever holds the volume key reads the disk anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappedBy {
    SealedSecret,
    VolumeKey,
}

impl WrappedBy {
    fn info(self) -> &'static [u8] {
        match self {
            WrappedBy::SealedSecret => b"sealroot local approval key v1",
            WrappedBy::VolumeKey => b"sealroot local approval key v1, volume key",
        }
    }
}
const NONCE_LEN: usize = 12;
/// The keyring description of a volume's key: this prefix, then the LUKS UUID.
pub const KEYRING_PREFIX: &str = "sealroot:local-approval:";

/// A fresh key: its private scalar (32 bytes) and its public half.
pub fn generate() -> Result<(Secret, PolicyKey), String> {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let mut bytes = key.to_bytes();
    let scalar = Secret::from_slice(&bytes);
    zeroize::Zeroize::zeroize(bytes.as_mut_slice());
    Ok((scalar, PolicyKey::from_verifying(*key.verifying_key())))
}

pub fn signing_key(scalar: &Secret) -> Result<SigningKey, String> {
    SigningKey::from_slice(scalar.expose()).map_err(|_| "not a P-256 private key".to_string())
}

fn cipher(ikm: &[u8], by: WrappedBy, policy_ref: &[u8]) -> Result<Aes256Gcm, String> {
    let hk = Hkdf::<Sha256>::new(Some(policy_ref), ikm);
    let mut key = Secret::zeroed(32);
    hk.expand(by.info(), key.expose_mut())
        .map_err(|_| "key derivation failed".to_string())?;
    Aes256Gcm::new_from_slice(key.expose()).map_err(|_| "bad key length".to_string())
}

/// nonce ‖ AES-256-GCM(scalar), keyed by HKDF(ikm, salt = policyRef); the policyRef is
/// also the associated data, so a wrapped key moved to another token fails.
pub fn wrap(
    ikm: &[u8],
    by: WrappedBy,
    policy_ref: &[u8],
    scalar: &Secret,
) -> Result<Vec<u8>, String> {
    let nonce = Secret::random(NONCE_LEN).map_err(|e| format!("no randomness: {e}"))?;
    let sealed = cipher(ikm, by, policy_ref)?
        .encrypt(
            Nonce::from_slice(nonce.expose()),
            Payload {
                msg: scalar.expose(),
                aad: policy_ref,
            },
        )
        .map_err(|_| "encryption failed".to_string())?;
    Ok([nonce.expose(), &sealed].concat())
}

pub fn unwrap(
    ikm: &[u8],
    by: WrappedBy,
    policy_ref: &[u8],
    wrapped: &[u8],
) -> Result<Secret, String> {
    if wrapped.len() < NONCE_LEN + 16 {
        return Err("the wrapped local approval key is truncated".into());
    }
    let (nonce, body) = wrapped.split_at(NONCE_LEN);
    let mut plain = cipher(ikm, by, policy_ref)?
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: policy_ref,
            },
        )
        .map_err(|_| {
            "the local approval key does not decrypt with this key (another token's, or the header was changed)".to_string()
        })?;
    let out = Secret::from_slice(&plain);
    zeroize::Zeroize::zeroize(&mut plain);
    Ok(out)
}

/// A LUKS UUID as libcryptsetup prints it (lower-case hex, 8-4-4-4-12): what a keyring
/// description must end in before it names a device path.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

pub fn keyring_name(luks_uuid: &str) -> String {
    format!("{KEYRING_PREFIX}{luks_uuid}")
}

/// Leaves the key for the booted system.
pub fn publish(luks_uuid: &str, scalar: &Secret) -> std::io::Result<()> {
    keyring::store(&keyring_name(luks_uuid), scalar.expose())
}

/// The key this boot published for a volume, if any.
pub fn find(luks_uuid: &str) -> std::io::Result<Option<Secret>> {
    keyring::load(&keyring_name(luks_uuid), 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_for_one_secret_and_one_token_only() {
        let (scalar, public) = generate().expect("key");
        let by = WrappedBy::SealedSecret;
        let wrapped = wrap(b"disk secret", by, b"sealroot-v1:ref-a", &scalar).expect("wrap");
        let back = unwrap(b"disk secret", by, b"sealroot-v1:ref-a", &wrapped).expect("unwrap");
        assert_eq!(back.expose(), scalar.expose());
        let key = signing_key(&back).expect("key");
        assert_eq!(PolicyKey::from_verifying(*key.verifying_key()), public);
        assert!(unwrap(b"other secret", by, b"sealroot-v1:ref-a", &wrapped).is_err());
        assert!(unwrap(b"disk secret", by, b"sealroot-v1:ref-b", &wrapped).is_err());
        let other = WrappedBy::VolumeKey;
        assert!(unwrap(b"disk secret", other, b"sealroot-v1:ref-a", &wrapped).is_err());
        assert!(is_uuid("0b2d9c0e-1f7a-4c3e-9a55-3c1d2e4f5a6b"));
        assert!(!is_uuid("../../../../etc/passwd-aaaaaaaaaaaaaaaaaaa"));
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(unwrap(b"disk secret", by, b"sealroot-v1:ref-a", &flipped).is_err());
        assert!(unwrap(b"disk secret", by, b"sealroot-v1:ref-a", &wrapped[..20]).is_err());
    }
}
