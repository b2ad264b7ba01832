//! Unsealing: Load under the parent, a policy session salted with the parent whose
//! response is encrypted, the policy assertions, Unseal. For a sealroot token that is
//! exactly six TPM commands per unlock with the fence: Load, StartAuthSession, PolicyPCR,
//! Unseal (which ends the session), FlushContext, PCR_Event. An object sealed offline is
//! imported first: seven.

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_GetSysContext, Esys_TR_SetAuth, Esys_Unseal, TPM2B_SENSITIVE_DATA,
    TSS2_SYS_CONTEXT, Tss2_Sys_GetRpBuffer,
};
use zeroize::Zeroize;

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::seal::SealedObject;
use super::session::{SessionKind, UNSEAL_SESSION};
use super::srk::ExpectedParent;
use super::wire::{EsysBox, check, generic, parse_key_resource, tpm2b_auth};
use crate::secret::Secret;

/// Attempts when PCRs change between PolicyPCR and Unseal.
const PCR_CHANGED_RETRIES: usize = 10;

impl Tpm {
    /// Unseals a sealroot token's secret: Load, then a policy session salted with the
    /// parent whose response is encrypted, PolicyPCR against the expected digest (and
    /// PolicyAuthValue with a PIN), Unseal.
    pub fn unseal(&mut self, req: &Unseal<'_>) -> Result<Secret, TpmError> {
        self.verify(req)?;
        let (mut parent, transient) = match req.parent {
            Parent::Recorded { handle, public } => (self.recorded_key(handle, public)?, false),
            Parent::Serialized(bytes) => (self.deserialize(bytes)?, false),
            Parent::Primary(template) => (self.create_primary(template)?.0, true),
        };
        let result = self.load_and_unseal(parent, req);
        if transient {
            self.flush(parent);
        } else {
            self.close(&mut parent);
        }
        result
    }

    /// Checks the request's parent against the expected storage key, before anything is
    /// sent under it (and, by `unlock`, before a PIN is asked for). Primaries re-created
    /// from a template are the TPM's own by construction.
    pub fn verify(&mut self, req: &Unseal<'_>) -> Result<(), TpmError> {
        match req.parent {
            Parent::Recorded { handle, public } => {
                self.verify_parent(handle, public, req.expected_parent)
            }
            Parent::Serialized(bytes) => {
                let (handle, _, public) =
                    parse_key_resource(bytes).map_err(|e| TpmError::UntrustedParent {
                        detail: format!("tpm2_srk is unusable ({e})"),
                    })?;
                self.verify_parent(handle, &public, req.expected_parent)
            }
            Parent::Primary(_) => Ok(()),
        }
    }

    fn load_and_unseal(&mut self, parent: ESYS_TR, req: &Unseal<'_>) -> Result<Secret, TpmError> {
        let object = if req.object.needs_import() {
            let imported = self.import(parent, req.object)?;
            self.load(parent, &imported)?
        } else {
            self.load(parent, req.object)?
        };
        let result = self.unseal_loaded(parent, object, req);
        if req.auth.is_some() {
            self.forget_auth(object);
        }
        self.flush(object);
        result
    }

