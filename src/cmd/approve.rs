//! `sealroot approve`: sign PCR values for tokens sealed to a policy key, so they unlock
//! under those values (after an update) without being sealed again. Runs where the private
//! key is — the admin's or builder's machine, never the initrd.

use std::path::PathBuf;

use serde_json::Value;

use crate::approval::{self, TOKEN_TYPE};
use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::pcr_values;
use crate::tokens::{self, sealroot::SealrootToken};

pub struct ApproveOptions {
    pub device: PathBuf,
    pub key: PathBuf,
    /// One PCR set per entry (several: PolicyOR, e.g. the running and the next kernel).
    pub pcr_values: Vec<String>,
    /// Only this token (default: every sealroot token that trusts the key).
    pub token: Option<u32>,
    /// Write the approval here instead of into the header.
    pub out: Option<PathBuf>,
    /// Remove older approvals of the same token from the header.
    pub replace: bool,
}

/// Returns (token approved for, where the approval went).
pub fn run(o: &ApproveOptions) -> Result<Vec<(u32, String)>> {
    let pem = std::fs::read_to_string(&o.key)
        .map_err(|e| Error::Usage(format!("--key: cannot read {}: {e}", o.key.display())))?;
    let key = approval::public_of(&pem).map_err(|e| Error::Usage(format!("--key: {e}")))?;
    let mut sets = Vec::new();
    let mut bank = None;
    for spec in &o.pcr_values {
        let v = pcr_values::parse(spec, bank).map_err(Error::Usage)?;
        if v.values.is_empty() {
            return Err(Error::Usage(format!("--pcr-values {spec}: no PCRs")));
        }
        bank = Some(v.bank);
        sets.push(v.values);
    }
    let bank = bank.ok_or_else(|| Error::Usage("give --pcr-values at least once".into()))?;

    let mut vol = Volume::open(&o.device)?;
    let header = vol.tokens()?;
    let mut targets = Vec::new();
    for entry in &header {
        if tokens::token_type(&entry.json) != tokens::sealroot::TOKEN_TYPE
            || o.token.is_some_and(|t| t != entry.id)
        {
            continue;
        }
        let Ok(token) = SealrootToken::from_json(entry.id, &entry.json) else {
            continue;
        };
        if let Some((k, policy_ref)) = &token.policy_key
            && k.name() == key.name()
        {
            if let Some(f) = token.fence_pcr
                && sets.iter().flatten().any(|(i, _)| *i == f)
            {
                return Err(Error::Usage(format!(
                    "PCR {f} is token {}'s fence, which the token checks itself; leave it out of the approval",
                    entry.id
                )));
            }
            targets.push((entry.id, policy_ref.clone(), token.counter.clone()));
        }
    }
    if targets.is_empty() {
        return Err(Error::NoUsableToken(format!(
            "no sealroot token on {} trusts this key{}; enroll with --policy-key (its public half)",
            o.device.display(),
            o.token.map(|t| format!(" (token {t})")).unwrap_or_default()
        )));
    }
    if o.out.is_some() && targets.len() > 1 {
        return Err(Error::Usage(
            "several tokens trust this key: choose one with --token for --out".into(),
        ));
    }
    let mut done = Vec::new();
    for (id, policy_ref, counter) in targets {
        let latest = header
            .iter()
            .filter(|t| approval_for(&t.json, &policy_ref))
            .filter_map(|t| t.json.get("serial").and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        let signed = approval::sign(
            &pem,
            &policy_ref,
            bank,
            &sets,
            approval::next_serial(latest),
            counter.as_ref(),
        )
        .map_err(Error::Usage)?;
        // What `predict` recorded of each approved boot, so `status` can name a change.
        let events: Option<Vec<_>> = o
            .pcr_values
            .iter()
            .map(|s| pcr_values::events_of(s))
            .collect();
        let mut signed = signed;
        signed.events = events;
        let json = serde_json::to_value(&signed).map_err(|e| Error::Other(e.to_string()))?;
        match &o.out {
            Some(path) => {
                let text =
                    serde_json::to_string_pretty(&json).map_err(|e| Error::Other(e.to_string()))?;
                std::fs::write(path, text + "\n")
                    .map_err(|e| Error::Other(format!("cannot write {}: {e}", path.display())))?;
                done.push((id, path.display().to_string()));
            }
            None => {
                let new_id = vol.add_token(&json)?;
                if o.replace {
                    for old in &header {
                        if approval_for(&old.json, &policy_ref) {
                            vol.remove_token(old.id)?;
                        }
                    }
                }
                done.push((id, format!("header token {new_id}")));
            }
        }
    }
    Ok(done)
}

fn approval_for(json: &Value, policy_ref: &[u8]) -> bool {
    tokens::token_type(json) == TOKEN_TYPE
        && json.get("policy_ref").and_then(Value::as_str) == Some(hex::encode(policy_ref).as_str())
}
