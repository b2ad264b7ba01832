//! Expected PCR values given by hand or by a predictor, for sealing to a TPM that is not
//! here (`enroll --srk-public`). Two spellings:
//!
//! - a list: `7:sha256=HEX,9:sha256=HEX` (systemd-cryptenroll's `--tpm2-pcrs=` syntax; the
//!   bank may be left out, `7=HEX`, and is then `--pcr-bank`);
//! - a JSON file (what `sealroot predict` writes):
//!   `{"pcr_bank": "sha256", "pcr_values": {"7": "HEX", "9": "HEX"}}`; other keys are
//!   ignored, so a predictor may explain where each value comes from.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::tpm::pcr::{PCR_COUNT, PcrBank};

/// PCR values in one bank, ascending by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues {
    pub bank: PcrBank,
    pub values: Vec<(u32, Vec<u8>)>,
}

#[derive(Deserialize)]
struct PcrValuesJson {
    pcr_bank: String,
    pcr_values: BTreeMap<String, String>,
}

/// `spec` is a list, or the path of a JSON file. `bank` is the bank asked for with
/// `--pcr-bank`, if it was; every value must be in one bank.
pub fn parse(spec: &str, bank: Option<PcrBank>) -> Result<PcrValues, String> {
    let looks_like_list = spec.contains('=') && !Path::new(spec).exists();
    if looks_like_list {
        parse_list(spec, bank)
    } else {
        let text = std::fs::read_to_string(spec)
            .map_err(|e| format!("--pcr-values: cannot read {spec}: {e}"))?;
        parse_json(&text, bank).map_err(|e| format!("--pcr-values {spec}: {e}"))
    }
}

/// The events a `predict` output file records next to its values, if `spec` is one.
pub fn events_of(spec: &str) -> Option<Vec<crate::approval::RecordedEvent>> {
    if spec.contains('=') && !Path::new(spec).exists() {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec).ok()?).ok()?;
    serde_json::from_value(json.get("events")?.clone()).ok()
}

pub fn parse_list(spec: &str, bank: Option<PcrBank>) -> Result<PcrValues, String> {
    let mut entries = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (left, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not PCR:BANK=HEX"))?;
        let (index, item_bank) = match left.split_once(':') {
            Some((i, b)) => (i, Some(b.parse::<PcrBank>()?)),
            None => (left, None),
        };
        entries.push((
            index.trim().to_string(),
            item_bank,
            value.trim().to_string(),
        ));
    }
    build(entries, bank)
}

pub fn parse_json(text: &str, bank: Option<PcrBank>) -> Result<PcrValues, String> {
    let json: PcrValuesJson = serde_json::from_str(text).map_err(|e| {
        format!("not a PCR values file ({{\"pcr_bank\": \"sha256\", \"pcr_values\": {{\"7\": \"HEX\"}}}}): {e}")
    })?;
    let file_bank = json.pcr_bank.parse::<PcrBank>()?;
    let entries = json
        .pcr_values
        .into_iter()
        .map(|(i, v)| (i, Some(file_bank), v))
        .collect();
    build(entries, bank)
}

fn build(
    entries: Vec<(String, Option<PcrBank>, String)>,
    asked: Option<PcrBank>,
) -> Result<PcrValues, String> {
    let mut bank = asked;
    let mut values = BTreeMap::new();
    for (index, item_bank, value) in entries {
        let index: u32 = index
            .parse()
            .ok()
            .filter(|i| *i < PCR_COUNT)
            .ok_or_else(|| format!("'{index}' is not a PCR number (0-23)"))?;
        let item_bank = item_bank.or(asked).unwrap_or(PcrBank::Sha256);
        match bank {
            Some(b) if b != item_bank => {
                return Err(format!(
                    "PCR {index} is given in {item_bank}, but the values are in {b}: a token binds one bank"
                ));
            }
            _ => bank = Some(item_bank),
        }
        let digest =
            hex::decode(&value).map_err(|_| format!("the value of PCR {index} is not hex"))?;
        if digest.len() != item_bank.digest_len() {
            return Err(format!(
                "the value of PCR {index} has {} bytes, {item_bank} needs {}",
                digest.len(),
                item_bank.digest_len()
            ));
        }
        if values.insert(index, digest).is_some() {
            return Err(format!("PCR {index} is given twice"));
        }
    }
    Ok(PcrValues {
        bank: bank.unwrap_or(PcrBank::Sha256),
        values: values.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    #[test]
    fn list_and_json_agree() {
        let list = parse_list(&format!("9:sha256={A}, 7:sha256={A}"), None).unwrap();
        let json = parse_json(
            &format!(r#"{{"pcr_bank":"sha256","pcr_values":{{"7":"{A}","9":"{A}"}},"note":"x"}}"#),
            None,
        )
        .unwrap();
        assert_eq!(list, json);
        assert_eq!(list.bank, PcrBank::Sha256);
        assert_eq!(list.values.iter().map(|v| v.0).collect::<Vec<_>>(), [7, 9]);
    }

    #[test]
    fn bank_defaults_to_the_one_asked_for() {
        let sha1 = "00".repeat(20);
        let v = parse_list(&format!("7={sha1}"), Some(PcrBank::Sha1)).unwrap();
        assert_eq!(v.bank, PcrBank::Sha1);
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let cases = [
            (format!("24:sha256={A}"), "not a PCR number"),
            ("7:sha256=abc".to_string(), "not hex"),
            ("7:sha256=abcd".to_string(), "has 2 bytes"),
            (format!("7:sha256={A},7:sha256={A}"), "given twice"),
            (
                format!("7:sha256={A},8:sha1={}", "00".repeat(20)),
                "one bank",
            ),
            (format!("7:md5={A}"), "md5"),
            ("7".to_string(), "PCR:BANK=HEX"),
        ];
        for (spec, want) in cases {
            let e = parse_list(&spec, None).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let e = parse_list(&format!("7:sha256={A}"), Some(PcrBank::Sha384)).unwrap_err();
        assert!(e.contains("one bank"), "{e}");
        assert!(parse_json("{}", None).unwrap_err().contains("pcr_bank"));
    }
}
