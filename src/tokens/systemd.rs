//! `systemd-tpm2` tokens (systemd-cryptenroll): shared/reference/tokens-systemd.md.
//! Supported: literal PCR policies in any bank, legacy transient primaries (ECC, RSA) and
//! SRK tokens (`tpm2_srk`), PINs in the v251 and v253+ forms. Refused with a message:
//! signed PCR policies, pcrlock, sharded blobs, offline-sealed (imported) blobs, Argon2 PINs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::{
    Finish, ForeignError, ForeignPlan, ParentSpec, PinDerivation, primary_template, single_keyslot,
};
use crate::tpm::pcr::{PCR_COUNT, PcrBank};
use crate::tpm::seal::SealedObject;

pub const TOKEN_TYPE: &str = "systemd-tpm2";
const SHA256_ALG: u16 = 0x000B;

pub fn plan(id: u32, json: &Value) -> Result<ForeignPlan, ForeignError> {
    let bad = |reason: String| ForeignError {
        kind: TOKEN_TYPE,
        id,
        reason,
    };
    let field = |name: &str| json.get(name);
    let unsupported = |what: &str| {
        bad(format!(
            "{what} are not supported yet; trying the next token"
        ))
    };
    if field("tpm2_pcrlock").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("pcrlock policies"));
    }
    if field("tpm2_pubkey").is_some()
        || field("tpm2_pubkey_pcrs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported("signed PCR policies (tpm2_pubkey)"));
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
    let sealed = SealedObject::from_blob(&blob).map_err(|e| {
        let text = e.to_string();
        if text.contains("trailing") {
            unsupported("offline-sealed blobs (with an import seed)")
        } else {
            bad(text)
        }
    })?;
    let pcrs: Vec<u32> = field("tpm2-pcrs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("tpm2-pcrs is missing".into()))?
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&n| n < u64::from(PCR_COUNT))
                .map(|n| n as u32)
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| bad("tpm2-pcrs holds something that is not a PCR number".into()))?;
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
    Ok(ForeignPlan {
        kind: TOKEN_TYPE,
        id,
        keyslot,
        sealed,
        parent,
        session_hash: PcrBank::Sha256,
        bank,
        pcrs,
        expected_policy: Some(policy),
        pin,
        finish: Finish::Base64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // tokens-systemd.md §11.1, captured from systemd-cryptenroll 252.
    const TOKEN: &str = r#"{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AJ4AIHUQgjcuV9cIMWJsKk8XqNhadlJjw9OnI96lez+kVTUXABD2la4Ty9eVphGOEhWedvo5xV5C7sfnlmGYlvZrCs5drpPcJid0ZFP9arGKnuQ1W7N+weEVIghq3at6BKEqzQFTa1LeVacvoP3V9o3UhykBTrRFmyXABamXVF/I+ogjDVUMBQitFriCx71KHtHIik7iXkU/5fIqqSzYDABOAAgACwAAABIAIItWgtgbKUNdCNeSeBUGEdx+WSOy/vzOaEoJV3tAEwqLABAAIPbELjNuN8pZ2+Ct++rXUm7LktQatyTHc5Cx9jeZ650+","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b","tpm2-pin":false}"#;

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
        assert!(
            plan(0, &t)
                .err()
                .unwrap()
                .to_string()
                .contains("signed PCR policies")
        );
        let mut t = v.clone();
        t["tpm2_pcrlock"] = Value::from(true);
        assert!(plan(0, &t).err().unwrap().to_string().contains("pcrlock"));
    }
}
