//! `sealroot remove`: drop sealroot tokens and their keyslots, never the last way in.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::tokens::sealroot::TOKEN_TYPE;
use crate::tokens::{token_keyslots, token_type};

pub struct RemoveOptions {
    pub device: PathBuf,
    /// None: every sealroot token.
    pub token: Option<u32>,
    pub force: bool,
}

pub struct Removed {
    pub tokens: Vec<u32>,
    pub keyslots: Vec<u32>,
}

pub fn run(o: &RemoveOptions) -> Result<Removed> {
    let mut vol = Volume::open(&o.device)?;
    let tokens = vol.tokens()?;
    let chosen: Vec<_> = match o.token {
        Some(id) => {
            let t = tokens
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| Error::Usage(format!("{}: no token {id}", o.device.display())))?;
            if token_type(&t.json) != TOKEN_TYPE {
                return Err(Error::Usage(format!(
                    "token {id} is a '{}' token, not a sealroot token; sealroot removes only its own",
                    token_type(&t.json)
                )));
            }
            vec![t]
        }
        None => tokens
            .iter()
            .filter(|t| token_type(&t.json) == TOKEN_TYPE)
            .collect(),
    };
    if chosen.is_empty() {
        return Err(Error::NoUsableToken(format!(
            "{}: no sealroot token to remove",
            o.device.display()
        )));
    }
    let chosen_ids: BTreeSet<u32> = chosen.iter().map(|t| t.id).collect();
    // A keyslot still claimed by a token that stays is kept.
    let kept_claims: BTreeSet<u32> = tokens
        .iter()
        .filter(|t| !chosen_ids.contains(&t.id))
        .flat_map(|t| token_keyslots(&t.json))
        .collect();
    let slots: BTreeSet<u32> = chosen
        .iter()
        .flat_map(|t| token_keyslots(&t.json))
        .filter(|s| !kept_claims.contains(s))
        .collect();
    let keyslots = vol.keyslots()?;
    // A token's keyslot claim is header data: destroy only slots sealroot could have made.
    if !o.force
        && let Some(k) = keyslots
            .iter()
            .find(|k| slots.contains(&k.id) && !k.looks_sealed())
    {
        return Err(Error::Usage(format!(
            "refusing to remove: keyslot {} claimed by a sealroot token was not made by sealroot (its KDF is {}, sealroot's slots use PBKDF2-SHA512 with 1000 iterations); the token may have been altered; check with `cryptsetup luksDump`, then pass --force if you are sure",
            k.id, k.kdf
        )));
    }
    let active: BTreeSet<u32> = keyslots.iter().map(|k| k.id).collect();
    let remaining = active.difference(&slots).count();
    if remaining == 0 && !o.force {
        return Err(Error::Usage(format!(
            "refusing to remove keyslot(s) {slots:?}: no other keyslot would open {}; add a passphrase first (cryptsetup luksAddKey), or pass --force",
            o.device.display()
        )));
    }
    // Keyslots first, then tokens. libcryptsetup drops a destroyed keyslot from the tokens
    // that claim it, so a run stopped in between (kill -9, power cut) leaves a token that
    // claims nothing, which the next `remove` finds and deletes. Tokens first would leave a
    // keyslot that no token names: no later `remove` could find it, and its sealed secret
    // would still open the volume for whoever kept a copy of the token. If destroying a
    // keyslot fails, its token still claims it and nothing is lost.
    for slot in &slots {
        if active.contains(slot) {
            vol.destroy_keyslot(*slot)?;
        }
    }
    for id in &chosen_ids {
        vol.remove_token(*id)?;
    }
    Ok(Removed {
        tokens: chosen_ids.into_iter().collect(),
        keyslots: slots.into_iter().filter(|s| active.contains(s)).collect(),
    })
}
