//! TPM-layer errors, classified from TSS return codes into what the user can act on.

use crate::error::exit;

const GENERIC_MISMATCH: &str = "the boot state differs from enrollment (`sealroot status` names the PCRs); use `sealroot recover`, then re-enroll";

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(
        "TPM unavailable ({tcti}): {reason}; check that the TPM is present (or pass --tcti), or use `sealroot recover`"
    )]
    Unavailable { tcti: String, reason: String },
    /// `detail` says which PCRs differ and what to do; empty when unknown.
    #[error("PCR policy mismatch: {}", if detail.is_empty() { GENERIC_MISMATCH } else { detail.as_str() })]
    PolicyMismatch { detail: String },
    #[error("wrong PIN; try again, or use `sealroot recover`")]
    WrongPin,
    #[error(
        "this token needs a PIN: pass --pin-file or run on a terminal, or use `sealroot recover`"
    )]
    PinNeeded,
    #[error(
        "the TPM is in dictionary-attack lockout; wait for it to recover or clear the lockout, or use `sealroot recover`"
    )]
    Lockout,
    #[error(
        "this TPM cannot unseal the key ({detail}): it was sealed by another TPM or the TPM was cleared; use `sealroot recover`, then re-enroll"
    )]
    WrongTpm { detail: String },
    #[error(
        "the TPM rejected the sealed key ({detail}): it was sealed by another TPM, the TPM was cleared, or the token is corrupt; use `sealroot recover`, then re-enroll"
    )]
    Rejected { detail: String },
    #[error(
        "refused: {detail}: the key was sealed by another TPM, this TPM was cleared, or the header was altered (nothing was sent to the TPM under the recorded key); use `sealroot recover`"
    )]
    UntrustedParent { detail: String },
    #[error(
        "the TPM has no room for another object or session ({op}: 0x{rc:x}): software without a resource manager left some loaded; reboot (or flush them with tpm2_flushcontext), or use `sealroot recover`"
    )]
    Full { op: &'static str, rc: u32 },
    #[error("PCRs kept changing during the policy check; try again")]
    PcrChanged,
    #[error("TPM command {op} failed: {rc}")]
    Command { op: &'static str, rc: String },
    #[error("{0}")]
    Invalid(String),
}

impl TpmError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TpmError::Unavailable { .. } | TpmError::Full { .. } => exit::TPM_UNAVAILABLE,
            TpmError::PolicyMismatch { .. } | TpmError::PcrChanged => exit::POLICY_MISMATCH,
            TpmError::WrongPin | TpmError::PinNeeded | TpmError::Lockout => exit::WRONG_PIN,
            TpmError::WrongTpm { .. }
            | TpmError::Rejected { .. }
            | TpmError::UntrustedParent { .. } => exit::NO_TOKEN,
            TpmError::Command { .. } | TpmError::Invalid(_) => exit::FAILURE,
        }
    }
}

/// What a TSS return code means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcKind {
    /// TPM_RC_PCR_CHANGED: retry the whole policy.
    PcrChanged,
    /// TPM_RC_POLICY_FAIL or TPM_RC_VALUE from PolicyPCR with an expected digest.
    PolicyFail,
    Value,
    /// TPM_RC_AUTH_FAIL / TPM_RC_BAD_AUTH.
    AuthFail,
    /// TPM_RC_LOCKOUT.
    Lockout,
    /// TPM_RC_HANDLE / TPM_RC_REFERENCE_*: no such object.
    Handle,
    /// TPM_RC_INTEGRITY / TPM_RC_KEY / TPM_RC_ECC_POINT / TPM_RC_SIZE on load: not our parent.
    Integrity,
    /// The TCTI layer: nothing answers.
    Transport,
    /// TPM_RC_OBJECT_MEMORY, _SESSION_MEMORY, _MEMORY, _SESSION_HANDLES, _OBJECT_HANDLES:
    /// no free slot (objects or sessions left loaded without a resource manager).
    NoRoom,
    Other,
}

