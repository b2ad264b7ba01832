//! The boot path's TPM access, straight on the ESAPI: tss-esapi 7 has no wrapper for
//! `Esys_TR_Deserialize` or `Esys_PCR_Event`, and without them an unlock costs three more
//! TPM commands (ReadPublic of the SRK, GetCapability for the banks, a session flush).
//! Here an unlock is exactly: Load, StartAuthSession, PolicyPCR, Unseal (the session ends
//! with it), FlushContext, PCR_Event — six commands.
//!
//! Everything unsafe in sealroot's TPM layer is in this module: the unseal flow here,
//! policy assertions in `policy`, PCR reads and events in `pcr`, wire helpers in `wire`. Each handle this context
//! creates is flushed or closed before it is dropped.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::ptr;

use sha2::{Digest as _, Sha256};
use tss_esapi::tss2_esys::{
    ESYS_CONTEXT, ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, ESYS_TR_RH_OWNER, Esys_CreatePrimary,
    Esys_Finalize, Esys_FlushContext, Esys_Free, Esys_Initialize, Esys_Load, Esys_LoadExternal,
    Esys_PCR_Event, Esys_PCR_Read, Esys_PolicyAuthValue, Esys_PolicyAuthorize,
    Esys_PolicyGetDigest, Esys_PolicyPCR, Esys_StartAuthSession, Esys_TR_Close,
    Esys_TR_Deserialize, Esys_TR_GetName, Esys_TR_SetAuth, Esys_TRSess_SetAttributes, Esys_Unseal,
    Esys_VerifySignature, TPM2B_AUTH, TPM2B_DATA, TPM2B_DIGEST, TPM2B_EVENT, TPM2B_NAME,
    TPM2B_NONCE, TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPML_DIGEST,
    TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMS_PCR_SELECTION, TPMT_SIGNATURE, TPMT_SYM_DEF,
    TPMT_TK_VERIFIED, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE, TSS2_RC, TSS2_TCTI_CONTEXT,
    Tss2_MU_TPM2B_PRIVATE_Unmarshal, Tss2_MU_TPM2B_PUBLIC_Unmarshal, Tss2_MU_TPMT_PUBLIC_Unmarshal,
    Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize,
};
use zeroize::Zeroize;

use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::seal::SealedObject;
use crate::secret::Secret;
use wire::*;

const TPM2_SE_POLICY: u8 = 0x01;
const TPM2_ALG_RSASSA: u16 = 0x0014;
const TPM2_RH_OWNER: u32 = 0x4000_0001;
const TPM2_ALG_AES: u16 = 0x0006;
const TPM2_ALG_CFB: u16 = 0x0043;
const TPMA_SESSION_CONTINUESESSION: u8 = 0x01;
const TPMA_SESSION_ENCRYPT: u8 = 0x40;
const IESYSC_KEY_RSRC: u32 = 1;
/// ESYS_TR values 0..=31 are the PCRs.
const ESYS_TR_PCR0: u32 = 0;
/// TPM2B_EVENT holds at most this much.
const MAX_EVENT: usize = 1024;
/// Attempts when PCRs change between PolicyPCR and Unseal.
const PCR_CHANGED_RETRIES: usize = 10;

/// One failed ESAPI call: the operation and its raw return code.
mod pcr;
mod policy;
mod wire;

pub use wire::serialized_key_resource;

pub struct Esys {
    ctx: *mut ESYS_CONTEXT,
    tcti: *mut TSS2_TCTI_CONTEXT,
}

