//! `sealroot revoke`: bump the NV counter of revocable tokens (enroll --revocable), so
//! that every approval signed before no longer unseals; new approvals (`approve`) are
//! signed for the new value, which the token records.

use std::path::PathBuf;

use serde_json::Value;

use crate::approval;
use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::tokens::{self, sealroot::SealrootToken};
use crate::tpm::LazyTpm;

pub struct RevokeOptions {
    pub device: PathBuf,
    pub token: Option<u32>,
    pub tcti: Option<String>,
}

/// Returns (token, new counter value, approvals removed from the header).
pub fn run(o: &RevokeOptions) -> Result<Vec<(u32, u64, usize)>> {
    let mut vol = Volume::open(&o.device)?;
    let header = vol.tokens()?;
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let mut done = Vec::new();
    for entry in &header {
        if tokens::token_type(&entry.json) != tokens::sealroot::TOKEN_TYPE
            || o.token.is_some_and(|t| t != entry.id)
        {
            continue;
        }
        let Ok(mut token) = SealrootToken::from_json(entry.id, &entry.json) else {
            continue;
        };
        let (Some(counter), Some((_, policy_ref))) = (&token.counter, &token.policy_key) else {
            continue;
        };
        let bumped = tpm.get()?.bump_counter(counter.index)?;
        let policy_ref = hex::encode(policy_ref);
        token.counter = Some(bumped.clone());
        vol.replace_token(entry.id, &token.to_json())?;
        // Approvals for the old value only clutter the header now.
        let mut removed = 0;
        for old in &header {
            let stale = tokens::token_type(&old.json) == approval::TOKEN_TYPE
                && old.json.get("policy_ref").and_then(Value::as_str) == Some(policy_ref.as_str())
                && old.json.get("nv_value").and_then(Value::as_u64) != Some(bumped.value);
            if stale {
                vol.remove_token(old.id)?;
                removed += 1;
            }
        }
        done.push((entry.id, bumped.value, removed));
    }
    if done.is_empty() {
        return Err(Error::NoUsableToken(format!(
            "no revocable sealroot token on {} (enroll --policy-key --revocable makes one)",
            o.device.display()
        )));
    }
    Ok(done)
}
