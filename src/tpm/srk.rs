//! The storage root key at 0x81000001 (TCG EK/SRK Provisioning Guidance, template L-2:
//! ECC NIST P-256, AES-128-CFB, noDA). Like systemd, an object already at the handle is used
//! as it is, so machines provisioned by another tool (or Windows) keep their SRK.

use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EccPoint, Public, PublicBuffer, PublicEccParametersBuilder, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::error::{RcKind, TpmError, command_error, kind_of};

pub const SRK_HANDLE: u32 = 0x8100_0001;

pub struct Srk {
    pub handle: KeyHandle,
    pub public: Public,
}

impl Srk {
    /// TPM2B_PUBLIC bytes, as stored in tokens.
    pub fn public_bytes(&self) -> Result<Vec<u8>, TpmError> {
        public_to_tpm2b(&self.public)
    }
}

pub fn template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(|e| TpmError::Invalid(format!("SRK attributes: {e}")))?;
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .map_err(|e| TpmError::Invalid(format!("SRK parameters: {e}")))?;
    tss_esapi::structures::PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| TpmError::Invalid(format!("SRK template: {e}")))
}

fn persistent_handle() -> Result<PersistentTpmHandle, TpmError> {
    PersistentTpmHandle::new(SRK_HANDLE).map_err(|e| TpmError::Invalid(e.to_string()))
}

/// Enrollment: the SRK at 0x81000001, created and persisted first if the handle is empty.
pub fn get_or_create(ctx: &mut Context) -> Result<Srk, TpmError> {
    match ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent_handle()?)) {
        Ok(obj) => {
            let handle = KeyHandle::from(obj);
            let (public, _, _) = ctx
                .read_public(handle)
                .map_err(|e| command_error("ReadPublic(SRK)", e))?;
            if !public.object_attributes().restricted() || !public.object_attributes().decrypt() {
                return Err(TpmError::Invalid(format!(
                    "the object at 0x{SRK_HANDLE:08x} is not a storage key; evict it or provision an SRK there"
                )));
            }
            Ok(Srk { handle, public })
        }
        Err(e) if kind_of(&e) == RcKind::Handle => create(ctx),
        Err(e) => Err(command_error("ReadPublic(SRK)", e)),
    }
}

fn create(ctx: &mut Context) -> Result<Srk, TpmError> {
    let template = template()?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(|e| match kind_of(&e) {
            RcKind::AuthFail => TpmError::Invalid(
                "CreatePrimary refused: the owner hierarchy has a password; provision an SRK at 0x81000001 first".into(),
            ),
            _ => command_error("CreatePrimary(SRK)", e),
        })?;
    let transient = created.key_handle;
    let target = Persistent::Persistent(persistent_handle()?);
    let persisted = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.evict_control(Provision::Owner, ObjectHandle::from(transient), target)
    });
    // The transient copy is flushed whatever happened: the persistent one is what we use.
    let flushed = ctx.flush_context(ObjectHandle::from(transient));
    let persisted = persisted.map_err(|e| command_error("EvictControl(SRK)", e))?;
    flushed.map_err(|e| command_error("FlushContext", e))?;
    Ok(Srk {
        handle: KeyHandle::from(persisted),
        public: created.out_public,
    })
}

/// TPM Name of an object: nameAlg ‖ H_nameAlg(TPMT_PUBLIC).
pub fn name_of(public: &Public) -> Result<Vec<u8>, TpmError> {
    let bytes = public
        .marshall()
        .map_err(|e| TpmError::Invalid(format!("marshal public: {e}")))?;
    let (alg, digest): (u16, Vec<u8>) = match public.name_hashing_algorithm() {
        HashingAlgorithm::Sha1 => (0x0004, sha1::Sha1::digest(&bytes).to_vec()),
        HashingAlgorithm::Sha256 => (0x000B, sha2::Sha256::digest(&bytes).to_vec()),
        HashingAlgorithm::Sha384 => (0x000C, sha2::Sha384::digest(&bytes).to_vec()),
        HashingAlgorithm::Sha512 => (0x000D, sha2::Sha512::digest(&bytes).to_vec()),
        other => {
            return Err(TpmError::Invalid(format!(
                "unsupported name algorithm {other:?}"
            )));
        }
    };
    let mut name = alg.to_be_bytes().to_vec();
    name.extend_from_slice(&digest);
    Ok(name)
}

pub fn public_to_tpm2b(public: &Public) -> Result<Vec<u8>, TpmError> {
    PublicBuffer::try_from(public.clone())
        .and_then(|b| b.marshall())
        .map_err(|e| TpmError::Invalid(format!("marshal public: {e}")))
}

pub fn public_from_tpm2b(bytes: &[u8]) -> Result<Public, TpmError> {
    PublicBuffer::unmarshall(bytes)
        .and_then(Public::try_from)
        .map_err(|e| TpmError::Invalid(format!("bad TPM2B_PUBLIC: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_bytes_match_tcg_l2() {
        // tokens-systemd.md §3.2: the SRK template systemd and the TCG guidance use.
        let bytes = template().unwrap().marshall().unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0023000b00030472000000060080004300100003001000000000");
    }
}