    /// ESAPI keeps an object's authValue in its resource node and frees the node unwiped at
    /// FlushContext: overwrite it first (tests/residue.rs found it on the heap).
    fn forget_auth(&mut self, object: ESYS_TR) {
        if let Ok(empty) = tpm2b_auth(&[]) {
            // SAFETY: empty is a live local; ESAPI copies the whole TPM2B over the stored one.
            let rc = unsafe { Esys_TR_SetAuth(self.ctx, object, &empty) };
            if rc != 0 {
                log::debug!("TR_SetAuth (clearing the PIN's authValue) failed: 0x{rc:x}");
            }
        }
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
        // Response encryption for Unseal; Unseal ends the session in the TPM, so no
        // FlushContext is needed.
        let mut session = match self.take_spare_session(parent, req.session_hash) {
            Some(session) => session,
            None => self.start_session(
                parent,
                SessionKind::Policy,
                req.session_hash,
                UNSEAL_SESSION,
            )?,
        };
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
        if let Some(approved) = &req.approved {
            self.policy_approved(session, approved)?;
        }
        if !req.pcrs.is_empty() {
            let expected = req.expected_pcr_digest.as_deref().unwrap_or(&[]);
            self.policy_pcr(session, req.bank, req.pcrs, expected)?;
        }
        if req.auth.is_some() {
            self.policy_auth_value(session)?;
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

    fn unseal_with(&mut self, session: ESYS_TR, object: ESYS_TR) -> Result<Secret, TpmError> {
        let mut out = EsysBox::<TPM2B_SENSITIVE_DATA>::null();
        // SAFETY: out receives an ESAPI allocation, wiped below and freed by its box.
        let rc = unsafe {
            Esys_Unseal(
                self.ctx,
                object,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut out.0,
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
        let data = out
            .get_mut()
            .ok_or_else(|| TpmError::Invalid("Unseal returned no data".into()))?;
        let len = usize::from(data.size).min(data.buffer.len());
        let secret = Secret::from_slice(&data.buffer[..len]);
        data.buffer.zeroize();
        // tpm2-tss decrypted the response in a stack array it does not wipe, and keeps the
        // decrypted response in its buffer until the next command (freed unwiped at the
        // end): wipe both (tests/residue.rs finds either copy otherwise).
        self.wipe_response();
        crate::secret::wipe_stack();
        Ok(secret)
    }

    /// Zeroes the last response in tpm2-tss's SYS buffer (a decrypted Unseal response holds
    /// the secret there until the next command overwrites it).
    fn wipe_response(&mut self) {
        let mut sys: *mut TSS2_SYS_CONTEXT = std::ptr::null_mut();
        let mut size: tss_esapi_sys::size_t = 0;
        let mut buf: *const u8 = std::ptr::null();
        // SAFETY: the SYS context belongs to this ESAPI context; GetRpBuffer returns the
        // response bytes inside the SYS context's own (writable) buffer, `size` long, valid
        // until the next command.
        unsafe {
            if Esys_GetSysContext(self.ctx, &mut sys) != 0 || sys.is_null() {
                return;
            }
            if Tss2_Sys_GetRpBuffer(sys, &mut size, &mut buf) != 0 || buf.is_null() {
                return;
            }
            std::slice::from_raw_parts_mut(buf.cast_mut(), size as usize).zeroize();
        }
    }
}

/// What unsealing one token needs.
pub struct Unseal<'a> {
    pub parent: Parent<'a>,
    /// What the parent must be (trusted configuration, not the header).
    pub expected_parent: &'a ExpectedParent,
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
    /// A sealroot approval to satisfy first (tokens with a policy key).
    pub approved: Option<Approved<'a>>,
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
    /// The same key in PKCS#1 DER: its fingerprint names it in signature files, and
    /// approvals are verified with it before any reaches the TPM.
    pub key_pkcs1: Vec<u8>,
    pub signatures: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A sealroot approval, checked in software and chosen for the current PCR values.
pub struct Approved<'a> {
    /// TPMT_PUBLIC of the policy key (ECDSA P-256).
    pub key_public: &'a [u8],
    pub policy_ref: &'a [u8],
    /// The approved policy digest the signature covers.
    pub approved: &'a [u8],
    pub bank: PcrBank,
    /// The approved PCR set that holds now.
    pub branch: &'a [(u32, Vec<u8>)],
    /// Every branch's digest when the approval is a PolicyOR; empty otherwise.
    pub or_branches: &'a [Vec<u8>],
    /// (r, s).
    pub signature: (&'a [u8], &'a [u8]),
    /// PolicyNV(index == value) first, on revocable tokens.
    pub nv: Option<(u32, u64)>,
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
