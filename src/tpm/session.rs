//! Sessions salted with the storage key and encrypting their parameters, so secrets never
//! cross the bus in clear and a TPM without the key's private part cannot complete them.

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_StartAuthSession, Esys_TRSess_SetAttributes, TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS, TPMU_SYM_MODE,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::wire::{check, generic};

const TPM2_ALG_AES: u16 = 0x0006;
const TPM2_ALG_CFB: u16 = 0x0043;
const TPMA_SESSION_CONTINUESESSION: u8 = 0x01;
const TPMA_SESSION_DECRYPT: u8 = 0x20;
const TPMA_SESSION_ENCRYPT: u8 = 0x40;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Hmac = 0x00,
    Policy = 0x01,
}

/// What a session does besides authorizing.
#[derive(Clone, Copy)]
pub struct SessionUse {
    /// Encrypt the first command parameter (a secret sent to the TPM).
    pub encrypt_command: bool,
    /// Encrypt the first response parameter (a secret the TPM returns).
    pub encrypt_response: bool,
    /// Keep the session after its next command; without it the command ends the session
    /// in the TPM and no FlushContext is needed.
    pub keep: bool,
}

impl Tpm {
    /// StartAuthSession salted with `salt_key`, AES-128-CFB parameter encryption, session
    /// hash `hash`. The caller flushes it on failure (or closes it after a command ended it).
    pub(super) fn start_session(
        &mut self,
        salt_key: ESYS_TR,
        kind: SessionKind,
        hash: PcrBank,
        usage: SessionUse,
    ) -> Result<ESYS_TR, TpmError> {
        let symmetric = TPMT_SYM_DEF {
            algorithm: TPM2_ALG_AES,
            keyBits: TPMU_SYM_KEY_BITS { aes: 128 },
            mode: TPMU_SYM_MODE { aes: TPM2_ALG_CFB },
        };
        let mut session: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: pointers to live locals; session receives a handle of this context.
        let rc = unsafe {
            Esys_StartAuthSession(
                self.ctx,
                salt_key,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                std::ptr::null(),
                kind as u8,
                &symmetric,
                hash.alg_id(),
                &mut session,
            )
        };
        check("StartAuthSession", rc).map_err(|e| match classify(e.1) {
            RcKind::Handle | RcKind::Value | RcKind::Integrity => TpmError::Rejected {
                detail: format!("StartAuthSession: 0x{:x}", e.1),
            },
            _ => generic(e),
        })?;
        let mut attributes = 0;
        if usage.encrypt_command {
            attributes |= TPMA_SESSION_DECRYPT;
        }
        if usage.encrypt_response {
            attributes |= TPMA_SESSION_ENCRYPT;
        }
        if usage.keep {
            attributes |= TPMA_SESSION_CONTINUESESSION;
        }
        let mask = TPMA_SESSION_DECRYPT | TPMA_SESSION_ENCRYPT | TPMA_SESSION_CONTINUESESSION;
        // SAFETY: session is a live handle of this context.
        let rc = unsafe { Esys_TRSess_SetAttributes(self.ctx, session, attributes, mask) };
        if let Err(e) = check("TRSess_SetAttributes", rc) {
            self.flush(session);
            return Err(generic(e));
        }
        Ok(session)
    }
}