impl Esys {
    /// Opens the TPM behind `tcti` (tpm2-tss spelling), without parsing it ourselves: the
    /// TCTI loader is the authority on its own syntax.
    pub fn open(tcti: &str) -> Result<Esys, TpmError> {
        let unavailable = |reason: String| TpmError::Unavailable {
            tcti: tcti.to_string(),
            reason,
        };
        if let Some(path) = tcti.strip_prefix("device:")
            && !std::path::Path::new(path).exists()
        {
            return Err(unavailable(format!("{path} does not exist")));
        }
        let conf = CString::new(tcti).map_err(|_| unavailable("NUL in the TCTI".into()))?;
        let mut tcti_ctx: *mut TSS2_TCTI_CONTEXT = ptr::null_mut();
        // SAFETY: conf is a valid C string; tcti_ctx receives an allocation we finalize.
        let rc = unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut tcti_ctx) };
        if rc != 0 {
            return Err(unavailable(format!("cannot connect (0x{rc:x})")));
        }
        let mut ctx: *mut ESYS_CONTEXT = ptr::null_mut();
        // SAFETY: tcti_ctx is initialized; ctx receives an allocation we finalize.
        let rc = unsafe { Esys_Initialize(&mut ctx, tcti_ctx, ptr::null_mut()) };
        if rc != 0 {
            // SAFETY: tcti_ctx came from Tss2_TctiLdr_Initialize.
            unsafe { Tss2_TctiLdr_Finalize(&mut tcti_ctx) };
            return Err(unavailable(format!(
                "ESAPI initialization failed (0x{rc:x})"
            )));
        }
        Ok(Esys {
            ctx,
            tcti: tcti_ctx,
        })
    }

    /// An ESYS_TR for the parent at `handle`, made from the public area recorded at
    /// enrollment instead of read from the TPM: no command is sent, and the session salt is
    /// encrypted to the recorded key, which only the enrolling TPM can decrypt.
    fn parent(&mut self, handle: u32, public_tpm2b: &[u8]) -> Result<ESYS_TR, TpmError> {
        let bytes = serialized_key_resource(handle, public_tpm2b)?;
        let mut tr: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: bytes outlives the call; tr receives a handle owned by this context.
        let rc =
            unsafe { Esys_TR_Deserialize(self.ctx, bytes.as_ptr(), bytes.len() as u64, &mut tr) };
        check("TR_Deserialize", rc).map_err(generic)?;
        Ok(tr)
    }

    fn close(&mut self, tr: &mut ESYS_TR) {
        // SAFETY: tr is a handle of this context; closing sends no command.
        unsafe { Esys_TR_Close(self.ctx, tr) };
    }

    fn flush(&mut self, tr: ESYS_TR) {
        // SAFETY: tr is a transient object or session of this context.
        unsafe { Esys_FlushContext(self.ctx, tr) };
    }

    /// Unseals a sealroot token's secret: Load, then a policy session salted with the
    /// parent whose response is encrypted, PolicyPCR against the expected digest (and
    /// PolicyAuthValue with a PIN), Unseal.
    pub fn unseal(&mut self, req: &Unseal<'_>) -> Result<Secret, TpmError> {
        let (mut parent, transient) = match req.parent {
            Parent::Recorded { handle, public } => (self.parent(handle, public)?, false),
            Parent::Serialized(bytes) => (self.deserialize(bytes)?, false),
            Parent::Primary(template) => (self.create_primary(template)?, true),
        };
        let result = self.load_and_unseal(parent, req);
        if transient {
            self.flush(parent);
        } else {
            self.close(&mut parent);
        }
        result
    }

    fn deserialize(&mut self, bytes: &[u8]) -> Result<ESYS_TR, TpmError> {
        let mut tr: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: bytes outlives the call; tr receives a handle owned by this context.
        let rc =
            unsafe { Esys_TR_Deserialize(self.ctx, bytes.as_ptr(), bytes.len() as u64, &mut tr) };
        check("TR_Deserialize", rc).map_err(|e| TpmError::Rejected {
            detail: format!("the recorded parent key cannot be read (0x{:x})", e.1),
        })?;
        Ok(tr)
    }

    /// CreatePrimary under the owner hierarchy (empty owner password) from a TPMT_PUBLIC.
    fn create_primary(&mut self, template: &[u8]) -> Result<ESYS_TR, TpmError> {
        let public_area = unmarshal(template, Tss2_MU_TPMT_PUBLIC_Unmarshal, "TPMT_PUBLIC")?;
        // SAFETY: plain data; all zeros is valid (empty sensitive, outside info, PCRs).
        let (in_public, sensitive, outside, pcrs) = unsafe {
            let mut p: TPM2B_PUBLIC = std::mem::zeroed();
            p.publicArea = public_area;
            (
                p,
                std::mem::zeroed::<TPM2B_SENSITIVE_CREATE>(),
                std::mem::zeroed::<TPM2B_DATA>(),
                std::mem::zeroed::<TPML_PCR_SELECTION>(),
            )
        };
        let mut handle: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: pointers to live locals; the optional outputs are not requested.
        let rc = unsafe {
            Esys_CreatePrimary(
                self.ctx,
                ESYS_TR_RH_OWNER,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &sensitive,
                &in_public,
                &outside,
                &pcrs,
                &mut handle,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        check("CreatePrimary", rc).map_err(|e| match classify(e.1) {
            RcKind::AuthFail => TpmError::Invalid(
                "CreatePrimary refused: the owner hierarchy has a password".into(),
            ),
            _ => generic(e),
        })?;
        Ok(handle)
    }

    fn load_and_unseal(&mut self, parent: ESYS_TR, req: &Unseal<'_>) -> Result<Secret, TpmError> {
        let private: TPM2B_PRIVATE = unmarshal_private(&req.object.private)?;
        let public: TPM2B_PUBLIC = unmarshal_public(&req.object.public)?;
        let mut object: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: all pointers are to live locals; object receives a transient handle.
        let rc = unsafe {
            Esys_Load(
                self.ctx,
                parent,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &private,
                &public,
                &mut object,
            )
        };
        if let Err((op, rc)) = check("Load", rc) {
            return Err(match classify(rc) {
                RcKind::Integrity | RcKind::Value | RcKind::Handle => TpmError::Rejected {
                    detail: format!("Load: 0x{rc:x}"),
                },
                _ => generic((op, rc)),
            });
        }
        let result = self.unseal_loaded(parent, object, req);
        self.flush(object);
        result
    }

    fn unseal_loaded(
        &mut self,
        parent: ESYS_TR,
        object: ESYS_TR,
        req: &Unseal<'_>,
    ) -> Result<Secret, TpmError> {
        if let Some(auth) = req.auth {
            let mut value = tpm2b_auth(auth.expose())?;
            // SAFETY: value is a live local; ESAPI copies it.
            let rc = unsafe { Esys_TR_SetAuth(self.ctx, object, &value) };
            value.buffer.zeroize();
            check("TR_SetAuth", rc).map_err(generic)?;
        }
        let mut last = TpmError::PcrChanged;
        // The static build carries the fixed tpm2-tss; a development build links the
        // system's, which may have the bug below: there a PIN failure is retried once in a
        // new session (costing one more dictionary-attack try if the PIN really is wrong).
        let mut pin_retry = !cfg!(feature = "static");
        for _ in 0..PCR_CHANGED_RETRIES {
            match self.policy_and_unseal(parent, object, req) {
                Err(TpmError::PcrChanged) => last = TpmError::PcrChanged,
                Err(TpmError::WrongPin) if req.auth.is_some() && pin_retry => {
                    log::debug!("PIN authorization failed; once more in a new session");
                    pin_retry = false;
                    last = TpmError::WrongPin;
                }
                // Without a PIN an authorization failure cannot be the user's: the client
                // and the TPM derived different session keys (tpm2-tss before the fix in
                // scripts/patches dropped leading zeros of the ECDH secret, 1 session in
                // 256). The object is noDA, so a new session costs nothing.
                Err(TpmError::WrongPin) if req.auth.is_none() => {
                    log::debug!("the salted session failed its authorization check; new session");
                    last = TpmError::Command {
                        op: "Unseal",
                        rc: "the salted session failed its authorization check repeatedly".into(),
                    }
                }
                other => return other,
            }
        }
        Err(last)
    }

    fn policy_and_unseal(
        &mut self,
        parent: ESYS_TR,
        object: ESYS_TR,
        req: &Unseal<'_>,
    ) -> Result<Secret, TpmError> {
        let encodings = req.signed.map_or(1, |s| s.key_publics.len().max(1));
        let mut result = Err(TpmError::PcrChanged);
        for key_index in 0..encodings {
            result = self.policy_and_unseal_with(parent, object, req, key_index);
            match result {
                Err(TpmError::PolicyMismatch { .. }) if key_index + 1 < encodings => continue,
                _ => break,
            }
        }
        result
    }

    fn policy_and_unseal_with(
        &mut self,
        parent: ESYS_TR,
        object: ESYS_TR,
        req: &Unseal<'_>,
        key_index: usize,
    ) -> Result<Secret, TpmError> {
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
                parent,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ptr::null(),
                TPM2_SE_POLICY,
                &symmetric,
                req.session_hash.alg_id(),
                &mut session,
            )
        };
        check("StartAuthSession", rc).map_err(|e| match classify(e.1) {
            RcKind::Handle | RcKind::Value | RcKind::Integrity => TpmError::Rejected {
                detail: format!("StartAuthSession: 0x{:x}", e.1),
            },
            _ => generic(e),
        })?;
        // Response encryption for Unseal; continueSession clear, so Unseal ends the session
        // in the TPM and no FlushContext is needed.
        // SAFETY: session is a live handle of this context.
        let rc = unsafe {
            Esys_TRSess_SetAttributes(
                self.ctx,
                session,
                TPMA_SESSION_ENCRYPT,
                TPMA_SESSION_ENCRYPT | TPMA_SESSION_CONTINUESESSION,
            )
        };
        if let Err(e) = check("TRSess_SetAttributes", rc) {
            self.flush(session);
            return Err(generic(e));
        }
        let result = self
            .run_policy(session, req, key_index)
            .and_then(|_| self.unseal_with(session, object));
        match result {
            // A successful Unseal ended the session in the TPM: only ESAPI's record is left.
            Ok(_) => self.close(&mut session),
            // A failed command leaves its sessions as they were.
            Err(_) => self.flush(session),
        }
        result
    }

    fn run_policy(
        &mut self,
        session: ESYS_TR,
        req: &Unseal<'_>,
        key_index: usize,
    ) -> Result<(), TpmError> {
        if let Some(signed) = req.signed {
            self.policy_authorize(session, signed, key_index)?;
        }
        if !req.pcrs.is_empty() {
            let expected = req.expected_pcr_digest.as_deref().unwrap_or(&[]);
            self.policy_pcr(session, req.bank, req.pcrs, expected)?;
        }
        if req.auth.is_some() {
            // SAFETY: session is live.
            let rc = unsafe {
                Esys_PolicyAuthValue(self.ctx, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE)
            };
            check("PolicyAuthValue", rc).map_err(generic)?;
        }
        if let Some(expected) = req.expected_policy {
            let matches = self.policy_digest(session)? == expected;
            if !matches {
                return Err(TpmError::PolicyMismatch {
                    detail: String::new(),
                });
            }
        }
        Ok(())
    }
}

