//! Sealed data objects: the blob format tokens store, and sealing a secret under the SRK to
//! a policy (TPM2_Create). Unsealing is in `unseal`.

use std::ptr;

use tss_esapi_sys::{
    ESYS_TR, ESYS_TR_NONE, Esys_Create, TPM2B_DATA, TPM2B_PRIVATE, TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, Tss2_MU_TPM2B_PRIVATE_Marshal,
    Tss2_MU_TPM2B_PUBLIC_Marshal, Tss2_MU_TPMT_PUBLIC_Unmarshal,
};
use zeroize::Zeroize;

use super::context::Tpm;
use super::error::{RcKind, TpmError, classify};
use super::object::{PublicArea, TPM2_ALG_KEYEDHASH};
use super::pcr::PcrBank;
use super::policy::PolicyDigest;
use super::session::{SessionKind, SessionUse};
use super::srk::Srk;
use super::wire::{EsysBox, check, generic, marshal, unmarshal};
use crate::secret::Secret;

const TPMA_OBJECT_FIXEDTPM: u32 = 0x0000_0002;
const TPMA_OBJECT_FIXEDPARENT: u32 = 0x0000_0010;
pub(super) const TPMA_OBJECT_NODA: u32 = 0x0000_0400;
const TPM2_ALG_NULL: u16 = 0x0010;
/// Salted sessions whose key the client derived differently from the TPM are retried.
const SESSION_ATTEMPTS: usize = 4;

/// A sealed object: TPM2B_PRIVATE and TPM2B_PUBLIC wire bytes, as TPM2_Create returned
/// them, or as sealed offline (`duplicate`): then `private` is the duplicate, which the TPM
/// must first take in with TPM2_Import, and `import_seed` the TPM2B_ENCRYPTED_SECRET that
/// keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
    pub import_seed: Option<Vec<u8>>,
}

