//! Policy assertions in a policy session: PolicyPCR, PolicyAuthValue, signed PCR policies
//! (PolicyAuthorize with a ticket from VerifySignature), and reading the session digest.
//! The same digests computed in software are in `policy`.

use std::ptr;

use sha2::{Digest as _, Sha256};
use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_LoadExternal, Esys_PolicyAuthValue, Esys_PolicyAuthorize,
    Esys_PolicyGetDigest, Esys_PolicyPCR, Esys_TR_GetName, Esys_VerifySignature, TPM2B_DIGEST,
    TPM2B_NAME, TPM2B_NONCE, TPM2B_PUBLIC, TPMT_SIGNATURE, TPMT_TK_VERIFIED,
    Tss2_MU_TPMT_PUBLIC_Unmarshal,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::unseal::SignedPolicy;
use super::wire::{EsysBox, check, generic, pcr_selection, tpm2b_digest, unmarshal};

const TPM2_ALG_RSASSA: u16 = 0x0014;
const TPM2_RH_OWNER: u32 = 0x4000_0001;

impl Tpm {
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
        let mut ticket = EsysBox::<TPMT_TK_VERIFIED>::null();
        // SAFETY: pointers to live locals; ticket is freed by its box.
        let rc = unsafe {
            Esys_VerifySignature(
                self.ctx,
                key,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &digest,
                &signature,
                &mut ticket.0,
            )
        };
        check("VerifySignature", rc).map_err(|e| TpmError::PolicyMismatch {
            detail: format!(
                "the PCR signature does not verify (0x{:x}); use `sealroot recover`",
                e.1
            ),
        })?;
        let mut name = EsysBox::<TPM2B_NAME>::null();
        // SAFETY: name receives an ESAPI allocation, freed by its box.
        let rc = unsafe { Esys_TR_GetName(self.ctx, key, &mut name.0) };
        check("TR_GetName", rc).map_err(generic).and_then(|_| {
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
                    name.0,
                    ticket.0,
                )
            };
            check("PolicyAuthorize", rc).map_err(generic)
        })
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

    pub(super) fn policy_auth_value(&mut self, session: ESYS_TR) -> Result<(), TpmError> {
        // SAFETY: session is live.
        let rc = unsafe {
            Esys_PolicyAuthValue(self.ctx, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE)
        };
        check("PolicyAuthValue", rc).map_err(generic)
    }

    pub(super) fn policy_digest(&mut self, session: ESYS_TR) -> Result<Vec<u8>, TpmError> {
        let mut digest = EsysBox::<TPM2B_DIGEST>::null();
        // SAFETY: digest receives an ESAPI allocation, freed by its box.
        let rc = unsafe {
            Esys_PolicyGetDigest(
                self.ctx,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut digest.0,
            )
        };
        check("PolicyGetDigest", rc).map_err(generic)?;
        let out = digest
            .get()
            .map(|d| d.buffer[..usize::from(d.size).min(64)].to_vec())
            .ok_or_else(|| TpmError::Invalid("PolicyGetDigest returned nothing".into()))?;
        Ok(out)
    }
}
