//! The fence: after the initrd has unlocked (or failed to unlock) its volumes, the fence PCR
//! is extended so its value is no longer the all-zero value every sealroot policy expects.
//! Nothing later in this boot — a substituted root file system, a user with root — can
//! unseal the key again; the next TPM reset (reboot) clears it.
//!
//! What is extended, in every allocated bank b:
//!   event  = "sealroot-fence-v1\0" ‖ m_1 ‖ … ‖ m_n          (one m per volume, in order)
//!   m_i    = HMAC-SHA256(key = volume key, "sealroot:" ‖ NAME ‖ ":" ‖ LUKS UUID)   unlocked
//!          = SHA-256("sealroot-failed:" ‖ NAME ‖ ":" ‖ LUKS UUID)                  not unlocked
//!   PCR[b] = H_b(PCR[b] ‖ H_b(event))
//! so the PCR also attests which volumes were opened with which keys, without revealing them.

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

pub const DEFAULT_FENCE_PCR: u32 = 15;
const EVENT_TAG: &[u8] = b"sealroot-fence-v1\0";

pub fn unlocked_measurement(volume_key: &[u8], name: &str, uuid: &str) -> [u8; 32] {
    hmac_sha256(volume_key, format!("sealroot:{name}:{uuid}").as_bytes())
}

/// HMAC-SHA256 (RFC 2104) whose key blocks live in zeroizing buffers: the volume key is
/// its key, and the hmac crate leaves its padded key blocks behind.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut padded = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        padded[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        padded[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLOCK]);
    for i in 0..BLOCK {
        ipad[i] ^= padded[i];
        opad[i] ^= padded[i];
    }
    let inner = Sha256::new()
        .chain_update(&ipad[..])
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad[..])
        .chain_update(inner)
        .finalize()
        .into()
}

pub fn failed_measurement(name: &str, uuid: &str) -> [u8; 32] {
    Sha256::digest(format!("sealroot-failed:{name}:{uuid}").as_bytes()).into()
}

pub fn event(measurements: &[[u8; 32]]) -> Vec<u8> {
    let mut e = EVENT_TAG.to_vec();
    for m in measurements {
        e.extend_from_slice(m);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 2 (short key) and 6 (key longer than a block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn measurements_depend_on_every_input() {
        let a = unlocked_measurement(&[1u8; 64], "root", "u1");
        assert_ne!(a, unlocked_measurement(&[2u8; 64], "root", "u1"));
        assert_ne!(a, unlocked_measurement(&[1u8; 64], "home", "u1"));
        assert_ne!(a, unlocked_measurement(&[1u8; 64], "root", "u2"));
        assert_ne!(a, failed_measurement("root", "u1"));
        assert_eq!(event(&[]), EVENT_TAG);
        assert_eq!(event(&[a]).len(), EVENT_TAG.len() + 32);
    }
}
