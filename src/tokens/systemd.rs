//! `systemd-tpm2` tokens (systemd-cryptenroll): shared/reference/tokens-systemd.md.
//! Supported: literal PCR policies in any bank, legacy transient primaries (ECC, RSA) and
//! SRK tokens (`tpm2_srk`), PINs in the v251 and v253+ forms. Refused with a message:
//! signed PCR policies, pcrlock, sharded blobs, offline-sealed (imported) blobs, Argon2 PINs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::{
    Fence, Finish, ParentSpec, PinDerivation, PlanError, UnsealPlan, primary_template,
    single_keyslot,
};
use crate::tpm::pcr::{PCR_COUNT, PcrBank};
use crate::tpm::seal::SealedObject;
use crate::tpm::unseal::SignedPolicy;

pub const TOKEN_TYPE: &str = "systemd-tpm2";
const SHA256_ALG: u16 = 0x000B;

pub fn plan(id: u32, json: &Value) -> Result<UnsealPlan, PlanError> {
    let bad = |reason: String| PlanError(format!("{TOKEN_TYPE} token {id}: {reason}"));
    let field = |name: &str| json.get(name);
    let unsupported = |what: &str| {
        bad(format!(
            "{what} are not supported yet; trying the next token"
        ))
    };
    if field("tpm2_pcrlock").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("pcrlock policies"));
    }
    for key in [
        "tpm2_argon2id_memcost",
        "tpm2_argon2id_iterations",
        "tpm2_argon2id_lanes",
        "tpm2_pubkey_ref",
    ] {
        if field(key).is_some() {
            return Err(bad(format!(
                "field {key} is not supported; trying the next token"
            )));
        }
    }
    let keyslot = single_keyslot(json).ok_or_else(|| bad("expected exactly one keyslot".into()))?;
    let blob_b64 = match field("tpm2-blob") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(a)) if a.len() == 1 => a[0]
            .as_str()
            .ok_or_else(|| bad("tpm2-blob is not base64".into()))?,
        Some(Value::Array(_)) => return Err(unsupported("sharded blobs")),
        _ => return Err(bad("tpm2-blob is missing".into())),
    };
    let blob = B64
        .decode(blob_b64)
        .map_err(|e| bad(format!("tpm2-blob is not base64: {e}")))?;
    // With a trailing import seed (`--tpm2-device-key`), the TPM imports it first.
    let sealed = SealedObject::from_blob(&blob).map_err(|e| bad(e.to_string()))?;
    let pcrs = field("tpm2-pcrs")
        .and_then(pcr_list)
        .ok_or_else(|| bad("tpm2-pcrs is missing or holds something that is not a PCR".into()))?;
    let bank: PcrBank = match field("tpm2-pcr-bank").and_then(Value::as_str) {
        Some(b) => b.parse().map_err(bad)?,
        // Legacy tokens without a bank: systemd picks sha256 when it is allocated.
        None => PcrBank::Sha256,
    };
    let policy = match field("tpm2-policy-hash") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().unwrap_or_default().to_string(),
        _ => return Err(bad("tpm2-policy-hash is missing".into())),
    };
    let policy = hex::decode(&policy)
        .ok()
        .filter(|p| p.len() == 32)
        .ok_or_else(|| bad("tpm2-policy-hash is not 32 bytes of hex".into()))?;
    if sealed.auth_policy().map_err(|e| bad(e.to_string()))? != policy {
        return Err(bad(
            "the sealed object's policy differs from tpm2-policy-hash".into(),
        ));
    }
    let parent = match field("tpm2_srk").and_then(Value::as_str) {
        Some(srk) => ParentSpec::Serialized(
            B64.decode(srk)
                .map_err(|e| bad(format!("tpm2_srk is not base64: {e}")))?,
        ),
        None => {
            let rsa = match field("tpm2-primary-alg").and_then(Value::as_str) {
                None | Some("ecc") => false,
                Some("rsa") => true,
                Some(other) => return Err(bad(format!("unknown tpm2-primary-alg '{other}'"))),
            };
            ParentSpec::Primary(primary_template(rsa, SHA256_ALG))
        }
    };
    let pin = match field("tpm2-pin").and_then(Value::as_bool).unwrap_or(false) {
        false => None,
        true => Some(match field("tpm2_salt").and_then(Value::as_str) {
            Some(salt) => PinDerivation::Salted {
                salt: B64
                    .decode(salt)
                    .map_err(|e| bad(format!("tpm2_salt is not base64: {e}")))?,
                iterations: 10_000,
            },
            None => PinDerivation::Sha256,
        }),
    };
    let signed = match field("tpm2_pubkey").and_then(Value::as_str) {
        None => None,
        Some(pem_b64) => {
            let pem = B64
                .decode(pem_b64)
                .map_err(|e| bad(format!("tpm2_pubkey is not base64: {e}")))?;
            let pcrs = match field("tpm2_pubkey_pcrs") {
                None => vec![11],
                Some(v) => pcr_list(v).ok_or_else(|| {
                    bad("tpm2_pubkey_pcrs holds something that is not a PCR".into())
                })?,
            };
            let (key_publics, key_pkcs1) = rsa_key(&pem).map_err(bad)?;
            Some(SignedPolicy {
                bank,
                pcrs,
                key_publics,
                key_pkcs1,
                signatures: Vec::new(),
            })
        }
    };
    Ok(UnsealPlan {
        kind: TOKEN_TYPE,
        id,
        keyslot,
        sealed,
        parent,
        session_hash: PcrBank::Sha256,
        bank,
        pcrs,
        pcr_values: None,
        expected_policy: Some(policy),
        pin,
        finish: Finish::Base64,
        signed,
        fence: Fence::Unknown,
        approvals: None,
    })
}