const TPM_RC_FMT1: u32 = 0x080;
const LAYER_MASK: u32 = 0xFF_0000;
const TCTI_LAYER: u32 = 0x0A_0000;

pub fn classify(rc: u32) -> RcKind {
    let layer = rc & LAYER_MASK;
    if layer == TCTI_LAYER {
        return RcKind::Transport;
    }
    // TPM layer (0) and resource-manager layers carry TPM codes in the low bits.
    if layer != 0 && layer != 0x0B_0000 && layer != 0x0C_0000 && layer != 0x0D_0000 {
        return RcKind::Other;
    }
    let code = rc & 0xFFFF;
    if code & TPM_RC_FMT1 != 0 {
        // Format one: error number in bits 0..5, parameter/handle/session number above.
        return match code & 0xBF {
            0x084 => RcKind::Value,
            0x08B => RcKind::Handle,
            0x08E | 0x0A2 => RcKind::AuthFail,
            0x09D => RcKind::PolicyFail,
            0x09F | 0x09C | 0x0A7 | 0x095 => RcKind::Integrity,
            _ => RcKind::Other,
        };
    }
    match code {
        0x128 => RcKind::PcrChanged,
        0x921 => RcKind::Lockout,
        0x902..=0x906 => RcKind::NoRoom,
        0x910..=0x916 | 0x918..=0x91E => RcKind::Handle,
        _ => RcKind::Other,
    }
}

/// A failed command as an error, mapping the causes a user can act on.
pub fn from_rc(op: &'static str, rc: u32) -> TpmError {
    match classify(rc) {
        RcKind::Lockout => TpmError::Lockout,
        RcKind::NoRoom => TpmError::Full { op, rc },
        RcKind::Transport => TpmError::Unavailable {
            tcti: "connection".into(),
            reason: format!("{op} failed (0x{rc:x})"),
        },
        _ => TpmError::Command {
            op,
            rc: format!("{} (0x{rc:x})", describe(rc)),
        },
    }
}

/// A short name for the return codes sealroot meets; the hex code follows it anyway.
fn describe(rc: u32) -> &'static str {
    match classify(rc) {
        RcKind::PcrChanged => "PCRs changed",
        RcKind::PolicyFail => "policy check failed",
        RcKind::Value => "value out of range",
        RcKind::AuthFail => "authorization failed",
        RcKind::Lockout => "dictionary-attack lockout",
        RcKind::Handle => "no such object or handle",
        RcKind::Integrity => "integrity check failed",
        RcKind::Transport => "TPM connection failed",
        RcKind::NoRoom => "no free object or session slot",
        RcKind::Other => match rc & 0xFF_0000 {
            0x07_0000 => "ESAPI error",
            0x08_0000 | 0x09_0000 => "TSS system API error",
            0 if rc & 0xFFF == 0x101 => "command failure",
            0 => "TPM error",
            _ => "TSS error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_known_codes() {
        assert_eq!(classify(0x128), RcKind::PcrChanged);
        assert_eq!(classify(0x99d), RcKind::PolicyFail); // session 1 policy fail
        assert_eq!(classify(0x98e), RcKind::AuthFail); // session 1 auth fail
        assert_eq!(classify(0x921), RcKind::Lockout);
        assert_eq!(classify(0x18b), RcKind::Handle); // handle 1
        assert_eq!(classify(0x1df), RcKind::Integrity); // parameter 1 integrity
        assert_eq!(classify(0x0A_000A), RcKind::Transport);
        assert_eq!(classify(0x2c4), RcKind::Value);
        assert_eq!(classify(0x902), RcKind::NoRoom); // TPM_RC_OBJECT_MEMORY
        assert_eq!(classify(0x903), RcKind::NoRoom); // TPM_RC_SESSION_MEMORY
    }
}
