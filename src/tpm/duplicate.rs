//! Sealing offline: a sealed data object built in software for a TPM that is not here,
//! known only by its storage key's TPM2B_PUBLIC. The result is a duplication blob (TPM
//! Part 1 §23.3, "Protected Storage Hierarchy": outer wrapper only) that only the holder of
//! that storage key can take in with TPM2_Import — the same construction as systemd's
//! `--tpm2-device-key`, Ubuntu's secboot and `tpm2_duplicate`. Nothing here touches a TPM.
//!
//! The seed that keys the wrapper is encrypted to the storage key: RSA-OAEP for RSA keys,
//! one-pass ECDH (KDFe) for ECC keys. Only SHA-256 storage keys with AES-CFB (the TCG SRK
//! templates) are accepted; P-256 for ECC.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::error::TpmError;
use super::object::{TPM2_ALG_ECC, TPM2_ALG_KEYEDHASH, TPM2_ALG_RSA, name_of_template};
use super::policy::PolicyDigest;
use super::seal::{SealedObject, TPMA_OBJECT_NODA, sealed_object_template};
use super::wire::unmarshal_public;
use crate::secret::Secret;

const TPM2_ALG_SHA256: u16 = 0x000b;
const TPMA_OBJECT_USERWITHAUTH: u32 = 0x0000_0040;
const TPM2_ALG_AES: u16 = 0x0006;
const TPM2_ALG_CFB: u16 = 0x0043;
const TPM2_ECC_NIST_P256: u16 = 0x0003;
const SHA256_LEN: usize = 32;
/// 2048 bits: the smallest RSA storage key sealed to offline.
const RSA_MIN_BYTES: usize = 256;
/// Labels carry their terminating NUL (Part 1 §11.4.10.4); KDFa/KDFe add it themselves.
const LABEL_DUPLICATE: &[u8] = b"DUPLICATE";
const LABEL_STORAGE: &[u8] = b"STORAGE";
const LABEL_INTEGRITY: &[u8] = b"INTEGRITY";

/// What of a storage key's public area sealing to it needs.
pub struct StorageKey {
    /// AES key size of the key's symmetric scheme, in bits.
    aes_bits: usize,
    kind: KeyKind,
}

enum KeyKind {
    Rsa(RsaPublicKey),
    /// The public point, and its x coordinate exactly as in the public area (KDFe's partyV).
    EccP256 {
        point: p256::PublicKey,
        x: Vec<u8>,
    },
}

fn unsupported(what: String) -> TpmError {
    TpmError::Invalid(format!(
        "{what}: sealroot seals offline only to storage keys made from the TCG SRK templates (RSA or ECC NIST P-256, SHA-256, AES-CFB)"
    ))
}

