//! `clevis` tokens with the tpm2 pin (clevis luks bind … tpm2): shared/reference/
//! tokens-clevis.md. The JWE's protected header carries the TPM2B_PUBLIC/PRIVATE of an
//! object sealed under a transient primary; the unsealed JWK decrypts the JWE (dir +
//! A256GCM), whose plaintext is the keyslot passphrase. `sss` with a threshold of 1 and a
//! tpm2 pin inside, tang and others: refused with a message (next token).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::Value;
use zeroize::Zeroize;

use super::{Fence, Finish, ParentSpec, PlanError, UnsealPlan, primary_template, single_keyslot};
use crate::secret::Secret;
use crate::tpm::pcr::{PcrBank, parse_pcr_list};
use crate::tpm::seal::SealedObject;

pub const TOKEN_TYPE: &str = "clevis";

/// A flattened JWE as clevis stores it; `protected` kept exactly as stored (it is the AAD).
pub struct Jwe {
    protected: String,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl Jwe {
    /// A compact serialization `protected.encrypted_key.iv.ciphertext.tag` (dir: empty key).
    fn from_compact(compact: &str) -> Option<Jwe> {
        let parts: Vec<&str> = compact.split('.').collect();
        let [protected, key, iv, ciphertext, tag] = parts.as_slice() else {
            return None;
        };
        if !key.is_empty() {
            return None;
        }
        Some(Jwe {
            protected: protected.to_string(),
            iv: B64URL.decode(iv).ok()?,
            ciphertext: B64URL.decode(ciphertext).ok()?,
            tag: B64URL.decode(tag).ok()?,
        })
    }

    fn header(&self) -> Option<Value> {
        serde_json::from_slice(&B64URL.decode(&self.protected).ok()?).ok()
    }

    /// Decrypts with the key of the unsealed JWK (`{"kty":"oct","k":…}`). The JSON is read
    /// in place (borrowed strings, no copies) and the key decoded straight into a Secret.
    pub fn decrypt(&self, jwk: &Secret) -> Result<Secret, String> {
        #[derive(serde::Deserialize)]
        struct Jwk<'a> {
            kty: &'a str,
            k: &'a str,
        }
        let parsed: Jwk<'_> = serde_json::from_slice(jwk.expose())
            .map_err(|_| "the unsealed JWK is not a JSON key".to_string())?;
        if parsed.kty != "oct" {
            return Err("the unsealed JWK is not a symmetric key".into());
        }
        let mut k = Secret::zeroed(parsed.k.len() * 3 / 4 + 3);
        let n = B64URL
            .decode_slice(parsed.k, k.expose_mut())
            .map_err(|_| "the unsealed JWK's key is not base64url".to_string())?;
        k.truncate(n);
        self.decrypt_with_key(k.expose())
    }

    /// dir + A256GCM with a raw 32-byte key; the AAD is the protected header as stored.
    fn decrypt_with_key(&self, k: &[u8]) -> Result<Secret, String> {
        if k.len() != 32 || self.iv.len() != 12 || self.tag.len() != 16 {
            return Err("unexpected key, IV or tag size for A256GCM".into());
        }
        let cipher = Aes256Gcm::new_from_slice(k).map_err(|e| e.to_string());
        let mut sealed = self.ciphertext.clone();
        sealed.extend_from_slice(&self.tag);
        let plain = cipher?
            .decrypt(
                Nonce::from_slice(&self.iv),
                Payload {
                    msg: &sealed,
                    aad: self.protected.as_bytes(),
                },
            )
            .map_err(|_| "the JWE does not decrypt with the unsealed key".to_string())?;
        let out = Secret::from_slice(&plain);
        let mut plain = plain;
        plain.zeroize();
        Ok(out)
    }
}

/// clevis `sss` with a threshold of 1: the tpm2 pin's JWE holds a Shamir point `x ‖ y`;
/// with one point the secret is `y`, the key of the outer JWE.
pub struct Sss {
    pub inner: Jwe,
    pub outer: Jwe,
}

impl Sss {
    pub fn decrypt(&self, jwk: &Secret) -> Result<Secret, String> {
        let point = self.inner.decrypt(jwk)?;
        let bytes = point.expose();
        if bytes.is_empty() || bytes.len() % 2 != 0 {
            return Err("the sss share has an odd size".into());
        }
        self.outer.decrypt_with_key(&bytes[bytes.len() / 2..])
    }
}