/// A JSON array of PCR numbers (0–23), as a sorted set.
fn pcr_list(v: &Value) -> Option<Vec<u32>> {
    let mut pcrs: Vec<u32> = v
        .as_array()?
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&n| n < u64::from(PCR_COUNT))
                .map(|n| n as u32)
        })
        .collect::<Option<_>>()?;
    // A selection is a set: a header repeating PCRs gets no longer lists than 24.
    pcrs.sort_unstable();
    pcrs.dedup();
    Some(pcrs)
}

/// TPMT_PUBLIC encodings of an RSA signing key as systemd names it (decrypt|sign|
/// userWithAuth, no symmetric, no scheme), one per exponent encoding systemd has used
/// (65537 written out, or 0 for the default: systemd#30546), and the key's fingerprint as
/// signature files carry it (`pkfp`: SHA-256 of this PKCS#1 DER).
fn rsa_key(pem: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let text = std::str::from_utf8(pem).map_err(|_| "tpm2_pubkey is not PEM text".to_string())?;
    let key = rsa::RsaPublicKey::from_public_key_pem(text)
        .map_err(|e| format!("tpm2_pubkey is not an RSA public key: {e}"))?;
    let n = key.n().to_bytes_be();
    let e: u32 = key
        .e()
        .to_bytes_be()
        .iter()
        .fold(0u32, |acc, b| acc.wrapping_shl(8) | u32::from(*b));
    let encode = |exponent: u32| {
        let mut t = vec![
            0x00, 0x01, 0x00, 0x0b, 0x00, 0x06, 0x00, 0x40, 0x00, 0x00, 0x00, 0x10, 0x00, 0x10,
        ];
        t.extend_from_slice(&((n.len() * 8) as u16).to_be_bytes());
        t.extend_from_slice(&exponent.to_be_bytes());
        t.extend_from_slice(&(n.len() as u16).to_be_bytes());
        t.extend_from_slice(&n);
        t
    };
    let mut encodings = vec![encode(e)];
    if e == 65537 {
        encodings.push(encode(0));
    }
    let der = key
        .to_pkcs1_der()
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    Ok((encodings, der.as_bytes().to_vec()))
}