impl StorageKey {
    /// A TPM2B_PUBLIC as `sealroot srk-public`, `tpm2_readpublic -o` and
    /// `systemd-analyze srk` write it.
    pub fn parse(tpm2b: &[u8]) -> Result<StorageKey, TpmError> {
        let public = unmarshal_public(tpm2b)
            .map_err(|_| {
                TpmError::Invalid(
                    "not a TPM2B_PUBLIC (as `sealroot srk-public` or `tpm2_readpublic -o` write)"
                        .into(),
                )
            })?
            .publicArea;
        if public.nameAlg != TPM2_ALG_SHA256 {
            return Err(unsupported(format!(
                "the storage key's name algorithm is 0x{:04x}",
                public.nameAlg
            )));
        }
        let area = super::object::PublicArea::parse(tpm2b)?;
        if !area.is_storage_key() {
            return Err(TpmError::Invalid(
                "the public area is not a storage key (restricted decryption key)".into(),
            ));
        }
        // An endorsement key is a storage key too, but only usable through a policy
        // (PolicySecret): it is not what sits at the SRK handle.
        if area.attributes & TPMA_OBJECT_USERWITHAUTH == 0 {
            return Err(TpmError::Invalid(
                "the key needs a policy to be used (an endorsement key?): give the storage root key's public area (`sealroot srk-public`)".into(),
            ));
        }
        // SAFETY: the union member read is the one `type_` says is there.
        let (symmetric, kind) = unsafe {
            match public.type_ {
                TPM2_ALG_RSA => {
                    let rsa = &public.parameters.rsaDetail;
                    let n = &public.unique.rsa;
                    let n = &n.buffer[..usize::from(n.size).min(n.buffer.len())];
                    // 0 stands for the default exponent.
                    let e = if rsa.exponent == 0 {
                        65537
                    } else {
                        rsa.exponent
                    };
                    let key = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from(e))
                        .map_err(|e| {
                            TpmError::Invalid(format!("the RSA storage key is unusable: {e}"))
                        })?;
                    // The TCG templates' RSA keys have 2048 bits; a smaller modulus would
                    // be a weak wrapper (and below 784 bits RSA-OAEP cannot carry the seed:
                    // found by fuzzing, fuzz/regressions/tpm_public).
                    if key.size() < RSA_MIN_BYTES {
                        return Err(unsupported(format!(
                            "the RSA key has {} bits",
                            key.n().bits()
                        )));
                    }
                    (rsa.symmetric, KeyKind::Rsa(key))
                }
                TPM2_ALG_ECC => {
                    let ecc = &public.parameters.eccDetail;
                    if ecc.curveID != TPM2_ECC_NIST_P256 {
                        return Err(unsupported(format!(
                            "the ECC curve is 0x{:04x}",
                            ecc.curveID
                        )));
                    }
                    let point = &public.unique.ecc;
                    let x = &point.x.buffer[..usize::from(point.x.size).min(point.x.buffer.len())];
                    let y = &point.y.buffer[..usize::from(point.y.size).min(point.y.buffer.len())];
                    let (px, py) = (left_pad(x, 32)?, left_pad(y, 32)?);
                    let encoded = p256::EncodedPoint::from_affine_coordinates(
                        px.as_slice().into(),
                        py.as_slice().into(),
                        false,
                    );
                    let key =
                        p256::PublicKey::from_sec1_bytes(encoded.as_bytes()).map_err(|_| {
                            TpmError::Invalid("the ECC storage key is not a point on P-256".into())
                        })?;
                    (
                        ecc.symmetric,
                        KeyKind::EccP256 {
                            point: key,
                            x: x.to_vec(),
                        },
                    )
                }
                other => return Err(unsupported(format!("the key type is 0x{other:04x}"))),
            }
        };
        // SAFETY: as above, for the symmetric scheme's unions.
        let (bits, mode) = unsafe { (symmetric.keyBits.aes, symmetric.mode.aes) };
        if symmetric.algorithm != TPM2_ALG_AES || mode != TPM2_ALG_CFB || !matches!(bits, 128 | 256)
        {
            return Err(unsupported(format!(
                "the symmetric scheme is 0x{:04x}/{bits}/0x{mode:04x}",
                symmetric.algorithm
            )));
        }
        Ok(StorageKey {
            aes_bits: usize::from(bits),
            kind,
        })
    }

    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa(_) => "RSA",
            KeyKind::EccP256 { .. } => "ECC NIST P-256",
        }
    }

    /// A fresh seed and its encryption to this key (TPM2B_ENCRYPTED_SECRET's buffer).
    fn encrypt_seed(&self) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), TpmError> {
        match &self.kind {
            KeyKind::Rsa(key) => {
                let seed = Zeroizing::new(random(SHA256_LEN)?);
                // The label is "DUPLICATE" with its NUL.
                let padding = Oaep::new_with_label::<Sha256, _>("DUPLICATE\0");
                let encrypted = key
                    .encrypt(&mut OsRng, padding, &seed)
                    .map_err(|e| TpmError::Invalid(format!("RSA-OAEP of the seed failed: {e}")))?;
                Ok((seed, encrypted))
            }
            KeyKind::EccP256 { point, x } => {
                let ephemeral = p256::NonZeroScalar::random(&mut OsRng);
                ecc_seed(&ephemeral, point, x)
            }
        }
    }
}

