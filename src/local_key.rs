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

const INFO: &[u8] = b"sealroot local approval key v1";
const NONCE_LEN: usize = 12;
/// The keyring description of a volume's key: this prefix, then the LUKS UUID.
pub const KEYRING_PREFIX: &str = "sealroot:local-approval:";

/// A fresh key: its private scalar (32 bytes) and its public half.
pub fn generate() -> Result<(Secret, PolicyKey), String> {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let scalar = Secret::from_slice(&key.to_bytes());
    Ok((scalar, PolicyKey::from_verifying(*key.verifying_key())))
}

pub fn signing_key(scalar: &Secret) -> Result<SigningKey, String> {
    SigningKey::from_slice(scalar.expose()).map_err(|_| "not a P-256 private key".to_string())
}

fn cipher(disk_secret: &[u8], policy_ref: &[u8]) -> Result<Aes256Gcm, String> {
    let hk = Hkdf::<Sha256>::new(Some(policy_ref), disk_secret);
    let mut key = Secret::zeroed(32);
    hk.expand(INFO, key.expose_mut())
        .map_err(|_| "key derivation failed".to_string())?;
    Aes256Gcm::new_from_slice(key.expose()).map_err(|_| "bad key length".to_string())
}

/// nonce ‖ AES-256-GCM(scalar), keyed by HKDF(disk secret, salt = policyRef); the
/// policyRef is also the associated data, so a wrapped key moved to another token fails.
pub fn wrap(disk_secret: &[u8], policy_ref: &[u8], scalar: &Secret) -> Result<Vec<u8>, String> {
    let nonce = Secret::random(NONCE_LEN).map_err(|e| format!("no randomness: {e}"))?;
    let sealed = cipher(disk_secret, policy_ref)?
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

pub fn unwrap(disk_secret: &[u8], policy_ref: &[u8], wrapped: &[u8]) -> Result<Secret, String> {
    if wrapped.len() < NONCE_LEN + 16 {
        return Err("the wrapped local approval key is truncated".into());
    }
    let (nonce, body) = wrapped.split_at(NONCE_LEN);
    let mut plain = cipher(disk_secret, policy_ref)?
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: policy_ref,
            },
        )
        .map_err(|_| {
            "the local approval key does not decrypt with this token's secret".to_string()
        })?;
    let out = Secret::from_slice(&plain);
    zeroize::Zeroize::zeroize(&mut plain);
    Ok(out)
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
        let wrapped = wrap(b"disk secret", b"sealroot-v1:ref-a", &scalar).expect("wrap");
        let back = unwrap(b"disk secret", b"sealroot-v1:ref-a", &wrapped).expect("unwrap");
        assert_eq!(back.expose(), scalar.expose());
        let key = signing_key(&back).expect("key");
        assert_eq!(PolicyKey::from_verifying(*key.verifying_key()), public);
        assert!(unwrap(b"other secret", b"sealroot-v1:ref-a", &wrapped).is_err());
        assert!(unwrap(b"disk secret", b"sealroot-v1:ref-b", &wrapped).is_err());
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(unwrap(b"disk secret", b"sealroot-v1:ref-a", &flipped).is_err());
        assert!(unwrap(b"disk secret", b"sealroot-v1:ref-a", &wrapped[..20]).is_err());
    }
}
