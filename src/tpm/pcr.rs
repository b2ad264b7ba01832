//! PCR banks, selections, PCR_Read and the fence's PCR_Event.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use tss_esapi_sys::{
    ESYS_TR_NONE, ESYS_TR_PASSWORD, Esys_PCR_Event, Esys_PCR_Read, TPM2B_EVENT, TPML_DIGEST,
    TPML_DIGEST_VALUES, TPML_PCR_SELECTION,
};

use super::context::Tpm;
use super::error::TpmError;
use super::wire::{EsysBox, check, generic, pcr_selection};

pub const PCR_COUNT: u32 = 24;
/// ESYS_TR values 0..=31 are the PCRs.
const ESYS_TR_PCR0: u32 = 0;
/// TPM2B_EVENT holds at most this much.
const MAX_EVENT: usize = 1024;

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

impl Tpm {
    /// Extends `pcr` with `event` in every bank the TPM has allocated (TPM2_PCR_Event: the
    /// TPM hashes the data once per bank), in one command.
    pub fn pcr_event(&mut self, pcr: u32, event: &[u8]) -> Result<(), TpmError> {
        if pcr > 23 {
            return Err(TpmError::Invalid(format!("PCR {pcr} out of range")));
        }
        let digest;
        let data = if event.len() > MAX_EVENT {
            digest = PcrBank::Sha256.hash(event);
            &digest[..]
        } else {
            event
        };
        let mut ev = TPM2B_EVENT {
            size: data.len() as u16,
            buffer: [0u8; MAX_EVENT],
        };
        ev.buffer[..data.len()].copy_from_slice(data);
        let mut digests = EsysBox::<TPML_DIGEST_VALUES>::null();
        // SAFETY: pointers to live locals; digests is freed by its box.
        let rc = unsafe {
            Esys_PCR_Event(
                self.ctx,
                ESYS_TR_PCR0 + pcr,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &ev,
                &mut digests.0,
            )
        };
        check("PCR_Event", rc).map_err(generic)
    }

    /// Current values of `pcrs` in `bank` (PCR_Read returns at most 8 per call).
    pub fn pcr_read(
        &mut self,
        bank: PcrBank,
        pcrs: &[u32],
    ) -> Result<BTreeMap<u32, Vec<u8>>, TpmError> {
        let mut out = BTreeMap::new();
        for chunk in pcrs.chunks(8) {
            let selection = pcr_selection(bank, chunk);
            let mut counter = 0u32;
            let mut sel_out = EsysBox::<TPML_PCR_SELECTION>::null();
            let mut values = EsysBox::<TPML_DIGEST>::null();
            // SAFETY: pointers to live locals; outputs are freed by their boxes.
            let rc = unsafe {
                Esys_PCR_Read(
                    self.ctx,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    &selection,
                    &mut counter,
                    &mut sel_out.0,
                    &mut values.0,
                )
            };
            check("PCR_Read", rc).map_err(generic)?;
            let (Some(sel), Some(vals)) = (sel_out.get(), values.get()) else {
                return Err(TpmError::Invalid("PCR_Read returned nothing".into()));
            };
            // The TPM returns the selected PCRs in ascending order; a PCR missing from
            // the returned selection is not allocated in that bank.
            let mut returned = Vec::new();
            for s in &sel.pcrSelections[..(sel.count as usize).min(16)] {
                for i in 0..(u32::from(s.sizeofSelect) * 8).min(32) {
                    if s.pcrSelect[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                        returned.push(i);
                    }
                }
            }
            for (i, d) in returned
                .into_iter()
                .zip(&vals.digests[..(vals.count as usize).min(8)])
            {
                out.insert(i, d.buffer[..usize::from(d.size).min(64)].to_vec());
            }
        }
        if let Some(missing) = pcrs.iter().find(|i| !out.contains_key(i)) {
            return Err(TpmError::Invalid(format!(
                "PCR {missing} is not readable in the {bank} bank (is the bank allocated?); choose another with --pcr-bank"
            )));
        }
        Ok(out)
    }
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