/// One-pass ECDH (Part 1 §C.6.1): the seed is KDFe of the shared x coordinate with the
/// ephemeral and static x coordinates; the TPM gets the ephemeral point.
fn ecc_seed(
    ephemeral: &p256::NonZeroScalar,
    point: &p256::PublicKey,
    x: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), TpmError> {
    let shared = p256::ecdh::diffie_hellman(ephemeral, point.as_affine());
    let ours = p256::PublicKey::from_secret_scalar(ephemeral).to_encoded_point(false);
    let (ex, ey) = match (ours.x(), ours.y()) {
        (Some(ex), Some(ey)) => (ex.to_vec(), ey.to_vec()),
        _ => return Err(TpmError::Invalid("ECDH produced no point".into())),
    };
    let seed = kdfe(
        shared.raw_secret_bytes(),
        LABEL_DUPLICATE,
        &ex,
        x,
        SHA256_LEN * 8,
    );
    // TPMS_ECC_POINT: TPM2B x ‖ TPM2B y.
    let mut encrypted = tpm2b(&ex);
    encrypted.extend_from_slice(&tpm2b(&ey));
    Ok((seed, encrypted))
}

/// Builds a sealed data object of `secret` for the TPM holding `parent` (TPM2B_PUBLIC),
/// usable only through `policy`: DA-protected with `auth` (the stretched PIN), noDA without.
/// The object's seedValue is random and independent of the wrapping seed.
pub fn seal_offline(
    parent: &StorageKey,
    secret: &Secret,
    policy: &PolicyDigest,
    auth: Option<&Secret>,
) -> Result<SealedObject, TpmError> {
    if secret.len() > 128 {
        return Err(TpmError::Invalid("secret too long to seal".into()));
    }
    let seed_value = Zeroizing::new(random(SHA256_LEN)?);
    let mut unique_input = Zeroizing::new(seed_value.to_vec());
    unique_input.extend_from_slice(secret.expose());
    let unique = Sha256::digest(unique_input.as_slice());
    // fixedTPM and fixedParent would make TPM2_Import refuse the object.
    let attributes = if auth.is_some() { 0 } else { TPMA_OBJECT_NODA };
    let public = sealed_object_template(attributes, policy, &unique);
    let name = name_of_template(&public)?;

    // The TPM removes trailing zeros of an authValue when it uses it; store it that way.
    let auth = auth.map(|a| {
        let bytes = a.expose();
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Zeroizing::new(bytes[..end].to_vec())
    });
    let sensitive = marshal_sensitive(auth.as_deref().map(|v| v.as_slice()), &seed_value, secret);
    let (seed, encrypted_seed) = parent.encrypt_seed()?;
    let duplicate = wrap(&seed, parent.aes_bits, &name, sensitive);

    let mut public_tpm2b = tpm2b(&public);
    let sealed = SealedObject {
        private: tpm2b(&duplicate),
        public: std::mem::take(&mut public_tpm2b),
        import_seed: Some(tpm2b(&encrypted_seed)),
    };
    Ok(sealed)
}

/// TPM2B_SENSITIVE of a sealed data object: type, authValue, seedValue, the data.
fn marshal_sensitive(auth: Option<&[u8]>, seed_value: &[u8], secret: &Secret) -> Secret {
    let auth = auth.unwrap_or(&[]);
    let inner = 2 + (2 + auth.len()) + (2 + seed_value.len()) + (2 + secret.len());
    let mut out = Secret::with_capacity(2 + inner);
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            out.push(b);
        }
    };
    put(&(inner as u16).to_be_bytes());
    put(&TPM2_ALG_KEYEDHASH.to_be_bytes());
    for field in [auth, seed_value, secret.expose()] {
        put(&(field.len() as u16).to_be_bytes());
        put(field);
    }
    out
}

