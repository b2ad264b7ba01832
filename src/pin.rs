//! PIN → TPM authValue. The same derivation as systemd ≥ 253 (tokens-systemd.md §5):
//! `x = PBKDF2-HMAC-SHA256(PIN, salt, iterations, 32)`, `authValue = SHA-256(base64(x))`
//! with trailing zero bytes trimmed (the TPM trims them when it stores the authValue, the
//! session side does not). The salt stops precomputation across machines; the TPM's
//! dictionary-attack counter limits online guessing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize;

use crate::secret::Secret;

pub const DEFAULT_ITERATIONS: u32 = 10_000;
pub const SALT_LEN: usize = 32;

pub fn auth_value(pin: &Secret, salt: &[u8], iterations: u32) -> Secret {
    let mut stretched = Secret::zeroed(32);
    pbkdf2::pbkdf2_hmac::<Sha256>(pin.expose(), salt, iterations, stretched.expose_mut());
    let mut encoded = Secret::zeroed(44);
    // 32 bytes always encode to exactly 44 characters, so the slice is large enough.
    let n = B64
        .encode_slice(stretched.expose(), encoded.expose_mut())
        .unwrap_or(0);
    encoded.truncate(n);
    let mut digest = Sha256::digest(encoded.expose());
    let mut auth = Secret::from_slice(&digest);
    digest.as_mut_slice().zeroize();
    auth.trim_end_matches(|b| b == 0);
    auth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_vector() {
        // tokens-systemd.md §5: salt 00..1f, PIN "1234".
        let salt: Vec<u8> = (0u8..32).collect();
        let auth = auth_value(&Secret::from_slice(b"1234"), &salt, 10_000);
        assert_eq!(
            hex::encode(auth.expose()),
            "707057c835474da74bcd75b848540fe2bbbf46d9d30a96b148814aecadeddedd"
        );
    }

    #[test]
    fn different_pins_differ() {
        let salt = [7u8; 32];
        let a = auth_value(&Secret::from_slice(b"1234"), &salt, 1000);
        let b = auth_value(&Secret::from_slice(b"1235"), &salt, 1000);
        assert!(a != b);
    }
}
