//! Approvals of sealroot tokens with a policy key, as a plan gathers and chooses them:
//! from the header and files, verified in software, the newest that holds now.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::{UnsealPlan, token_type};
use crate::tpm::pcr::PcrBank;
use crate::tpm::{Tpm, TpmError};

/// A token's policy key, its approvals (verified in software, newest first) and the one
/// chosen for the current PCR values.
pub struct Approvals {
    pub key: crate::approval::PolicyKey,
    pub key_public: Vec<u8>,
    pub policy_ref: Vec<u8>,
    pub counter: Option<crate::tpm::nv::NvCounter>,
    /// A local approval key's private half, encrypted under the sealed secret.
    pub local_key: Option<Vec<u8>>,
    pub found: Vec<crate::approval::Approval>,
    /// Approvals that did not verify, with why (for status).
    pub refused: Vec<(String, String)>,
    /// (approval, set) chosen by `choose_approval`, and the PolicyOR branches.
    pub chosen: Option<(usize, usize, Vec<Vec<u8>>)>,
}

impl UnsealPlan {
    /// Approvals for a token with a policy key: `sealroot-approval` tokens of the same
    /// header, then `files`; each verified in software against the token's key and
    /// policyRef (a bad one costs no TPM command), newest first.
    pub fn load_approvals(
        &mut self,
        header: &[crate::luks::volume::TokenEntry],
        files: &[PathBuf],
    ) {
        let Some(a) = self.approvals.as_mut() else {
            return;
        };
        let mut candidates: Vec<(String, Value)> = header
            .iter()
            .filter(|t| token_type(&t.json) == crate::approval::TOKEN_TYPE)
            .map(|t| (format!("header token {}", t.id), t.json.clone()))
            .collect();
        for f in files {
            let read = std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
            match read {
                Ok(v) => candidates.push((f.display().to_string(), v)),
                Err(e) => a.refused.push((f.display().to_string(), e)),
            }
        }
        for (source, json) in candidates {
            match crate::approval::verify(&json, &a.key, &a.policy_ref, a.counter.as_ref(), &source)
            {
                Ok(found) => a.found.push(found),
                Err(why) => a.refused.push((source, why)),
            }
        }
        a.found.sort_by_key(|x| std::cmp::Reverse(x.serial));
    }

    /// Picks the newest approval with a PCR set that holds now (one PCR_Read). None
    /// holds: a policy mismatch naming the PCRs.
    pub fn choose_approval(&mut self, tpm: &mut Tpm) -> Result<(), TpmError> {
        let Some(a) = self.approvals.as_mut() else {
            return Ok(());
        };
        if a.found.is_empty() {
            return Err(TpmError::PolicyMismatch {
                detail: "no approval for this token (sealroot approve writes one); use `sealroot recover`".into(),
            });
        }
        let mut wanted: BTreeMap<PcrBank, Vec<u32>> = BTreeMap::new();
        for ap in &a.found {
            wanted.entry(ap.bank).or_default().extend(ap.pcrs());
        }
        let mut current = BTreeMap::new();
        for (bank, mut pcrs) in wanted {
            pcrs.sort_unstable();
            pcrs.dedup();
            for (i, v) in tpm.pcr_read(bank, &pcrs)? {
                current.insert((bank, i), v);
            }
        }
        for (i, ap) in a.found.iter().enumerate() {
            if let Some(j) = ap.matching_set(&current) {
                log::debug!("approval from {} (serial {}) holds", ap.source, ap.serial);
                a.chosen = Some((i, j, ap.or_branches()));
                return Ok(());
            }
        }
        let differ: Vec<u32> = a
            .found
            .iter()
            .flat_map(|ap| {
                ap.sets
                    .iter()
                    .flatten()
                    .filter(|(i, v)| current.get(&(ap.bank, *i)) != Some(v))
                    .map(|(i, _)| *i)
                    .collect::<Vec<_>>()
            })
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        Err(TpmError::PolicyMismatch {
            detail: format!(
                "no approval covers the current PCR values ({} approval(s); PCR {} differ(s)); approve the new values (`sealroot approve`), or use `sealroot recover`",
                a.found.len(),
                differ
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}