/// Where systemd looks for `tpm2-pcr-signature.json`; `/.extra` only in the initrd.
pub fn signature_paths() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<std::path::PathBuf> = [
        "/etc/systemd/tpm2-pcr-signature.json",
        "/run/systemd/tpm2-pcr-signature.json",
        "/usr/local/lib/systemd/tpm2-pcr-signature.json",
        "/usr/lib/systemd/tpm2-pcr-signature.json",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if std::path::Path::new("/etc/initrd-release").exists() {
        paths.push("/.extra/tpm2-pcr-signature.json".into());
    }
    paths
}

/// Signed PCR policies: the approvals come from `--signature`, else from where systemd
/// looks (`tpm2-pcr-signature.json` in /etc/systemd, /run/systemd, /usr/local/lib/systemd,
/// /usr/lib/systemd, and /.extra in the initrd).
pub fn load_signatures(plan: &mut UnsealPlan, explicit: Option<&std::path::PathBuf>) {
    let Some(signed) = plan.signed.as_mut() else {
        return;
    };
    let paths = match explicit {
        Some(p) => vec![p.clone()],
        None => signature_paths(),
    };
    let mut found = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<Value>(&text) {
            Ok(json) => found.extend(signatures_for(&json, signed)),
            Err(e) => {
                crate::console::error(&format!("{}: not JSON ({e}); ignored", path.display()))
            }
        }
    }
    signed.signatures = found;
}