impl Esys {
    fn unseal_with(&mut self, session: ESYS_TR, object: ESYS_TR) -> Result<Secret, TpmError> {
        let mut out: *mut tss_esapi::tss2_esys::TPM2B_SENSITIVE_DATA = ptr::null_mut();
        // SAFETY: out receives an ESAPI allocation, wiped and freed below.
        let rc = unsafe {
            Esys_Unseal(
                self.ctx,
                object,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut out,
            )
        };
        check("Unseal", rc).map_err(|e| match classify(e.1) {
            RcKind::PcrChanged => TpmError::PcrChanged,
            RcKind::PolicyFail => TpmError::PolicyMismatch {
                detail: String::new(),
            },
            RcKind::AuthFail => TpmError::WrongPin,
            _ => generic(e),
        })?;
        if out.is_null() {
            return Err(TpmError::Invalid("Unseal returned no data".into()));
        }
        // SAFETY: out is a valid TPM2B_SENSITIVE_DATA from ESAPI until freed.
        let secret = unsafe {
            let data = &mut *out;
            let len = usize::from(data.size).min(data.buffer.len());
            let s = Secret::from_slice(&data.buffer[..len]);
            data.buffer.zeroize();
            Esys_Free(out.cast());
            s
        };
        Ok(secret)
    }
}