pub fn plan(id: u32, json: &Value) -> Result<UnsealPlan, PlanError> {
    let bad = |reason: String| PlanError(format!("{TOKEN_TYPE} token {id}: {reason}"));
    let keyslot = single_keyslot(json).ok_or_else(|| bad("expected exactly one keyslot".into()))?;
    let jwe = json.get("jwe").ok_or_else(|| bad("no jwe".into()))?;
    let member = |name: &str| -> Result<&str, PlanError> {
        jwe.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("jwe.{name} is missing")))
    };
    let b64 = |name: &str| -> Result<Vec<u8>, PlanError> {
        B64URL
            .decode(member(name)?)
            .map_err(|_| bad(format!("jwe.{name} is not base64url")))
    };
    let protected = member("protected")?.to_string();
    let header: Value = B64URL
        .decode(&protected)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| bad("the protected header is not base64url JSON".into()))?;
    if header.get("alg").and_then(Value::as_str) != Some("dir")
        || header.get("enc").and_then(Value::as_str) != Some("A256GCM")
        || header.get("crit").is_some()
        || header.get("zip").is_some()
    {
        return Err(bad("only dir + A256GCM JWEs are supported".into()));
    }
    let clevis = header
        .get("clevis")
        .ok_or_else(|| bad("no clevis header".into()))?;
    let outer = Jwe {
        protected: protected.clone(),
        iv: b64("iv")?,
        ciphertext: b64("ciphertext")?,
        tag: b64("tag")?,
    };
    let (tpm2, finish) = match clevis.get("pin").and_then(Value::as_str) {
        Some("tpm2") => (
            clevis
                .get("tpm2")
                .cloned()
                .ok_or_else(|| bad("no tpm2 settings".into()))?,
            Finish::Jwe(outer),
        ),
        Some("sss") => {
            let sss = clevis
                .get("sss")
                .ok_or_else(|| bad("no sss settings".into()))?;
            if sss.get("t").and_then(Value::as_u64) != Some(1) {
                return Err(bad(
                    "sss with a threshold above 1 needs several pins; not supported".into(),
                ));
            }
            let inner = sss
                .get("jwe")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|j| j.as_str().and_then(Jwe::from_compact))
                .find(|j| {
                    j.header().and_then(|h| h.pointer("/clevis/pin").cloned())
                        == Some(Value::from("tpm2"))
                })
                .ok_or_else(|| {
                    bad("sss holds no tpm2 pin (tang needs the network; not supported)".into())
                })?;
            let settings = inner
                .header()
                .and_then(|h| h.pointer("/clevis/tpm2").cloned())
                .ok_or_else(|| bad("the sss tpm2 pin has no settings".into()))?;
            (settings, Finish::Sss(Sss { inner, outer }))
        }
        Some("tang") => return Err(bad("the tang pin needs the network; not supported".into())),
        Some(other) => return Err(bad(format!("the '{other}' pin is not supported yet"))),
        None => return Err(bad("no clevis pin".into())),
    };
    let tpm2 = &tpm2;
    let text = |name: &str| tpm2.get(name).and_then(Value::as_str);
    let hash: PcrBank = text("hash").unwrap_or("sha256").parse().map_err(bad)?;
    let rsa = match text("key").unwrap_or("ecc") {
        "ecc" => false,
        "rsa" => true,
        other => return Err(bad(format!("unknown key type '{other}'"))),
    };
    let pcrs = match tpm2.get("pcr_ids") {
        None => Vec::new(),
        Some(Value::String(s)) => parse_pcr_list(s).map_err(bad)?,
        Some(Value::Array(a)) => {
            let joined: Vec<String> = a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            parse_pcr_list(&joined.join(",")).map_err(bad)?
        }
        Some(_) => return Err(bad("pcr_ids is neither a string nor a list".into())),
    };
    if pcrs.is_empty() {
        return Err(bad(
            "tokens without PCRs (password sessions) are not supported yet".into(),
        ));
    }
    // clevis 19 writes sha1 when pcr_ids is given without a bank.
    let bank: PcrBank = text("pcr_bank").unwrap_or("sha1").parse().map_err(bad)?;
    let decode = |name: &str| -> Result<Vec<u8>, PlanError> {
        B64URL
            .decode(text(name).ok_or_else(|| bad(format!("{name} is missing")))?)
            .map_err(|_| bad(format!("{name} is not base64url")))
    };
    let mut blob = decode("jwk_priv")?;
    blob.extend_from_slice(&decode("jwk_pub")?);
    let sealed = SealedObject::from_blob(&blob).map_err(|e| bad(e.to_string()))?;
    let policy = sealed.auth_policy().map_err(|e| bad(e.to_string()))?;
    Ok(UnsealPlan {
        kind: TOKEN_TYPE,
        id,
        keyslot,
        sealed,
        parent: ParentSpec::Primary(primary_template(rsa, hash.alg_id())),
        session_hash: hash,
        bank,
        pcrs,
        pcr_values: None,
        expected_policy: Some(policy),
        pin: None,
        finish,
        signed: None,
        approvals: None,
        fence: Fence::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // tokens-clevis.md §11.1 (clevis 19, swtpm).
    const TOKEN: &str = r#"{"type":"clevis","keyslots":["1"],"jwe":{"ciphertext":"dh6Wv7hyiKdBXx097oag15lSFJ_-VQ85kuJ9OV5fKhEVUD1nkAAvNpjXeBRP_MH2jgDnfJcx","encrypted_key":"","iv":"1MiQPoqAgj-queAr","protected":"eyJhbGciOiJkaXIiLCJjbGV2aXMiOnsicGluIjoidHBtMiIsInRwbTIiOnsiaGFzaCI6InNoYTI1NiIsImp3a19wcml2IjoiQU80QUlBMzMxYThjSS1iSGtyV2JFZ19jcWhvYmJZV3Y1b2x3eFE2MTVMS0laLU1iQUJDMGljOWt5WHlMZVgzTlJJcWZCRkUtV2twbGRaeVY0aVVuVGlpV1hXSzl2cnlreW5JanFtb0pOTzNxS21lUW5CNE9JMkR6ekZNQ3hSSi1iNGVsbE9mSHhHSU5uWE5XNVFOQ0lGR0JHYU1TaURwOFN1LTZfbV9WV0kwS1loVDdEcjdtUlA2UDRvalJSTW16TE5vN1RHZnVMTWpiUXpITkIwMkhPVS0zN3dDc2lSX0hfYWJlRkRxUkxvX0RqXzQ1OGRuTzRkWWljSWpMdVdJdjIzVkY4cmJqeGFTWEp6LVZJNGs0SmNlSFFBSjRYV3VzQnYzb3hDMmFsSEQ1d1U2YlZKc1dVSlVDX3N5ZEFNSkIiLCJqd2tfcHViIjoiQUU0QUNBQUxBQUFFa2dBZzVaU2NRZXI5RDVRRUhHdUpsYjVpVHBGQWc5aUc0b3FiUDNvSU9QZ1BDdDhBRUFBZ09NQ3poUUVmQTczb0czdUhlY1RKOVVkZWFJOERGVVk1dkdBcy1yMnFGRFkiLCJrZXkiOiJlY2MiLCJwY3JfYmFuayI6InNoYTEiLCJwY3JfaWRzIjoiNyJ9fSwiZW5jIjoiQTI1NkdDTSJ9","tag":"qKpFNgdd61ry9reZD1a7dQ"}}"#;
    const JWK: &str = r#"{"alg":"A256GCM","k":"um7NVnFkzNM7RAsc8McKO1bHGy8PZrA8lUxmDn2lA0s","key_ops":["encrypt","decrypt"],"kty":"oct"}"#;

    #[test]
    fn parses_and_decrypts_the_vector() {
        let v: Value = serde_json::from_str(TOKEN).unwrap();
        let p = plan(0, &v).unwrap();
        assert_eq!(p.bank, PcrBank::Sha1);
        assert_eq!(p.pcrs, vec![7]);
        assert_eq!(
            hex::encode(p.expected_policy.as_ref().unwrap()),
            "e5949c41eafd0f94041c6b8995be624e914083d886e28a9b3f7a0838f80f0adf"
        );
        let pass = p.passphrase(&Secret::from_slice(JWK.as_bytes())).unwrap();
        assert_eq!(
            pass.expose(),
            b"ycERYKQUS[3HVod83z&0Gyg[0B=ib4S4KymiL-Ep@G!am0GsoDYm4k"
        );
        // A flipped tag bit: refused, not garbage.
        let mut bad = v.clone();
        bad["jwe"]["tag"] = Value::from("qKpFNgdd61ry9reZD1a7dA");
        let p = plan(0, &bad).unwrap();
        assert!(p.passphrase(&Secret::from_slice(JWK.as_bytes())).is_err());
    }

    #[test]
    fn corruptions_are_errors_not_panics() {
        let v: Value = serde_json::from_str(TOKEN).unwrap();
        for key in ["ciphertext", "iv", "protected", "tag"] {
            let s = v["jwe"][key].as_str().unwrap().to_string();
            for cut in (0..s.len()).step_by(7) {
                let mut t = v.clone();
                t["jwe"][key] = Value::from(&s[..cut]);
                if let Ok(p) = plan(0, &t) {
                    assert!(p.passphrase(&Secret::from_slice(JWK.as_bytes())).is_err());
                }
            }
        }
        let mut t = v.clone();
        t.as_object_mut().unwrap().remove("jwe");
        assert!(plan(0, &t).is_err());
    }
}
