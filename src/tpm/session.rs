//! Sessions salted with the storage key and encrypting their parameters, so secrets never
//! cross the bus in clear and a TPM without the key's private part cannot complete them.

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_StartAuthSession, Esys_TRSess_SetAttributes, TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS, TPMU_SYM_MODE,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::srk::ExpectedParent;
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

/// The usage of an unseal's policy session: Unseal's response encrypted, and Unseal ends
/// the session in the TPM.
pub(super) const UNSEAL_SESSION: SessionUse = SessionUse {
    encrypt_command: false,
    encrypt_response: true,
    keep: false,
};

/// A policy session for an unseal, started before the token is read: salted with the key
/// whose Name is `parent_name`.
pub(super) struct SpareSession {
    parent_name: Vec<u8>,
    hash: PcrBank,
    pub(super) session: ESYS_TR,
}

impl Tpm {
    /// Starts the policy session of the next unseal ahead of time (the unlock does it while
    /// it waits for the disk): salted with the storage key at the expected handle, whose
    /// Name must be the pinned one when there is one (ESAPI checked that the Name is that
    /// of the public area the TPM returned, so equal Names mean the same key). The Name is
    /// also remembered as `persistent_name`'s. An unseal takes the session only when its
    /// own parent has that Name and its session hash is `hash`: then its own session would
    /// be salted exactly so.
    pub fn prestart_policy_session(
        &mut self,
        parent: &ExpectedParent,
        hash: PcrBank,
    ) -> Result<(), TpmError> {
        if self.spare.is_some() {
            return Ok(());
        }
        let Some(mut key) = self.persistent(parent.handle)? else {
            return Err(TpmError::UntrustedParent {
                detail: format!("this TPM has no key at 0x{:08x}", parent.handle),
            });
        };
        let started = self.name(key).and_then(|name| {
            if parent.name.as_ref().is_some_and(|pinned| *pinned != name) {
                return Err(TpmError::UntrustedParent {
                    detail: format!(
                        "the key at 0x{:08x} is not the one this initrd was built for",
                        parent.handle
                    ),
                });
            }
            let session = self.start_session(key, SessionKind::Policy, hash, UNSEAL_SESSION)?;
            Ok((name, session))
        });
        self.close(&mut key);
        let (name, session) = started?;
        if !self.names.iter().any(|(h, _)| *h == parent.handle) {
            self.names.push((parent.handle, name.clone()));
        }
        self.spare = Some(SpareSession {
            parent_name: name,
            hash,
            session,
        });
        Ok(())
    }

    /// The spare session, if it was salted with `parent` and has this session hash.
    pub(super) fn take_spare_session(&mut self, parent: ESYS_TR, hash: PcrBank) -> Option<ESYS_TR> {
        if self.spare.as_ref()?.hash != hash {
            return None;
        }
        let name = self.name(parent).ok()?;
        if self.spare.as_ref()?.parent_name != name {
            return None;
        }
        log::debug!("using the session started early");
        self.spare.take().map(|s| s.session)
    }

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