/// The outer wrapper: AES-CFB of the sensitive area under a key derived from the seed and
/// the object's Name, then an HMAC over both. Returns TPM2B(HMAC) ‖ ciphertext, the buffer
/// of the duplicate's TPM2B_PRIVATE.
fn wrap(seed: &[u8], aes_bits: usize, name: &[u8], mut sensitive: Secret) -> Vec<u8> {
    let sym_key = kdfa(seed, LABEL_STORAGE, name, &[], aes_bits);
    let iv = [0u8; 16];
    let data = sensitive.expose_mut();
    match aes_bits {
        128 => cfb_mode::Encryptor::<aes::Aes128>::new(sym_key.as_slice().into(), &iv.into())
            .encrypt(data),
        _ => cfb_mode::Encryptor::<aes::Aes256>::new(sym_key.as_slice().into(), &iv.into())
            .encrypt(data),
    }
    // Encrypted now: what is left in `sensitive` is ciphertext.
    let hmac_key = kdfa(seed, LABEL_INTEGRITY, &[], &[], SHA256_LEN * 8);
    let mut mac = hmac_sha256(&hmac_key);
    mac.update(sensitive.expose());
    mac.update(name);
    let integrity = mac.finalize().into_bytes();
    let mut out = tpm2b(&integrity);
    out.extend_from_slice(sensitive.expose());
    out
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// KDFa with SHA-256 (TPM Part 1 §11.4.10.2, SP800-108 counter mode).
pub fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(bits.div_ceil(8) + SHA256_LEN));
    let mut counter = 1u32;
    while out.len() * 8 < bits {
        let mut mac = hmac_sha256(key);
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&(bits as u32).to_be_bytes());
        let mut block = mac.finalize().into_bytes();
        out.extend_from_slice(&block);
        block.as_mut_slice().zeroize();
        counter += 1;
    }
    out.truncate(bits.div_ceil(8));
    out
}

/// KDFe with SHA-256 (TPM Part 1 §11.4.10.3, SP800-56A concatenation KDF).
pub fn kdfe(
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(bits.div_ceil(8) + SHA256_LEN));
    let mut counter = 1u32;
    while out.len() * 8 < bits {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label);
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        let mut block = h.finalize();
        out.extend_from_slice(&block);
        block.as_mut_slice().zeroize();
        counter += 1;
    }
    out.truncate(bits.div_ceil(8));
    out
}

fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn left_pad(bytes: &[u8], len: usize) -> Result<Vec<u8>, TpmError> {
    if bytes.len() > len {
        return Err(TpmError::Invalid(
            "the ECC storage key's point is too long for P-256".into(),
        ));
    }
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(bytes);
    Ok(out)
}

