//! NV counters for revoking approvals: an approval asserts PolicyNV(counter == N); bumping
//! the counter (`sealroot revoke`) makes every approval signed for N useless. A counter
//! never goes back, and a counter defined anew starts above every value any counter of
//! this TPM has held (TPM 2.0 Part 1 §37.2.3), so undefining and redefining it does not
//! revive old approvals either.

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, ESYS_TR_RH_OWNER, Esys_NV_DefineSpace,
    Esys_NV_Increment, Esys_NV_Read, Esys_NV_ReadPublic, Esys_PolicyNV, TPM2B_AUTH,
    TPM2B_MAX_NV_BUFFER, TPM2B_NAME, TPM2B_NV_PUBLIC, TPM2B_OPERAND,
};

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::wire::{EsysBox, check, generic};

/// Where sealroot looks for a free index: owner-defined NV space (TCG NV registry:
/// 0x01000000-0x013FFFFF), "SR" in the middle bytes.
const FIRST_INDEX: u32 = 0x0153_5200;
const INDEXES: u32 = 64;
const TPM2_ALG_SHA256: u16 = 0x000b;
/// TPM_NT_COUNTER, OWNERWRITE, OWNERREAD, AUTHREAD (PolicyNV reads with the empty
/// authValue), NO_DA.
const ATTRIBUTES: u32 = (0x1 << 4) | 0x0000_0002 | 0x0002_0000 | 0x0004_0000 | 0x0200_0000;
const TPM2_EO_EQ: u16 = 0x0000;

/// A counter as a token records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvCounter {
    pub index: u32,
    /// Its Name (after the first increment, with TPMA_NV_WRITTEN set).
    pub name: Vec<u8>,
    pub value: u64,
}

impl Tpm {
    /// Defines a new counter in the first free index from FIRST_INDEX, increments it once
    /// (a counter is unreadable before), and returns it. Needs the owner hierarchy's empty
    /// authorization, as enroll's SRK does.
    pub fn define_counter(&mut self) -> Result<NvCounter, TpmError> {
        for index in FIRST_INDEX..FIRST_INDEX + INDEXES {
            if let Some(mut tr) = self.nv_handle(index)? {
                self.close(&mut tr);
                continue;
            }
            // SAFETY: plain data; all zeros is valid.
            let mut public: TPM2B_NV_PUBLIC = unsafe { std::mem::zeroed() };
            public.nvPublic.nvIndex = index;
            public.nvPublic.nameAlg = TPM2_ALG_SHA256;
            public.nvPublic.attributes = ATTRIBUTES;
            public.nvPublic.dataSize = 8;
            // SAFETY: plain data; the empty authValue.
            let auth: TPM2B_AUTH = unsafe { std::mem::zeroed() };
            let mut tr: ESYS_TR = ESYS_TR_NONE;
            // SAFETY: pointers to live locals; tr receives the new index's handle.
            let rc = unsafe {
                Esys_NV_DefineSpace(
                    self.ctx,
                    ESYS_TR_RH_OWNER,
                    ESYS_TR_PASSWORD,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    &auth,
                    &public,
                    &mut tr,
                )
            };
            check("NV_DefineSpace", rc).map_err(generic)?;
            let result = self.increment(tr).and_then(|_| self.counter_of(tr, index));
            self.close(&mut tr);
            return result;
        }
        Err(TpmError::Invalid(format!(
            "no free NV index in 0x{FIRST_INDEX:08x}-0x{:08x}",
            FIRST_INDEX + INDEXES - 1
        )))
    }

    /// `sealroot revoke`: counter + 1; returns it as it is now.
    pub fn bump_counter(&mut self, index: u32) -> Result<NvCounter, TpmError> {
        let mut tr = self.nv_handle(index)?.ok_or_else(|| TpmError::Invalid(format!(
            "this TPM has no NV counter at 0x{index:08x}: the token was enrolled on another TPM, or the index was removed"
        )))?;
        let result = self.increment(tr).and_then(|_| self.counter_of(tr, index));
        self.close(&mut tr);
        result
    }

    /// PolicyNV(counter == value) in a policy session: what an approval asserts.
    pub(super) fn policy_nv(
        &mut self,
        session: ESYS_TR,
        index: u32,
        value: u64,
    ) -> Result<(), TpmError> {
        let mut tr = self.nv_handle(index)?.ok_or_else(|| TpmError::PolicyMismatch {
            detail: format!(
                "the approval's revocation counter 0x{index:08x} is not in this TPM; use `sealroot recover`"
            ),
        })?;
        // SAFETY: plain data.
        let mut operand: TPM2B_OPERAND = unsafe { std::mem::zeroed() };
        operand.size = 8;
        operand.buffer[..8].copy_from_slice(&value.to_be_bytes());
        // SAFETY: pointers to live locals; the index authorizes its own read (AUTHREAD).
        let rc = unsafe {
            Esys_PolicyNV(
                self.ctx,
                tr,
                tr,
                session,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &operand,
                0,
                TPM2_EO_EQ,
            )
        };
        self.close(&mut tr);
        check("PolicyNV", rc).map_err(|e| match classify(e.1) {
            RcKind::PolicyFail | RcKind::Value | RcKind::Other => TpmError::PolicyMismatch {
                detail: format!(
                    "the approval was revoked (counter 0x{index:08x} is past {value}); approve again (`sealroot approve`), or use `sealroot recover`"
                ),
            },
            _ => generic(e),
        })
    }

    fn increment(&mut self, tr: ESYS_TR) -> Result<(), TpmError> {
        // SAFETY: handles are live.
        let rc = unsafe {
            Esys_NV_Increment(
                self.ctx,
                ESYS_TR_RH_OWNER,
                tr,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
            )
        };
        check("NV_Increment", rc).map_err(generic)
    }

    fn counter_of(&mut self, tr: ESYS_TR, index: u32) -> Result<NvCounter, TpmError> {
        let mut data = EsysBox::<TPM2B_MAX_NV_BUFFER>::null();
        // SAFETY: data receives an ESAPI allocation, freed by its box.
        let rc = unsafe {
            Esys_NV_Read(
                self.ctx,
                tr,
                tr,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                8,
                0,
                &mut data.0,
            )
        };
        check("NV_Read", rc).map_err(generic)?;
        let value = data
            .get()
            .filter(|d| d.size == 8)
            .map(|d| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&d.buffer[..8]);
                u64::from_be_bytes(b)
            })
            .ok_or_else(|| TpmError::Invalid("NV_Read returned no counter".into()))?;
        let mut public = EsysBox::<TPM2B_NV_PUBLIC>::null();
        let mut name = EsysBox::<TPM2B_NAME>::null();
        // SAFETY: outputs receive ESAPI allocations, freed by their boxes.
        let rc = unsafe {
            Esys_NV_ReadPublic(
                self.ctx,
                tr,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &mut public.0,
                &mut name.0,
            )
        };
        check("NV_ReadPublic", rc).map_err(generic)?;
        let name = name
            .get()
            .map(|n| n.name[..usize::from(n.size).min(n.name.len())].to_vec())
            .ok_or_else(|| TpmError::Invalid("NV_ReadPublic returned no Name".into()))?;
        Ok(NvCounter { index, name, value })
    }

    /// An ESYS_TR for an NV index, None when the TPM has none there (NV_ReadPublic).
    fn nv_handle(&mut self, index: u32) -> Result<Option<ESYS_TR>, TpmError> {
        self.persistent(index)
    }
}
