//! Policy assertions beyond PolicyPCR's expected digest: signed PCR policies
//! (PolicyAuthorize with a ticket from VerifySignature) and reading the session digest.

use super::wire::*;
use super::*;

impl Esys {
    /// PolicyPCR over the signed PCRs, then PolicyAuthorize with a signature of the
    /// resulting digest by the token's key (LoadExternal + VerifySignature for the ticket).
    pub(super) fn policy_authorize(
        &mut self,
        session: ESYS_TR,
        signed: &SignedPolicy,
        key_index: usize,
    ) -> Result<(), TpmError> {
        self.policy_pcr(session, signed.bank, &signed.pcrs, &[])?;
        let approved = self.policy_digest(session)?;
        let Some((_, sig)) = signed.signatures.iter().find(|(pol, _)| *pol == approved) else {
            return Err(TpmError::PolicyMismatch {
                detail: format!(
                    "no signature for the current {} PCR {:?} values (tpm2-pcr-signature.json); use `sealroot recover`",
                    signed.bank, signed.pcrs
                ),
            });
        };
        let key_public = signed
            .key_publics
            .get(key_index)
            .ok_or_else(|| TpmError::Invalid("no public key for the signed policy".into()))?;
        // SAFETY: plain data; all zeros is valid.
        let mut public: TPM2B_PUBLIC = unsafe { std::mem::zeroed() };
        public.publicArea = unmarshal(key_public, Tss2_MU_TPMT_PUBLIC_Unmarshal, "TPMT_PUBLIC")?;
        let mut key: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: pointers to live locals; the key is flushed below. The owner hierarchy,
        // because PolicyAuthorize refuses tickets from the null hierarchy.
        let rc = unsafe {
            Esys_LoadExternal(
                self.ctx,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ptr::null(),
                &public,
                TPM2_RH_OWNER,
                &mut key,
            )
        };
        check("LoadExternal", rc).map_err(generic)?;
        let result = self.authorize_with(session, key, &approved, sig);
        self.flush(key);
        result
    }

    fn authorize_with(
        &mut self,
        session: ESYS_TR,
        key: ESYS_TR,
        approved: &[u8],
        sig: &[u8],
    ) -> Result<(), TpmError> {
        let digest = tpm2b_digest(&Sha256::digest(approved))?;
        // SAFETY: plain data; all zeros is valid.
        let mut signature: TPMT_SIGNATURE = unsafe { std::mem::zeroed() };
        signature.sigAlg = TPM2_ALG_RSASSA;
        if sig.len() > 512 {
            return Err(TpmError::Invalid("signature too long".into()));
        }
        // SAFETY: writing the rsassa member of the union we declared as RSASSA.
        unsafe {
            signature.signature.rsassa.hash = PcrBank::Sha256.alg_id();
            signature.signature.rsassa.sig.size = sig.len() as u16;
            signature.signature.rsassa.sig.buffer[..sig.len()].copy_from_slice(sig);
        }
        let mut ticket: *mut TPMT_TK_VERIFIED = ptr::null_mut();
        // SAFETY: pointers to live locals; ticket is freed below.
        let rc = unsafe {
            Esys_VerifySignature(
                self.ctx,
                key,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &digest,
                &signature,
                &mut ticket,
            )
        };
        check("VerifySignature", rc).map_err(|e| TpmError::PolicyMismatch {
            detail: format!(
                "the PCR signature does not verify (0x{:x}); use `sealroot recover`",
                e.1
            ),
        })?;
        let mut name: *mut TPM2B_NAME = ptr::null_mut();
        // SAFETY: name receives an ESAPI allocation, freed below.
        let rc = unsafe { Esys_TR_GetName(self.ctx, key, &mut name) };
        let result = check("TR_GetName", rc).map_err(generic).and_then(|_| {
            let approved = tpm2b_digest(approved)?;
            // SAFETY: plain data; an empty policyRef.
            let policy_ref: TPM2B_NONCE = unsafe { std::mem::zeroed() };
            // SAFETY: all pointers valid; name and ticket from ESAPI.
            let rc = unsafe {
                Esys_PolicyAuthorize(
                    self.ctx,
                    session,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    &approved,
                    &policy_ref,
                    name,
                    ticket,
                )
            };
            check("PolicyAuthorize", rc).map_err(generic)
        });
        // SAFETY: both allocated by ESAPI (or null).
        unsafe {
            if !name.is_null() {
                Esys_Free(name.cast());
            }
            if !ticket.is_null() {
                Esys_Free(ticket.cast());
            }
        }
        result
    }

    /// PolicyPCR; with `expected` (a digest of the expected values) the TPM compares at
    /// once, and a difference is a policy mismatch before anything else is tried.
    pub(super) fn policy_pcr(
        &mut self,
        session: ESYS_TR,
        bank: PcrBank,
        pcrs: &[u32],
        expected: &[u8],
    ) -> Result<(), TpmError> {
        let digest = tpm2b_digest(expected)?;
        let selection = pcr_selection(bank, pcrs);
        // SAFETY: pointers to live locals.
        let rc = unsafe {
            Esys_PolicyPCR(
                self.ctx,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &digest,
                &selection,
            )
        };
        check("PolicyPCR", rc).map_err(|e| match classify(e.1) {
            RcKind::PcrChanged => TpmError::PcrChanged,
            RcKind::Value => TpmError::PolicyMismatch {
                detail: String::new(),
            },
            _ => generic(e),
        })
    }

    pub(super) fn policy_digest(&mut self, session: ESYS_TR) -> Result<Vec<u8>, TpmError> {
        let mut digest: *mut TPM2B_DIGEST = ptr::null_mut();
        // SAFETY: digest receives an ESAPI allocation, freed below.
        let rc = unsafe {
            Esys_PolicyGetDigest(
                self.ctx,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut digest,
            )
        };
        check("PolicyGetDigest", rc).map_err(generic)?;
        // SAFETY: valid on success, freed right after reading.
        let out = unsafe {
            let d = &*digest;
            let v = d.buffer[..usize::from(d.size).min(64)].to_vec();
            Esys_Free(digest.cast());
            v
        };
        Ok(out)
    }
}