fn random(len: usize) -> Result<Vec<u8>, TpmError> {
    let mut out = vec![0u8; len];
    getrandom::getrandom(&mut out).map_err(|e| TpmError::Invalid(format!("no randomness: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn kdfa_matches_the_tpm_reference_self_test() {
        // The SHA-256 KDFa known answer of the TPM reference implementation's self test
        // (libtpms KdfTestData.h): label "KDFSELFTESTLABEL", 160 bits.
        let out = kdfa(
            &h("271fa08bbdc5060ec3dfa928ff9b73123a12da0c"),
            b"KDFSELFTESTLABEL",
            &h("ce244f395dca7391"),
            &h("da504031ddf12e83"),
            160,
        );
        assert_eq!(
            hex::encode(out.as_slice()),
            "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4"
        );
    }

    #[test]
    fn kdfe_matches_published_vectors() {
        // chrisfenner/tpm-test-vectors vectors/kdfe.json, SHA-256 entries of whole bytes
        // (generated with go-tpm, checked against a TPM simulator).
        let cases = [
            (
                "8995a6318a0217c7c7bf543f50da29016c4ff2a1ea5daf54ebcb00",
                "INTEGRITY",
                "8852f14d8e9b68",
                "74ff",
                336,
                "92343ef558feb95fd14838f9ca39c8618598a7eeb31af7fc276030b8c3ff326d4870f190e54abbec9da4",
            ),
            (
                "00",
                "OBFUSCATE",
                "ebcb3cd4a002941ed496ef1d32a70b0b7f6f05b8a51803d5a9ff9b",
                "a1f79a7ee2beee21e2bfaee67769874687bfe21b2468fc8e721b6e967e12ff",
                496,
                "dcd14d72e0d5d8ec15b5ea15ae060e02f0e042f3af7efbd73650bb4457d73b060ef8f78bdf8cea099fe98fad6359bcfe92c1c6be8a157c1064c85ada3ad2",
            ),
        ];
        for (z, label, u, v, bits, want) in cases {
            let out = kdfe(&h(z), label.as_bytes(), &h(u), &h(v), bits);
            assert_eq!(hex::encode(out.as_slice()), want, "{label}");
        }
    }

    #[test]
    fn ecc_seed_matches_a_published_import_vector() {
        // chrisfenner/tpm-test-vectors vectors/ecc_labeled_encaps.json,
        // 07_P256_SHA256_128_restricted ("Validated": TPM2_Import): a P-256 SRK, a fixed
        // ephemeral key, the seed and the TPMS_ECC_POINT the TPM receives.
        let public = h(
            "0023000b00030460000000060080004300100003001000207d1f639091f4f93753e5ca964f537491e2ee50058bdf8d93c2f6f165d02a6f2c00205b4e618a7dad9e0cbc7d974ff78ac75ac3ca7be3c54a2b064e0f42f3b43de892",
        );
        let mut tpm2b_public = (public.len() as u16).to_be_bytes().to_vec();
        tpm2b_public.extend_from_slice(&public);
        let key = StorageKey::parse(&tpm2b_public).unwrap();
        let KeyKind::EccP256 { point, x } = &key.kind else {
            panic!("not ECC")
        };
        let d = h("7f6b770bd2b5ca9a5a08999823efc73c75fb0dd3b676ea9fc0ff53e9d845406e");
        let d = p256::NonZeroScalar::try_from(d.as_slice()).unwrap();
        let (seed, encrypted) = ecc_seed(&d, point, x).unwrap();
        assert_eq!(
            hex::encode(seed.as_slice()),
            "7acf2e8296c4100f700c6ed84df8aded6f1b308fe469f74886bce6bb2d6d542e"
        );
        assert_eq!(
            hex::encode(&encrypted),
            "002073eecdd4c2ec3d396c3d77d2fd0760d4b155dd803708f84b92350e0f9899c00700205067d286710a4837e31767fbb7336c2cd74a0c3767572834cf4fc55e329a67ac"
        );
    }

    #[test]
    fn storage_keys_outside_the_srk_templates_are_refused() {
        // The same vector's key with nameAlg SHA-1 (0x0004): refused with the reason.
        let public = h(
            "002300040003046000000006008000430010000300100020c83ef61e207350d3fbd754d2fc3ee92e86ca5bbddcd82bee45fbbd0ccc99cfa000203aed53f5f39e2734972f78029ae8a95e2fe25938a958d8553f22470d88c205bf",
        );
        let mut tpm2b_public = (public.len() as u16).to_be_bytes().to_vec();
        tpm2b_public.extend_from_slice(&public);
        let e = StorageKey::parse(&tpm2b_public).err().unwrap().to_string();
        assert!(e.contains("name algorithm is 0x0004"), "{e}");
        assert!(StorageKey::parse(&[0, 3, 1, 2, 3]).is_err());
        // The SHA-256 key of the import vector without userWithAuth, as an EK has it.
        let mut ek = h(
            "0023000b00030460000000060080004300100003001000207d1f639091f4f93753e5ca964f537491e2ee50058bdf8d93c2f6f165d02a6f2c00205b4e618a7dad9e0cbc7d974ff78ac75ac3ca7be3c54a2b064e0f42f3b43de892",
        );
        ek[7] &= !0x40;
        let mut tpm2b_ek = (ek.len() as u16).to_be_bytes().to_vec();
        tpm2b_ek.extend_from_slice(&ek);
        let e = StorageKey::parse(&tpm2b_ek).err().unwrap().to_string();
        assert!(e.contains("endorsement key"), "{e}");
        // Found by fuzzing (fuzz/regressions/tpm_public): an RSA storage key of 74 bits
        // parsed, and sealing to it failed in RSA-OAEP; keys under 2048 bits are refused.
        let tiny =
            h("001a0001000b00030472000000060080004300100800011a0001000b00030471ffff0006008001");
        let e = StorageKey::parse(&tiny).err().unwrap().to_string();
        assert!(e.contains("the RSA key has 74 bits"), "{e}");
    }
}