impl Drop for Esys {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `open` and are finalized exactly once.
        unsafe {
            Esys_Finalize(&mut self.ctx);
            Tss2_TctiLdr_Finalize(&mut self.tcti);
        }
    }
}

/// What unsealing one token needs.
pub struct Unseal<'a> {
    pub parent: Parent<'a>,
    pub object: &'a SealedObject,
    /// Hash of the policy session (the sealed object's name algorithm for clevis' sha1).
    pub session_hash: PcrBank,
    pub bank: PcrBank,
    pub pcrs: &'a [u32],
    /// Digest of the expected PCR values, checked by the TPM at PolicyPCR; None lets the
    /// TPM take the current values (foreign tokens record no values).
    pub expected_pcr_digest: Option<Vec<u8>>,
    /// The policy digest the object expects, compared (PolicyGetDigest) before Unseal so a
    /// mismatch never reaches the dictionary-attack counter.
    pub expected_policy: Option<&'a [u8]>,
    /// A signed PCR policy (systemd's PolicyAuthorize) to satisfy first.
    pub signed: Option<&'a SignedPolicy>,
    pub auth: Option<&'a Secret>,
}

/// A signed PCR policy: the public key whose signatures are accepted, the PCRs it covers,
/// and the signatures at hand as (approved policy digest, RSASSA-SHA256 signature) pairs.
pub struct SignedPolicy {
    pub bank: PcrBank,
    pub pcrs: Vec<u32>,
    /// TPMT_PUBLIC of the RSA key, one per encoding of its exponent to try (systemd
    /// versions differ: 65537 written out, or 0 for the default).
    pub key_publics: Vec<Vec<u8>>,
    pub signatures: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where the sealed object's parent comes from.
pub enum Parent<'a> {
    /// sealroot tokens: the handle and TPM2B_PUBLIC recorded at enrollment.
    Recorded { handle: u32, public: &'a [u8] },
    /// A serialized ESYS_TR (systemd's `tpm2_srk`).
    Serialized(&'a [u8]),
    /// A primary key re-created under the owner hierarchy from a TPMT_PUBLIC template
    /// (systemd's legacy tokens, clevis).
    Primary(&'a [u8]),
}
