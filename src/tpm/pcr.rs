//! PCR banks, selections, reading and extending.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
};

use super::error::{TpmError, command_error};

pub const PCR_COUNT: u32 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PcrBank {
    Sha1,
    Sha256,
    Sha384,
}

impl PcrBank {
    pub fn name(self) -> &'static str {
        match self {
            PcrBank::Sha1 => "sha1",
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
        }
    }

    /// TPM_ALG_ID.
    pub fn alg_id(self) -> u16 {
        match self {
            PcrBank::Sha1 => 0x0004,
            PcrBank::Sha256 => 0x000B,
            PcrBank::Sha384 => 0x000C,
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            PcrBank::Sha1 => 20,
            PcrBank::Sha256 => 32,
            PcrBank::Sha384 => 48,
        }
    }

    pub fn hashing_algorithm(self) -> HashingAlgorithm {
        match self {
            PcrBank::Sha1 => HashingAlgorithm::Sha1,
            PcrBank::Sha256 => HashingAlgorithm::Sha256,
            PcrBank::Sha384 => HashingAlgorithm::Sha384,
        }
    }

    pub fn from_hashing_algorithm(alg: HashingAlgorithm) -> Option<PcrBank> {
        match alg {
            HashingAlgorithm::Sha1 => Some(PcrBank::Sha1),
            HashingAlgorithm::Sha256 => Some(PcrBank::Sha256),
            HashingAlgorithm::Sha384 => Some(PcrBank::Sha384),
            _ => None,
        }
    }

    /// The digest of `data` in this bank's algorithm.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            PcrBank::Sha1 => sha1::Sha1::digest(data).to_vec(),
            PcrBank::Sha256 => sha2::Sha256::digest(data).to_vec(),
            PcrBank::Sha384 => sha2::Sha384::digest(data).to_vec(),
        }
    }

    /// What a PCR holds after extending `measurement` onto `old`.
    pub fn extend(self, old: &[u8], measurement: &[u8]) -> Vec<u8> {
        let mut buf = old.to_vec();
        buf.extend_from_slice(measurement);
        self.hash(&buf)
    }
}

impl fmt::Display for PcrBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PcrBank {
    type Err = String;
    fn from_str(s: &str) -> Result<PcrBank, String> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(PcrBank::Sha1),
            "sha256" => Ok(PcrBank::Sha256),
            "sha384" => Ok(PcrBank::Sha384),
            other => Err(format!(
                "unknown PCR bank '{other}' (use sha256, sha384 or sha1)"
            )),
        }
    }
}

/// TPML_PCR_SELECTION with one bank: `u32 count=1 ‖ u16 alg ‖ u8 3 ‖ bitmap[3]`.
pub fn pcr_selection_bytes(bank: PcrBank, pcrs: &[u32]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &i in pcrs {
        bitmap[(i / 8) as usize] |= 1 << (i % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&bank.alg_id().to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    out
}

/// Parses "7", "7,15", "0+7" into a sorted, de-duplicated list of PCR indexes.
pub fn parse_pcr_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split([',', '+']).map(str::trim).filter(|p| !p.is_empty()) {
        let n: u32 = part
            .parse()
            .map_err(|_| format!("'{part}' is not a PCR number (0-23)"))?;
        if n >= PCR_COUNT {
            return Err(format!("PCR {n} out of range (0-23)"));
        }
        out.push(n);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub fn selection_list(bank: PcrBank, pcrs: &[u32]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&i| {
            PcrSlot::try_from(1u32 << i).map_err(|e| TpmError::Invalid(format!("PCR {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(bank.hashing_algorithm(), &slots)
        .build()
        .map_err(|e| TpmError::Invalid(format!("PCR selection: {e}")))
}

/// Current values of `pcrs` in `bank`, by index.
pub fn read(
    ctx: &mut Context,
    bank: PcrBank,
    pcrs: &[u32],
) -> Result<BTreeMap<u32, Vec<u8>>, TpmError> {
    if pcrs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let data =
        read_all(ctx, selection_list(bank, pcrs)?).map_err(|e| command_error("PCR_Read", e))?;
    let bank_data = data.pcr_bank(bank.hashing_algorithm()).ok_or_else(|| {
        TpmError::Invalid(format!(
            "the TPM has no allocated {bank} PCR bank; choose another with --pcr-bank"
        ))
    })?;
    let mut out = BTreeMap::new();
    for &i in pcrs {
        let slot = PcrSlot::try_from(1u32 << i).map_err(|e| TpmError::Invalid(e.to_string()))?;
        let value = bank_data.get_digest(slot).ok_or_else(|| {
            TpmError::Invalid(format!("PCR {i} is not readable in the {bank} bank"))
        })?;
        out.insert(i, value.value().to_vec());
    }
    Ok(out)
}

/// Extends `pcr` in every bank of `banks` with the bank's digest of `event`, in one command.
pub fn extend_event(
    ctx: &mut Context,
    pcr: u32,
    banks: &[PcrBank],
    event: &[u8],
) -> Result<(), TpmError> {
    let handle = pcr_handle(pcr)?;
    let mut values = DigestValues::new();
    for &bank in banks {
        let d = Digest::try_from(bank.hash(event))
            .map_err(|e| TpmError::Invalid(format!("digest: {e}")))?;
        values.set(bank.hashing_algorithm(), d);
    }
    ctx.execute_with_session(
        Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
        |c| c.pcr_extend(handle, values),
    )
    .map_err(|e| command_error("PCR_Extend", e))
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    PcrHandle::try_from(pcr).map_err(|e| TpmError::Invalid(format!("PCR {pcr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known_answers() {
        // Extend of SHA1("secureboot") onto zeros: clevis vector (tokens-clevis.md §11).
        let m = PcrBank::Sha1.hash(b"secureboot");
        assert_eq!(
            PcrBank::Sha1.extend(&[0u8; 20], &m),
            hex::decode("ce84b09003dfa89b8e8bc7d9e4812047ec5c4682")
        );
    }

    mod hex {
        pub fn decode(s: &str) -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        }
    }

    #[test]
    fn selection_bitmap() {
        assert_eq!(
            pcr_selection_bytes(PcrBank::Sha1, &[7]),
            vec![0, 0, 0, 1, 0, 4, 3, 0x80, 0, 0]
        );
        assert_eq!(
            pcr_selection_bytes(PcrBank::Sha256, &[4, 9, 15]),
            vec![0, 0, 0, 1, 0, 0x0b, 3, 0x10, 0x82, 0]
        );
    }

    #[test]
    fn parses_lists() {
        assert_eq!(parse_pcr_list("7"), Ok(vec![7]));
        assert_eq!(parse_pcr_list("15,7+7"), Ok(vec![7, 15]));
        assert!(parse_pcr_list("24").is_err());
        assert!(parse_pcr_list("x").is_err());
    }
}
