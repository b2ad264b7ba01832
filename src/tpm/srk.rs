//! The storage root key at 0x81000001 (TCG EK/SRK Provisioning Guidance, template L-2:
//! ECC NIST P-256, AES-128-CFB, noDA). Like systemd, an object already at the handle is used
//! as it is, so machines provisioned by another tool (or Windows) keep their SRK.

use super::context::Tpm;
use super::error::TpmError;
use super::object::{PublicArea, name_of};

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

/// The storage key a token's parent must be, from trusted configuration (the initrd's,
/// passed by the integration scripts), never from the header: its handle, and its Name
/// when the image builder pinned it. Without a pinned Name the TPM's own key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedParent {
    pub handle: u32,
    pub name: Option<Vec<u8>>,
}

impl Default for ExpectedParent {
    fn default() -> ExpectedParent {
        ExpectedParent {
            handle: SRK_HANDLE,
            name: None,
        }
    }
}

impl Tpm {
    /// Checks a parent recorded in a header (its handle and TPM2B_PUBLIC) against the
    /// expected one, before any session is salted to it: a key of the attacker's choosing
    /// would let a bus observer attack the PIN offline, and make the right PIN fail. The
    /// TPM's Name is read once per run (ReadPublic) unless it was pinned.
    pub fn verify_parent(
        &mut self,
        handle: u32,
        public_tpm2b: &[u8],
        expected: &ExpectedParent,
    ) -> Result<(), TpmError> {
        if handle != expected.handle {
            return Err(TpmError::UntrustedParent {
                detail: format!(
                    "the token names storage key 0x{handle:08x}, this system uses 0x{:08x}",
                    expected.handle
                ),
            });
        }
        let recorded = name_of(public_tpm2b).map_err(|e| TpmError::UntrustedParent {
            detail: format!("the recorded storage key is unreadable ({e})"),
        })?;
        let actual = match &expected.name {
            Some(pinned) => pinned.clone(),
            None => self.persistent_name(handle)?,
        };
        if recorded != actual {
            return Err(TpmError::UntrustedParent {
                detail: format!(
                    "the token's storage key is not the key at 0x{handle:08x} {}",
                    if expected.name.is_some() {
                        "this initrd was built for"
                    } else {
                        "in this TPM"
                    }
                ),
            });
        }
        Ok(())
    }

    /// The Name of the object at a persistent handle, read once per context.
    pub fn persistent_name(&mut self, handle: u32) -> Result<Vec<u8>, TpmError> {
        if let Some((_, name)) = self.names.iter().find(|(h, _)| *h == handle) {
            return Ok(name.clone());
        }
        let Some(mut tr) = self.persistent(handle)? else {
            return Err(TpmError::UntrustedParent {
                detail: format!("this TPM has no key at 0x{handle:08x}"),
            });
        };
        // ESAPI checked the Name against the public area ReadPublic returned.
        let name = self.name(tr);
        self.close(&mut tr);
        let name = name?;
        self.names.push((handle, name.clone()));
        Ok(name)
    }
}
