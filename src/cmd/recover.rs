//! `sealroot recover`: open a volume with the recovery key or a passphrase. Never needs
//! the TPM.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::firstboot;
use crate::input;
use crate::luks::{LuksError, Volume};
use crate::recovery;
use crate::secret::Secret;

const TRIES: usize = 3;

pub struct RecoverOptions {
    pub device: PathBuf,
    pub name: String,
    pub test: bool,
    /// Read the key from this file (`-` for stdin) instead of the terminal.
    pub key_file: Option<PathBuf>,
}

/// Returns the keyslot that opened.
pub fn run(o: &RecoverOptions) -> Result<u32> {
    let mut vol = Volume::open(&o.device)?;
    // Recovery must not depend on a provision token (attacker input, like any): a bad one
    // is reported and the key is tried anyway.
    if !o.test
        && let Err(e) = firstboot::finish_cut_off_data_pass(&mut vol)
    {
        crate::console::error(&format!("{}: {e}", o.device.display()));
    }
    let tries = if o.key_file.is_some() { 1 } else { TRIES };
    let mut last = None;
    for attempt in 0..tries {
        let typed = match &o.key_file {
            Some(p) => input::read_line_file(p)?,
            None => input::read_terminal(&format!(
                "Recovery key or passphrase for {}: ",
                o.device.display()
            ))?,
        };
        match try_input(&mut vol, &typed) {
            Ok((slot, vk)) => {
                if !o.test {
                    vol.activate(&o.name, &vk)?;
                }
                return Ok(slot);
            }
            Err(e @ LuksError::WrongPassphrase { .. }) => {
                if attempt + 1 < tries {
                    eprintln!(
                        "sealroot: that key does not open {}; try again",
                        o.device.display()
                    );
                }
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(Error::from)
        .unwrap_or_else(|| Error::Other("no attempt made".into())))
}

/// The canonical recovery-key form first (so dashes and case do not matter), then the
/// input exactly as typed (an ordinary passphrase).
fn try_input(vol: &mut Volume, typed: &Secret) -> std::result::Result<(u32, Secret), LuksError> {
    if let Some(canonical) = recovery::normalize(typed.expose())
        && let Ok(found) = vol.volume_key(None, canonical.expose())
    {
        return Ok(found);
    }
    vol.volume_key(None, typed.expose())
}