/// The (policy, signature) pairs of a signature file that fit this token (same bank, same
/// PCR set, same key fingerprint, no policyRef) and whose signature verifies: RSASSA-PKCS1
/// v1.5 over SHA-256 of the approved policy, as TPM2_VerifySignature will check it.
pub fn signatures_for(json: &Value, signed: &SignedPolicy) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use sha2::{Digest, Sha256};
    let Ok(key) = rsa::RsaPublicKey::from_pkcs1_der(&signed.key_pkcs1) else {
        return Vec::new();
    };
    let pkfp = Sha256::digest(&signed.key_pkcs1).to_vec();
    let mut want = signed.pcrs.clone();
    want.sort_unstable();
    json.get(signed.bank.name())
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let mut pcrs: Vec<u32> = entry
                .get("pcrs")?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_u64().map(|n| n as u32))
                .collect();
            pcrs.sort_unstable();
            let fp = hex::decode(entry.get("pkfp")?.as_str()?).ok()?;
            if pcrs != want || fp != pkfp || entry.get("ref").is_some() {
                return None;
            }
            let pol = hex::decode(entry.get("pol")?.as_str()?).ok()?;
            let sig = B64.decode(entry.get("sig")?.as_str()?).ok()?;
            let scheme = rsa::Pkcs1v15Sign::new::<Sha256>();
            key.verify(scheme, &Sha256::digest(&pol), &sig).ok()?;
            Some((pol, sig))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // tokens-systemd.md §11.1, captured from systemd-cryptenroll 252.
    const TOKEN: &str = r#"{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AJ4AIHUQgjcuV9cIMWJsKk8XqNhadlJjw9OnI96lez+kVTUXABD2la4Ty9eVphGOEhWedvo5xV5C7sfnlmGYlvZrCs5drpPcJid0ZFP9arGKnuQ1W7N+weEVIghq3at6BKEqzQFTa1LeVacvoP3V9o3UhykBTrRFmyXABamXVF/I+ogjDVUMBQitFriCx71KHtHIik7iXkU/5fIqqSzYDABOAAgACwAAABIAIItWgtgbKUNdCNeSeBUGEdx+WSOy/vzOaEoJV3tAEwqLABAAIPbELjNuN8pZ2+Ct++rXUm7LktQatyTHc5Cx9jeZ650+","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b","tpm2-pin":false}"#;

    // tokens-systemd.md §11.3/11.4: the signing key of a v252 signed-PCR-11 token.
    const PUBKEY: &str = "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUlJQklqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FROEFNSUlCQ2dLQ0FRRUE4cHJZSVZOU0pOTktzL3NtUm1NbApHcElTdzVseEpEbGpLbm1PNDVqZDB0S2lIMUNiM2s1KzBaclBQV0JtOWk4bERTZHJXL0owSncxSHQ3Y2g4S3dECkF6TlRLRXNRYnZyWEZvZWpTcEJZMzJRNHZlWUJtUE1TTXR4OHVUeWU0bG44UzZPOE9yeTZkcFNYVk5zSFVJMEIKYUllckF0d3B0bGIzR2RiM0VhWXF4REtEZVpQVFRBc3VxU2lzYm96NWpnSEVOdU1lcThNeGh5bnI5bTJCUXRQYwpwN092OVlRb1RmR2xVSjgvc0JiVEJZOWFVWmtYQXhHZmZlZVp3ZUY0c3ZoU1hOSDNxdFFlcC96dFJRK1RWTWxVCnNMNVVoMkVaWnk3QzFzcmtRV29IbkFEU0M5SGJ2OHVQOXB2VkpibVhLRkF4Y3JGT0NmTVc1MVkySjZGNmFJMHoKaVFJREFRQUIKLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg==";

    #[test]
    fn signing_key_name_and_fingerprint_match_the_vectors() {
        use sha2::{Digest, Sha256};
        let pem = B64.decode(PUBKEY).unwrap();
        let (encodings, der) = rsa_key(&pem).unwrap();
        let pkfp = sha2::Sha256::digest(&der);
        assert_eq!(
            hex::encode(pkfp),
            "f082d10258105d4bc2bbea3c96ff5c14b86261dc6f2136012c3869382502ffbc"
        );
        let name = |t: &[u8]| {
            let mut n = vec![0x00, 0x0b];
            n.extend_from_slice(&Sha256::digest(t));
            hex::encode(n)
        };
        assert_eq!(
            name(&encodings[0]),
            "000b5b79b900c9f5d693ba806fad40f663369a4c1b2a580829fec0e6067ef007778d"
        );
        assert!(name(&encodings[1]).starts_with("000bdfc3efdd"));
    }

    #[test]
    fn a_pcr_list_is_a_set() {
        let v: Value = serde_json::from_str("[7, 0, 7, 7, 0]").unwrap();
        assert_eq!(pcr_list(&v), Some(vec![0, 7]));
        let v: Value = serde_json::from_str("[24]").unwrap();
        assert_eq!(pcr_list(&v), None);
    }

    #[test]
    fn parses_the_v252_vector() {
        let v: Value = serde_json::from_str(TOKEN).unwrap();
        let p = plan(3, &v).unwrap();
        assert_eq!(p.keyslot, 1);
        assert_eq!(p.pcrs, vec![7]);
        assert!(matches!(p.parent, ParentSpec::Primary(_)));
        assert!(p.pin.is_none());
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let v: Value = serde_json::from_str(TOKEN).unwrap();
        let obj = v.as_object().unwrap();
        for key in obj.keys() {
            let mut t = v.clone();
            t.as_object_mut().unwrap().remove(key);
            let _ = plan(0, &t);
            for bad in [
                Value::Null,
                Value::Bool(true),
                Value::from(-1),
                Value::from("%"),
                Value::from(vec!["x"]),
            ] {
                let mut t = v.clone();
                t[key] = bad;
                let _ = plan(0, &t);
            }
        }
        let blob = v["tpm2-blob"].as_str().unwrap();
        for cut in 0..blob.len() {
            let mut t = v.clone();
            t["tpm2-blob"] = Value::from(&blob[..cut]);
            assert!(plan(0, &t).is_err(), "cut at {cut}");
        }
        let mut t = v.clone();
        t["tpm2_pubkey"] = Value::from("x");
        assert!(plan(0, &t).is_err());
        let mut t = v.clone();
        t["tpm2_pcrlock"] = Value::from(true);
        assert!(plan(0, &t).err().unwrap().to_string().contains("pcrlock"));
    }
}
