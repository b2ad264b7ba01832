//! Trusted configuration: what `unlock` may believe without the LUKS2 header, because it
//! comes from inside the measured initrd (the integration scripts pass it on the command
//! line, from the file the initrd hook wrote at build time). Header values are checked
//! against it; see ../README.md, "Trust boundary".

use crate::tpm::fence::DEFAULT_FENCE_PCR;
use crate::tpm::srk::ExpectedParent;

pub struct Trust {
    /// Extended after every unlock attempt; sealroot tokens must be sealed to it at its
    /// reset value. None only for tooling outside the boot path (`--fence-pcr none`).
    pub fence_pcr: Option<u32>,
    /// The storage key every recorded parent must be.
    pub parent: ExpectedParent,
}

impl Default for Trust {
    fn default() -> Trust {
        Trust {
            fence_pcr: Some(DEFAULT_FENCE_PCR),
            parent: ExpectedParent::default(),
        }
    }
}

/// A PCR can be a fence only if it is all zeros after a TPM reset and software at
/// locality 0 cannot reset it: 16 (debug) and 23 (application) are resettable, 17–22
/// (dynamic root of trust) reset to all ones. Nor can a bound PCR be the fence.
pub fn check_fence(pcr: u32, bound: &[u32]) -> Result<(), String> {
    if pcr > 15 {
        return Err(format!(
            "PCR {pcr} cannot be a fence: PCRs 16 and 23 can be reset by any program and 17-22 do not start at zeros; use one of 0-15 (default 15)"
        ));
    }
    if bound.contains(&pcr) {
        return Err(format!(
            "PCR {pcr} cannot be both bound to its current value and the fence"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resettable_and_bound_pcrs_are_no_fence() {
        assert!(check_fence(15, &[7]).is_ok());
        for pcr in [16, 17, 22, 23] {
            assert!(check_fence(pcr, &[7]).is_err(), "{pcr}");
        }
        assert!(check_fence(7, &[7]).is_err());
    }
}
