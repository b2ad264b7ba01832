//! Objects: public areas and Names, primary keys (CreatePrimary), persistent handles
//! (ReadPublic, EvictControl), ESYS_TRs from recorded bytes (TR_Deserialize) and Load.

use std::ptr;

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, ESYS_TR_RH_OWNER, Esys_CreatePrimary,
    Esys_EvictControl, Esys_Load, Esys_ReadPublic, Esys_TR_Deserialize, Esys_TR_FromTPMPublic,
    Esys_TR_GetName, TPM2B_DATA, TPM2B_NAME, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION, Tss2_MU_TPM2B_PUBLIC_Marshal, Tss2_MU_TPMT_PUBLIC_Unmarshal,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::pcr::PcrBank;
use super::seal::SealedObject;
use super::wire::{
    EsysBox, check, generic, marshal, serialized_key_resource, unmarshal, unmarshal_private,
    unmarshal_public,
};

pub const TPM2_ALG_RSA: u16 = 0x0001;
pub const TPM2_ALG_KEYEDHASH: u16 = 0x0008;
pub const TPM2_ALG_ECC: u16 = 0x0023;
pub const TPMA_OBJECT_RESTRICTED: u32 = 0x0001_0000;
pub const TPMA_OBJECT_DECRYPT: u32 = 0x0002_0000;

/// What sealroot reads from a TPM2B_PUBLIC, after tpm2-tss has validated all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    pub kind: u16,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
}

impl PublicArea {
    pub fn parse(tpm2b: &[u8]) -> Result<PublicArea, TpmError> {
        let p = unmarshal_public(tpm2b)?.publicArea;
        let size = usize::from(p.authPolicy.size).min(p.authPolicy.buffer.len());
        Ok(PublicArea {
            kind: p.type_,
            name_alg: p.nameAlg,
            attributes: p.objectAttributes,
            auth_policy: p.authPolicy.buffer[..size].to_vec(),
        })
    }

    pub fn is_storage_key(&self) -> bool {
        let both = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
        matches!(self.kind, TPM2_ALG_ECC | TPM2_ALG_RSA) && self.attributes & both == both
    }
}

/// TPM Name of an object from its TPM2B_PUBLIC: nameAlg ‖ H_nameAlg(TPMT_PUBLIC).
pub fn name_of(public_tpm2b: &[u8]) -> Result<Vec<u8>, TpmError> {
    let area = PublicArea::parse(public_tpm2b)?;
    let bank = [PcrBank::Sha1, PcrBank::Sha256, PcrBank::Sha384]
        .into_iter()
        .find(|b| b.alg_id() == area.name_alg)
        .ok_or_else(|| {
            TpmError::Invalid(format!(
                "unsupported name algorithm 0x{:04x}",
                area.name_alg
            ))
        })?;
    let mut name = area.name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(&bank.hash(&public_tpm2b[2..]));
    Ok(name)
}

/// TPM Name of an object from its TPMT_PUBLIC (a template, or a key loaded as such).
pub fn name_of_template(tpmt: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut tpm2b = u16::try_from(tpmt.len())
        .map_err(|_| TpmError::Invalid("TPMT_PUBLIC too long".into()))?
        .to_be_bytes()
        .to_vec();
    tpm2b.extend_from_slice(tpmt);
    name_of(&tpm2b)
}

impl Tpm {
    /// CreatePrimary under the owner hierarchy (empty owner password) from a TPMT_PUBLIC
    /// template; returns the transient handle and the key's TPM2B_PUBLIC.
    pub(super) fn create_primary(
        &mut self,
        template: &[u8],
    ) -> Result<(ESYS_TR, Vec<u8>), TpmError> {
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
        let mut out_public = EsysBox::<TPM2B_PUBLIC>::null();
        // SAFETY: pointers to live locals; out_public is freed by its box.
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
                &mut out_public.0,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        check("CreatePrimary", rc).map_err(|e| match classify(e.1) {
            RcKind::AuthFail => TpmError::Invalid(
                "CreatePrimary refused: the owner hierarchy has a password; provision an SRK at 0x81000001 first".into(),
            ),
            _ => generic(e),
        })?;
        let public = match out_public.get() {
            Some(p) => marshal(p, Tss2_MU_TPM2B_PUBLIC_Marshal, "TPM2B_PUBLIC"),
            None => Err(TpmError::Invalid(
                "CreatePrimary returned no public area".into(),
            )),
        };
        match public {
            Ok(p) => Ok((handle, p)),
            Err(e) => {
                self.flush(handle);
                Err(e)
            }
        }
    }

    /// The ESYS_TR of the object at a persistent handle, or of an NV index (ESAPI sends
    /// ReadPublic or NV_ReadPublic), or None when the handle is empty.
    pub(super) fn persistent(&mut self, handle: u32) -> Result<Option<ESYS_TR>, TpmError> {
        let mut tr: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: tr receives a handle of this context.
        let rc = unsafe {
            Esys_TR_FromTPMPublic(
                self.ctx,
                handle,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut tr,
            )
        };
        match check("ReadPublic", rc) {
            Ok(()) => Ok(Some(tr)),
            Err(e) if classify(e.1) == RcKind::Handle => Ok(None),
            Err(e) => Err(generic(e)),
        }
    }