impl SealedObject {
    /// `TPM2B_PRIVATE ‖ TPM2B_PUBLIC [‖ TPM2B_ENCRYPTED_SECRET]`, the layout of systemd's
    /// `tpm2-blob` (the seed only on objects to import).
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = self.private.clone();
        out.extend_from_slice(&self.public);
        if let Some(seed) = &self.import_seed {
            out.extend_from_slice(seed);
        }
        out
    }

    pub fn from_blob(blob: &[u8]) -> Result<SealedObject, TpmError> {
        let (private, rest) = split_tpm2b(blob, "TPM2B_PRIVATE")?;
        let (public, rest) = split_tpm2b(rest, "TPM2B_PUBLIC")?;
        let import_seed = if rest.is_empty() {
            None
        } else {
            let (seed, rest) = split_tpm2b(rest, "the import seed (TPM2B_ENCRYPTED_SECRET)")?;
            if !rest.is_empty() {
                return Err(TpmError::Invalid(format!(
                    "sealed blob has {} unexpected trailing bytes",
                    rest.len()
                )));
            }
            Some(seed.to_vec())
        };
        let obj = SealedObject {
            private: private.to_vec(),
            public: public.to_vec(),
            import_seed,
        };
        obj.public_area()?;
        Ok(obj)
    }

    /// Sealed offline: the TPM must import it before loading it.
    pub fn needs_import(&self) -> bool {
        self.import_seed.is_some()
    }

    pub fn public_area(&self) -> Result<PublicArea, TpmError> {
        let public = PublicArea::parse(&self.public)?;
        if public.kind != TPM2_ALG_KEYEDHASH {
            return Err(TpmError::Invalid(
                "sealed blob is not a sealed data object".into(),
            ));
        }
        Ok(public)
    }

    /// The authPolicy the TPM will enforce for this object.
    pub fn auth_policy(&self) -> Result<Vec<u8>, TpmError> {
        Ok(self.public_area()?.auth_policy)
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

/// The TPMT_PUBLIC of a sealed data object: SHA-256 names, bound to this TPM and parent,
/// usable only through `policy`; noDA unless a PIN protects it.
fn template(policy: &PolicyDigest, dictionary_attack_protected: bool) -> Vec<u8> {
    let mut attributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    if !dictionary_attack_protected {
        attributes |= TPMA_OBJECT_NODA;
    }
    // The TPM fills in `unique` at Create.
    sealed_object_template(attributes, policy, &[])
}

/// TPMT_PUBLIC of a sealed data object with SHA-256 names: no userWithAuth (only the policy
/// authorizes), no scheme, the given attributes and `unique`.
pub(super) fn sealed_object_template(attributes: u32, policy: &[u8], unique: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(48 + unique.len());
    t.extend_from_slice(&TPM2_ALG_KEYEDHASH.to_be_bytes());
    t.extend_from_slice(&PcrBank::Sha256.alg_id().to_be_bytes());
    t.extend_from_slice(&attributes.to_be_bytes());
    t.extend_from_slice(&(policy.len() as u16).to_be_bytes());
    t.extend_from_slice(policy);
    t.extend_from_slice(&TPM2_ALG_NULL.to_be_bytes()); // keyedHash scheme
    t.extend_from_slice(&(unique.len() as u16).to_be_bytes());
    t.extend_from_slice(unique);
    t
}

impl Tpm {
    /// Seals `secret` under the storage key `parent` so that only a session satisfying
    /// `policy` can unseal it. With `auth` (the stretched PIN) the object is
    /// dictionary-attack protected; without, it is noDA so failed unlocks at boot never
    /// lock the TPM out.
    pub fn seal(
        &mut self,
        parent: &Srk,
        secret: &Secret,
        policy: &PolicyDigest,
        auth: Option<&Secret>,
    ) -> Result<SealedObject, TpmError> {
        let mut tr = self.recorded_key(parent.handle, &parent.public)?;
        let result = self.seal_under(tr, secret, policy, auth);
        self.close(&mut tr);
        result
    }

    fn seal_under(
        &mut self,
        parent: ESYS_TR,
        secret: &Secret,
        policy: &PolicyDigest,
        auth: Option<&Secret>,
    ) -> Result<SealedObject, TpmError> {
        // SAFETY: plain data; all zeros is valid.
        let mut public: TPM2B_PUBLIC = unsafe { std::mem::zeroed() };
        public.publicArea = unmarshal(
            &template(policy, auth.is_some()),
            Tss2_MU_TPMT_PUBLIC_Unmarshal,
            "TPMT_PUBLIC",
        )?;
        // SAFETY: plain data; all zeros is valid.
        let mut sensitive: TPM2B_SENSITIVE_CREATE = unsafe { std::mem::zeroed() };
        let data = &mut sensitive.sensitive.data;
        if secret.len() > data.buffer.len() {
            return Err(TpmError::Invalid("secret too long to seal".into()));
        }
        data.size = secret.len() as u16;
        data.buffer[..secret.len()].copy_from_slice(secret.expose());
        if let Some(auth) = auth {
            let user = &mut sensitive.sensitive.userAuth;
            if auth.len() > user.buffer.len() {
                sensitive.sensitive.data.buffer.zeroize();
                return Err(TpmError::Invalid("PIN auth value too long".into()));
            }
            user.size = auth.len() as u16;
            user.buffer[..auth.len()].copy_from_slice(auth.expose());
        }
        let result = self.create_in_sessions(parent, &sensitive, &public);
        sensitive.sensitive.data.buffer.zeroize();
        sensitive.sensitive.userAuth.buffer.zeroize();
        result
    }

    /// The secret and the PIN travel in TPM2_Create's first parameter: a salted session
    /// encrypts it. A session whose key the client derived differently from the TPM
    /// (tpm2-tss dropped leading zeros of the ECDH secret: 1 session in 256) fails with an
    /// authorization error that has no dictionary-attack effect (the SRK is noDA): retry.
    fn create_in_sessions(
        &mut self,
        parent: ESYS_TR,
        sensitive: &TPM2B_SENSITIVE_CREATE,
        public: &TPM2B_PUBLIC,
    ) -> Result<SealedObject, TpmError> {
        let usage = SessionUse {
            encrypt_command: true,
            encrypt_response: false,
            keep: false,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = self.start_session(parent, SessionKind::Hmac, PcrBank::Sha256, usage)?;
            // SAFETY: plain data; all zeros is valid.
            let (outside, pcrs) = unsafe {
                (
                    std::mem::zeroed::<TPM2B_DATA>(),
                    std::mem::zeroed::<TPML_PCR_SELECTION>(),
                )
            };
            let mut out_private = EsysBox::<TPM2B_PRIVATE>::null();
            let mut out_public = EsysBox::<TPM2B_PUBLIC>::null();
            // SAFETY: pointers to live locals; outputs are freed by their boxes.
            let rc = unsafe {
                Esys_Create(
                    self.ctx,
                    parent,
                    session,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    sensitive,
                    public,
                    &outside,
                    &pcrs,
                    &mut out_private.0,
                    &mut out_public.0,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            match check("Create", rc) {
                // Create ended the session (continueSession clear).
                Ok(()) => {
                    let mut ended = session;
                    self.close(&mut ended);
                }
                Err(e) => {
                    self.flush(session);
                    if classify(e.1) == RcKind::AuthFail && attempt < SESSION_ATTEMPTS {
                        continue;
                    }
                    return Err(generic(e));
                }
            }
            let (Some(private), Some(public)) = (out_private.get(), out_public.get()) else {
                return Err(TpmError::Invalid("Create returned no object".into()));
            };
            return Ok(SealedObject {
                private: marshal(private, Tss2_MU_TPM2B_PRIVATE_Marshal, "TPM2B_PRIVATE")?,
                public: marshal(public, Tss2_MU_TPM2B_PUBLIC_Marshal, "TPM2B_PUBLIC")?,
                import_seed: None,
            });
        }
    }
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

    #[test]
    fn template_is_a_sealed_data_object_with_the_policy() {
        let t = template(&[7u8; 32], false);
        let mut tpm2b = (t.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&t);
        let area = PublicArea::parse(&tpm2b).unwrap();
        assert_eq!(area.kind, TPM2_ALG_KEYEDHASH);
        assert_eq!(area.attributes, 0x412);
        assert_eq!(area.auth_policy, vec![7u8; 32]);
        assert_eq!(template(&[0u8; 32], true)[4..8], 0x12u32.to_be_bytes());
    }
}
