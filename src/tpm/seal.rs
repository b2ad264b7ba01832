//! Sealing a secret under the SRK to a policy (enrollment). Unsealing is the boot path's,
//! in tpm::esys.

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::structures::{
    Auth, Digest, KeyedHashScheme, Public, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
};

use super::error::{RcKind, TpmError, command_error, kind_of};
use super::policy::PolicyDigest;
use super::session::{self, Encrypt};
use super::srk::{public_from_tpm2b, public_to_tpm2b};
use crate::secret::Secret;

/// A sealed object as the TPM returned it: TPM2B_PRIVATE and TPM2B_PUBLIC wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
}

impl SealedObject {
    /// `TPM2B_PRIVATE ‖ TPM2B_PUBLIC`, the layout systemd uses for `tpm2-blob` too.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = self.private.clone();
        out.extend_from_slice(&self.public);
        out
    }

    pub fn from_blob(blob: &[u8]) -> Result<SealedObject, TpmError> {
        let (private, rest) = split_tpm2b(blob, "TPM2B_PRIVATE")?;
        let (public, rest) = split_tpm2b(rest, "TPM2B_PUBLIC")?;
        if !rest.is_empty() {
            return Err(TpmError::Invalid(format!(
                "sealed blob has {} unexpected trailing bytes",
                rest.len()
            )));
        }
        let obj = SealedObject {
            private: private.to_vec(),
            public: public.to_vec(),
        };
        obj.public_area()?;
        Ok(obj)
    }

    pub fn public_area(&self) -> Result<Public, TpmError> {
        let public = public_from_tpm2b(&self.public)?;
        if !matches!(public, Public::KeyedHash { .. }) {
            return Err(TpmError::Invalid(
                "sealed blob is not a sealed data object".into(),
            ));
        }
        Ok(public)
    }

    /// The authPolicy the TPM will enforce for this object.
    pub fn auth_policy(&self) -> Result<Vec<u8>, TpmError> {
        Ok(self.public_area()?.auth_policy().value().to_vec())
    }
}

fn split_tpm2b<'a>(buf: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), TpmError> {
    if buf.len() < 2 {
        return Err(TpmError::Invalid(format!(
            "sealed blob truncated before {what}"
        )));
    }
    let size = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if size == 0 || buf.len() < 2 + size {
        return Err(TpmError::Invalid(format!(
            "sealed blob truncated inside {what} ({} of {} bytes)",
            buf.len().saturating_sub(2),
            size
        )));
    }
    Ok(buf.split_at(2 + size))
}

/// Seals `secret` under `parent` so that only a session satisfying `policy` can unseal it.
/// With `auth` (the stretched PIN) the object is dictionary-attack protected; without, it is
/// noDA so failed unlocks at boot never lock the TPM out.
pub fn seal(
    ctx: &mut Context,
    parent: KeyHandle,
    secret: &Secret,
    policy: &PolicyDigest,
    auth: Option<&Secret>,
) -> Result<SealedObject, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(auth.is_none())
        .build()
        .map_err(|e| TpmError::Invalid(format!("object attributes: {e}")))?;
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_auth_policy(
            Digest::try_from(policy.to_vec()).map_err(|e| TpmError::Invalid(e.to_string()))?,
        )
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(|e| TpmError::Invalid(format!("sealed object template: {e}")))?;
    let data = SensitiveData::try_from(secret.expose().to_vec())
        .map_err(|e| TpmError::Invalid(format!("secret too long to seal: {e}")))?;
    let auth_value = auth
        .map(|a| Auth::try_from(a.expose().to_vec()))
        .transpose()
        .map_err(|e| TpmError::Invalid(format!("PIN auth value: {e}")))?;

    // The secret and the PIN travel in TPM2_Create's first parameter: encrypt it. A salted
    // session whose key the client derived differently from the TPM (tpm2-tss dropped
    // leading zeros of the ECDH secret: 1 session in 256) fails with an authorization
    // error that has no dictionary-attack effect (the SRK is noDA): try a new one.
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        let hmac = session::start(
            ctx,
            parent,
            SessionType::Hmac,
            Encrypt {
                command: true,
                response: false,
            },
        )?;
        let created = ctx.execute_with_session(Some(hmac), |c| {
            c.create(
                parent,
                template.clone(),
                auth_value.clone(),
                Some(data.clone()),
                None,
                None,
            )
        });
        session::flush(ctx, hmac);
        match created {
            Err(e) if kind_of(&e) == RcKind::AuthFail && attempt < 4 => continue,
            other => break other.map_err(|e| command_error("Create", e))?,
        }
    };

    let mut private = (created.out_private.len() as u16).to_be_bytes().to_vec();
    private.extend_from_slice(created.out_private.value());
    Ok(SealedObject {
        private,
        public: public_to_tpm2b(&created.out_public)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_parsing_rejects_truncation() {
        assert!(SealedObject::from_blob(&[]).is_err());
        assert!(SealedObject::from_blob(&[0, 4, 1, 2]).is_err());
        assert!(SealedObject::from_blob(&[0, 1, 9]).is_err());
    }
}
