//! TPM2_Import: taking in an object sealed offline (`duplicate`) under the storage key it
//! was sealed to. The result is an ordinary TPM2B_PRIVATE wrapped by that key, which Load
//! takes. sealroot imports on every unlock and writes nothing back (an unlock changes
//! nothing on disk): the cost is one command with one ECDH or RSA decryption in the TPM.

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, Esys_Import, TPM2B_DATA, TPM2B_PRIVATE,
    TPMT_SYM_DEF_OBJECT, Tss2_MU_TPM2B_PRIVATE_Marshal,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::seal::SealedObject;
use super::wire::{
    EsysBox, check, generic, marshal, unmarshal_encrypted_secret, unmarshal_private,
    unmarshal_public,
};

const TPM2_ALG_NULL: u16 = 0x0010;

impl Tpm {
    /// Imports an offline-sealed object under `parent` (already verified to be the key it
    /// was sealed to); returns the same object with a private part Load accepts.
    pub(super) fn import(
        &mut self,
        parent: ESYS_TR,
        object: &SealedObject,
    ) -> Result<SealedObject, TpmError> {
        let Some(seed) = &object.import_seed else {
            return Ok(object.clone());
        };
        let public = unmarshal_public(&object.public)?;
        let duplicate = unmarshal_private(&object.private)?;
        let seed = unmarshal_encrypted_secret(seed)?;
        // SAFETY: plain data; all zeros is an empty encryption key and, with the algorithm
        // set, a NULL inner wrapper.
        let (encryption_key, mut symmetric) = unsafe {
            (
                std::mem::zeroed::<TPM2B_DATA>(),
                std::mem::zeroed::<TPMT_SYM_DEF_OBJECT>(),
            )
        };
        symmetric.algorithm = TPM2_ALG_NULL;
        let mut out = EsysBox::<TPM2B_PRIVATE>::null();
        // SAFETY: all pointers are to live locals; out receives an ESAPI allocation freed by
        // its box. The storage key needs no authorization value: a password session.
        let rc = unsafe {
            Esys_Import(
                self.ctx,
                parent,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &encryption_key,
                &public,
                &duplicate,
                &seed,
                &symmetric,
                &mut out.0,
            )
        };
        check("Import", rc).map_err(|(op, rc)| match classify(rc) {
            // TPM_RC_INTEGRITY on the duplicate, TPM_RC_SIZE/VALUE/ECC_POINT on the seed:
            // another storage key's blob, or a corrupt one.
            RcKind::Integrity | RcKind::Value => TpmError::Rejected {
                detail: format!("Import: 0x{rc:x}"),
            },
            _ => generic((op, rc)),
        })?;
        let private = out
            .get()
            .ok_or_else(|| TpmError::Invalid("Import returned no object".into()))?;
        Ok(SealedObject {
            private: marshal(private, Tss2_MU_TPM2B_PRIVATE_Marshal, "TPM2B_PRIVATE")?,
            public: object.public.clone(),
            import_seed: None,
        })
    }
}
