//! `sealroot escrow show`: the recovery key escrowed in the header at first boot, as the
//! armored age file it is; `age -d -i IDENTITY` decrypts it.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::tokens;
use crate::tokens::sealroot::RECOVERY_TOKEN_TYPE;

pub fn show(device: &Path) -> Result<String> {
    let mut vol = Volume::open(device)?;
    let mut out = String::new();
    for entry in vol.tokens()? {
        if tokens::token_type(&entry.json) != RECOVERY_TOKEN_TYPE {
            continue;
        }
        if let Some(text) = entry.json.get("escrow").and_then(Value::as_str) {
            // The header is attacker input: only an age armor goes to the terminal.
            if !is_age_armor(text) {
                return Err(Error::NoUsableToken(format!(
                    "token {} holds an escrow that is not an age file",
                    entry.id
                )));
            }
            out.push_str(text);
        }
    }
    if out.is_empty() {
        return Err(Error::NoUsableToken(format!(
            "{} has no escrowed recovery key",
            device.display()
        )));
    }
    Ok(out)
}

fn is_age_armor(text: &str) -> bool {
    let body = text
        .strip_prefix("-----BEGIN AGE ENCRYPTED FILE-----\n")
        .and_then(|t| t.strip_suffix("-----END AGE ENCRYPTED FILE-----\n"));
    body.is_some_and(|b| {
        b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'\n'))
    })
}
