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

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

pub const DEFAULT_FENCE_PCR: u32 = 15;
const EVENT_TAG: &[u8] = b"sealroot-fence-v1\0";

pub fn unlocked_measurement(volume_key: &[u8], name: &str, uuid: &str) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for Hmac<Sha256>.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(volume_key) {
        Ok(m) => m,
        Err(_) => return failed_measurement(name, uuid),
    };
    mac.update(format!("sealroot:{name}:{uuid}").as_bytes());
    mac.finalize().into_bytes().into()
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
