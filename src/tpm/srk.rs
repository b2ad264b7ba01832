//! The storage root key at 0x81000001 (TCG EK/SRK Provisioning Guidance, template L-2:
//! ECC NIST P-256, AES-128-CFB, noDA). Like systemd, an object already at the handle is used
//! as it is, so machines provisioned by another tool (or Windows) keep their SRK.

use super::context::Tpm;
use super::error::TpmError;
use super::object::PublicArea;

pub const SRK_HANDLE: u32 = 0x8100_0001;

/// TPMT_PUBLIC of the TCG L-2 template (tokens-systemd.md §3.2): ECC, SHA-256,
/// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt,
/// AES-128-CFB, NIST P-256, empty unique.
pub const TEMPLATE: [u8; 26] = [
    0x00, 0x23, 0x00, 0x0b, 0x00, 0x03, 0x04, 0x72, 0x00, 0x00, 0x00, 0x06, 0x00, 0x80, 0x00, 0x43,
    0x00, 0x10, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,
];

/// A storage key at a persistent handle and its TPM2B_PUBLIC, as tokens record them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srk {
    pub handle: u32,
    pub public: Vec<u8>,
}

impl Tpm {
    /// Enrollment: the SRK at 0x81000001, created and persisted first if the handle is
    /// empty. Costs ReadPublic, or CreatePrimary + EvictControl + FlushContext once.
    pub fn srk(&mut self) -> Result<Srk, TpmError> {
        let Some(mut tr) = self.persistent(SRK_HANDLE)? else {
            return self.create_srk();
        };
        let public = self.read_public(tr);
        self.close(&mut tr);
        let public = public?;
        if !PublicArea::parse(&public)?.is_storage_key() {
            return Err(TpmError::Invalid(format!(
                "the object at 0x{SRK_HANDLE:08x} is not a storage key; evict it or provision an SRK there"
            )));
        }
        Ok(Srk {
            handle: SRK_HANDLE,
            public,
        })
    }

    fn create_srk(&mut self) -> Result<Srk, TpmError> {
        let (transient, public) = self.create_primary(&TEMPLATE)?;
        let persisted = self.evict_control(transient, SRK_HANDLE);
        // The transient copy is flushed whatever happened: the persistent one is used.
        self.flush(transient);
        let mut persistent = persisted?;
        self.close(&mut persistent);
        Ok(Srk {
            handle: SRK_HANDLE,
            public,
        })
    }
}
