//! `sealroot provision`: mark an image so that each instance makes itself unique on its
//! first boot (`firstboot`). Runs on the builder, in a chroot or on an image file: no TPM.

use std::path::PathBuf;

use crate::console;
use crate::error::{Error, Result};
use crate::escrow::Recipient;
use crate::firstboot;
use crate::input;
use crate::luks::Volume;
use crate::luks::reencrypt::{Reencryption, SlotState};
use crate::secret::Secret;
use crate::tokens;
use crate::tokens::provision::{KEY_LEN, ProvisionToken};
use crate::tpm::pcr::PcrBank;

pub struct ProvisionOptions {
    pub device: PathBuf,
    pub unlock_key_file: Option<PathBuf>,
    /// Bound at first boot to that boot's values (plus the fence).
    pub pcrs: Vec<u32>,
    pub bank: PcrBank,
    pub fence_pcr: Option<u32>,
    /// age recipient for each instance's recovery key; None only with `no_recovery`.
    pub escrow: Option<String>,
    pub no_recovery: bool,
    pub reencrypt: bool,
    /// The data pass before the root is mounted (else after switch-root).
    pub reencrypt_in_initrd: bool,
}

/// Returns the provision token's id and the provisioning keyslot.
pub fn run(o: &ProvisionOptions) -> Result<(u32, u32)> {
    if let Some(f) = o.fence_pcr {
        crate::trust::check_fence(f, &o.pcrs).map_err(Error::Usage)?;
    }
    let escrow = match (&o.escrow, o.no_recovery) {
        (Some(r), false) => Some(Recipient::parse(r).map_err(Error::Usage)?),
        (None, true) => None,
        _ => {
            return Err(Error::Usage(
                "say where each instance's recovery key goes: --escrow AGE_RECIPIENT (from age-keygen), or --no-recovery to have none".into(),
            ));
        }
    };
    let mut vol = Volume::open(&o.device)?;
    if firstboot::find(&mut vol)?.is_some() {
        return Err(Error::Usage(format!(
            "{} is already marked for provisioning; nothing was changed",
            o.device.display()
        )));
    }
    if vol.reencryption()? != Reencryption::None {
        return Err(Error::Usage(format!(
            "{} is being re-encrypted; finish that first (cryptsetup reencrypt --resume-only)",
            o.device.display()
        )));
    }
    // A key sealed to the builder's TPM is of no use on an instance, and a token of the
    // image would outlive the keyslots the first boot removes: the image carries none.
    let found: Vec<String> = vol
        .tokens()?
        .iter()
        .map(|t| format!("{} ({})", t.id, tokens::token_type(&t.json)))
        .collect();
    if !found.is_empty() {
        return Err(Error::Usage(format!(
            "{} has tokens {} (keys sealed to this machine's TPM or recovery keys of the image); remove them first (`sealroot remove --all`, `cryptsetup token remove`)",
            o.device.display(),
            crate::console::escape(&found.join(", "))
        )));
    }
    let existing = match &o.unlock_key_file {
        Some(p) => input::read_key_file(p)?,
        None => input::read_terminal(&format!("Passphrase that opens {}: ", o.device.display()))?,
    };
    vol.volume_key(None, existing.expose())?;

    let key = Secret::random(KEY_LEN).map_err(|e| Error::Other(format!("no randomness: {e}")))?;
    let mut token = ProvisionToken {
        key,
        provisioning_keyslot: 0,
        image_keyslots: Vec::new(),
        bank: o.bank,
        pcrs: o
            .pcrs
            .iter()
            .copied()
            .filter(|&p| Some(p) != o.fence_pcr)
            .collect(),
        fence_pcr: o.fence_pcr,
        escrow,
        reencrypt: o.reencrypt,
        reencrypt_in_initrd: o.reencrypt_in_initrd,
        new_keyslot: None,
        pending_keyslot: None,
        done: Vec::new(),
    };
    let slot = vol.add_keyslot(existing.expose(), token.passphrase().expose())?;
    token.provisioning_keyslot = slot;
    for s in 0..32 {
        if vol.slot_state(s)? != SlotState::Free {
            token.image_keyslots.push(s);
        }
    }
    let id = match vol.add_token(&token.to_json()) {
        Ok(id) => id,
        Err(e) => {
            let _ = vol.destroy_keyslot(slot);
            return Err(e.into());
        }
    };
    console::error(
        "warning: the provisioning key is stored in the header until each instance's first boot: until then the image is only as secret as the image file",
    );
    if !o.reencrypt {
        console::error(
            "warning: --no-reencrypt: every instance keeps the image's volume key, so whoever had the image can read an instance's disk (snapshots, backups); only the keyslots become per-instance",
        );
    }
    Ok((id, slot))
}