    /// The Name ESAPI holds for a handle (no command).
    pub(super) fn name(&mut self, tr: ESYS_TR) -> Result<Vec<u8>, TpmError> {
        let mut name = EsysBox::<TPM2B_NAME>::null();
        // SAFETY: name receives an ESAPI allocation, freed by its box.
        let rc = unsafe { Esys_TR_GetName(self.ctx, tr, &mut name.0) };
        check("TR_GetName", rc).map_err(generic)?;
        name.get()
            .map(|n| n.name[..usize::from(n.size).min(n.name.len())].to_vec())
            .ok_or_else(|| TpmError::Invalid("TR_GetName returned nothing".into()))
    }

    /// TPM2B_PUBLIC of a loaded object, as the TPM reports it.
    pub(super) fn read_public(&mut self, tr: ESYS_TR) -> Result<Vec<u8>, TpmError> {
        let mut public = EsysBox::<TPM2B_PUBLIC>::null();
        let mut name = EsysBox::<TPM2B_NAME>::null();
        let mut qualified = EsysBox::<TPM2B_NAME>::null();
        // SAFETY: the outputs are freed by their boxes.
        let rc = unsafe {
            Esys_ReadPublic(
                self.ctx,
                tr,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut public.0,
                &mut name.0,
                &mut qualified.0,
            )
        };
        check("ReadPublic", rc).map_err(generic)?;
        let public = public
            .get()
            .ok_or_else(|| TpmError::Invalid("ReadPublic returned no public area".into()))?;
        marshal(public, Tss2_MU_TPM2B_PUBLIC_Marshal, "TPM2B_PUBLIC")
    }

    /// Makes a transient key persistent at `handle` (owner authorization, empty password).
    pub(super) fn evict_control(
        &mut self,
        transient: ESYS_TR,
        handle: u32,
    ) -> Result<ESYS_TR, TpmError> {
        let mut persistent: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: persistent receives a handle of this context.
        let rc = unsafe {
            Esys_EvictControl(
                self.ctx,
                ESYS_TR_RH_OWNER,
                transient,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                handle,
                &mut persistent,
            )
        };
        check("EvictControl", rc).map_err(generic)?;
        Ok(persistent)
    }

    /// An ESYS_TR for the key at `handle`, made from a recorded public area instead of
    /// read from the TPM: no command is sent, and a session salted with it can only be
    /// completed by the TPM holding that key's private part.
    pub(super) fn recorded_key(
        &mut self,
        handle: u32,
        public_tpm2b: &[u8],
    ) -> Result<ESYS_TR, TpmError> {
        let bytes = serialized_key_resource(handle, public_tpm2b)?;
        self.deserialize(&bytes)
    }

    /// An ESYS_TR from its ESAPI serialization (systemd's `tpm2_srk`).
    pub(super) fn deserialize(&mut self, bytes: &[u8]) -> Result<ESYS_TR, TpmError> {
        let mut tr: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: bytes outlives the call; tr receives a handle owned by this context.
        let rc =
            unsafe { Esys_TR_Deserialize(self.ctx, bytes.as_ptr(), bytes.len() as u64, &mut tr) };
        check("TR_Deserialize", rc).map_err(|e| TpmError::Rejected {
            detail: format!("the recorded parent key cannot be read (0x{:x})", e.1),
        })?;
        Ok(tr)
    }

    /// Loads a sealed object under `parent` (which needs no authorization: a storage key).
    pub(super) fn load(
        &mut self,
        parent: ESYS_TR,
        object: &SealedObject,
    ) -> Result<ESYS_TR, TpmError> {
        let private = unmarshal_private(&object.private)?;
        let public = unmarshal_public(&object.public)?;
        let mut tr: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: all pointers are to live locals; tr receives a transient handle.
        let rc = unsafe {
            Esys_Load(
                self.ctx,
                parent,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &private,
                &public,
                &mut tr,
            )
        };
        check("Load", rc).map_err(|(op, rc)| match classify(rc) {
            RcKind::Integrity | RcKind::Value | RcKind::Handle => TpmError::Rejected {
                detail: format!("Load: 0x{rc:x}"),
            },
            _ => generic((op, rc)),
        })?;
        Ok(tr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_of_the_systemd_srk_vector() {
        // tokens-systemd.md §3.3: the name inside a tpm2_srk field, and its public area.
        let name = "000bf9b0b81ed46336e20f33f27195c23eb7033337945da10724316e1ec0d137ec27";
        let public = "005a0023000b0003047200000006008000430010000300100020\
                      5b1b7e472ce3c3b7476f46aea948f4a3aba993e4a174106fa59c630c0de0d89b\
                      0020cce62c2a6bc9672e4f3d3c9d74b743ba72905a2a7de711acaf2c39bff0a555f3";
        let public = hex::decode(public.replace(' ', "")).unwrap();
        assert_eq!(hex::encode(name_of(&public).unwrap()), name);
        assert!(PublicArea::parse(&public).unwrap().is_storage_key());
    }

    #[test]
    fn truncated_public_is_an_error() {
        assert!(PublicArea::parse(&[0, 4, 0, 0x23, 0, 0x0b]).is_err());
        assert!(name_of(&[]).is_err());
    }
}
