//! Policy assertions in a policy session: PolicyPCR, PolicyAuthValue, signed PCR policies
//! (PolicyAuthorize with a ticket from VerifySignature), and reading the session digest.
//! The same digests computed in software are in `policy`.

use std::ptr;

use sha2::{Digest as _, Sha256};
use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_LoadExternal, Esys_PolicyAuthValue, Esys_PolicyAuthorize,
    Esys_PolicyGetDigest, Esys_PolicyOR, Esys_PolicyPCR, Esys_TR_GetName, Esys_VerifySignature,
    TPM2B_DIGEST, TPM2B_NAME, TPM2B_NONCE, TPM2B_PUBLIC, TPML_DIGEST, TPMT_SIGNATURE,
    TPMT_TK_VERIFIED, Tss2_MU_TPMT_PUBLIC_Unmarshal,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::unseal::{Approved, SignedPolicy};
use super::wire::{EsysBox, check, generic, pcr_selection, tpm2b_digest, unmarshal};

const TPM2_ALG_RSASSA: u16 = 0x0014;
const TPM2_ALG_ECDSA: u16 = 0x0018;

/// A signature over an approved policy.
#[derive(Clone, Copy)]
enum Sig<'a> {
    /// systemd's signed policies: RSASSA-PKCS1-v1_5 with SHA-256.
    Rsassa(&'a [u8]),
    /// sealroot's approvals: ECDSA P-256 with SHA-256, (r, s).
    Ecdsa(&'a [u8], &'a [u8]),
}
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
        self.authorize(session, key_public, &approved, &[], Sig::Rsassa(sig))
    }

    /// A sealroot approval: the branch of PCR values that holds now (PolicyOR over all
    /// branches when there are several), then PolicyAuthorize with the approval's signature.
    pub(super) fn policy_approved(
        &mut self,
        session: ESYS_TR,
        a: &Approved<'_>,
    ) -> Result<(), TpmError> {
        if let Some((index, value)) = a.nv {
            self.policy_nv(session, index, value)?;
        }
        let expected = super::policy::pcr_values_digest(a.branch);
        let indexes: Vec<u32> = a.branch.iter().map(|(i, _)| *i).collect();
        self.policy_pcr(session, a.bank, &indexes, &expected)?;
        if !a.or_branches.is_empty() {
            self.policy_or(session, a.or_branches)?;
        }
        self.authorize(
            session,
            a.key_public,
            a.approved,
            a.policy_ref,
            Sig::Ecdsa(a.signature.0, a.signature.1),
        )
    }

    fn policy_or(&mut self, session: ESYS_TR, branches: &[Vec<u8>]) -> Result<(), TpmError> {
        // SAFETY: plain data; all zeros is an empty list.
        let mut list: TPML_DIGEST = unsafe { std::mem::zeroed() };
        if branches.len() > list.digests.len() {
            return Err(TpmError::Invalid("more than 8 PolicyOR branches".into()));
        }
        for (slot, b) in list.digests.iter_mut().zip(branches) {
            *slot = tpm2b_digest(b)?;
        }
        list.count = branches.len() as u32;
        // SAFETY: pointers to live locals.
        let rc = unsafe {
            Esys_PolicyOR(
                self.ctx,
                session,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &list,
            )
        };
        check("PolicyOR", rc).map_err(generic)
    }

    /// LoadExternal of the signing key (owner hierarchy: PolicyAuthorize refuses tickets
    /// from the null hierarchy), VerifySignature of SHA-256(approved ‖ policyRef) for the
    /// ticket, PolicyAuthorize, FlushContext.
    fn authorize(
        &mut self,
        session: ESYS_TR,
        key_public: &[u8],
        approved: &[u8],
        policy_ref: &[u8],
        sig: Sig<'_>,
    ) -> Result<(), TpmError> {
        // SAFETY: plain data; all zeros is valid.
        let mut public: TPM2B_PUBLIC = unsafe { std::mem::zeroed() };
        public.publicArea = unmarshal(key_public, Tss2_MU_TPMT_PUBLIC_Unmarshal, "TPMT_PUBLIC")?;
        let mut key: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: pointers to live locals; the key is flushed below.
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
        let result = self.authorize_with(session, key, approved, policy_ref, sig);
        self.flush(key);
        result
    }

    fn authorize_with(
        &mut self,
        session: ESYS_TR,
        key: ESYS_TR,
        approved: &[u8],
        policy_ref: &[u8],
        sig: Sig<'_>,
    ) -> Result<(), TpmError> {
        let mut hashed = Sha256::new();
        hashed.update(approved);
        hashed.update(policy_ref);
        let digest = tpm2b_digest(&hashed.finalize())?;
        // SAFETY: plain data; all zeros is valid.
        let mut signature: TPMT_SIGNATURE = unsafe { std::mem::zeroed() };
        match sig {
            Sig::Rsassa(bytes) => {
                signature.sigAlg = TPM2_ALG_RSASSA;
                if bytes.len() > 512 {
                    return Err(TpmError::Invalid("signature too long".into()));
                }
                // SAFETY: writing the rsassa member of the union we declared as RSASSA.
                unsafe {
                    signature.signature.rsassa.hash = PcrBank::Sha256.alg_id();
                    signature.signature.rsassa.sig.size = bytes.len() as u16;
                    signature.signature.rsassa.sig.buffer[..bytes.len()].copy_from_slice(bytes);
                }
            }
            Sig::Ecdsa(r, s) => {
                signature.sigAlg = TPM2_ALG_ECDSA;
                if r.len() > 32 || s.len() > 32 {
                    return Err(TpmError::Invalid("signature too long".into()));
                }
                // SAFETY: writing the ecdsa member of the union we declared as ECDSA.
                unsafe {
                    let e = &mut signature.signature.ecdsa;
                    e.hash = PcrBank::Sha256.alg_id();
                    e.signatureR.size = r.len() as u16;
                    e.signatureR.buffer[..r.len()].copy_from_slice(r);
                    e.signatureS.size = s.len() as u16;
                    e.signatureS.buffer[..s.len()].copy_from_slice(s);
                }
            }
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
                "the TPM does not accept the policy signature (0x{:x}); use `sealroot recover`",
                e.1
            ),
        })?;
        let mut name = EsysBox::<TPM2B_NAME>::null();
        // SAFETY: name receives an ESAPI allocation, freed by its box.
        let rc = unsafe { Esys_TR_GetName(self.ctx, key, &mut name.0) };
        check("TR_GetName", rc).map_err(generic).and_then(|_| {
            let approved = tpm2b_digest(approved)?;
            // SAFETY: plain data; all zeros is valid.
            let mut reference: TPM2B_NONCE = unsafe { std::mem::zeroed() };
            if policy_ref.len() > reference.buffer.len() {
                return Err(TpmError::Invalid("policyRef too long".into()));
            }
            reference.size = policy_ref.len() as u16;
            reference.buffer[..policy_ref.len()].copy_from_slice(policy_ref);
            // SAFETY: all pointers valid; name and ticket from ESAPI.
            let rc = unsafe {
                Esys_PolicyAuthorize(
                    self.ctx,
                    session,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    &approved,
                    &reference,
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
