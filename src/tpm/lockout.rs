//! The dictionary-attack state (TPM2_GetCapability, TPM_PT_PERMANENT): checked before a
//! PIN is asked for, so nobody types a PIN into a TPM that would refuse it anyway.

use tss_esapi_sys::{ESYS_TR_NONE, Esys_GetCapability, TPMS_CAPABILITY_DATA};

use super::context::Tpm;
use super::error::TpmError;
use super::wire::{EsysBox, check, generic};

const TPM2_CAP_TPM_PROPERTIES: u32 = 0x0000_0006;
const TPM2_PT_PERMANENT: u32 = 0x0000_0200;
/// TPMA_PERMANENT.inLockout.
const IN_LOCKOUT: u32 = 1 << 9;

impl Tpm {
    /// Whether the TPM refuses dictionary-attack-protected objects right now.
    pub fn in_lockout(&mut self) -> Result<bool, TpmError> {
        let mut more = 0u8;
        let mut data = EsysBox::<TPMS_CAPABILITY_DATA>::null();
        // SAFETY: outputs are live locals; data is freed by its box.
        let rc = unsafe {
            Esys_GetCapability(
                self.ctx,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                TPM2_CAP_TPM_PROPERTIES,
                TPM2_PT_PERMANENT,
                1,
                &mut more,
                &mut data.0,
            )
        };
        check("GetCapability", rc).map_err(generic)?;
        let Some(d) = data.get() else {
            return Err(TpmError::Invalid("GetCapability returned nothing".into()));
        };
        if d.capability != TPM2_CAP_TPM_PROPERTIES {
            return Err(TpmError::Invalid(
                "GetCapability answered another capability".into(),
            ));
        }
        // SAFETY: the union member named by `capability`.
        let props = unsafe { &d.data.tpmProperties };
        let permanent = props.tpmProperty[..(props.count as usize).min(props.tpmProperty.len())]
            .iter()
            .find(|p| p.property == TPM2_PT_PERMANENT)
            .map(|p| p.value)
            .ok_or_else(|| TpmError::Invalid("the TPM did not report TPM_PT_PERMANENT".into()))?;
        Ok(permanent & IN_LOCKOUT != 0)
    }
}
