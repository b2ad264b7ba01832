//! Keyslots by volume key and LUKS2 re-encryption to a new volume key: what first-boot
//! provisioning needs. The new key's keyslots are added before the data pass, unbound to
//! the data segment; when re-encryption finishes, libcryptsetup binds them and drops every
//! keyslot of the old key.

use std::ffi::c_void;

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptReencrypt, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{
    CryptReencryptDirectionInfo, CryptReencryptInfo, CryptReencryptModeInfo, KeyslotInfo,
};
use libcryptsetup_rs::{CryptParamsLuks2, CryptParamsReencrypt, Either};

use super::finish_window::is_finished_uncommitted;
use super::volume::{LuksError, Volume};
use crate::secret::Secret;

const LOCK_DIR: &str = "/run/cryptsetup";

/// 32 MiB in 512-byte sectors.
const MAX_HOTZONE_SECTORS: u64 = 32 * 1024 * 1024 / 512;

/// What a keyslot number holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Opens the data segment.
    Bound,
    /// Holds a key not (yet) used by the data segment.
    Unbound,
}

/// Where re-encryption stands, from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reencryption {
    None,
    /// In progress, stopped cleanly.
    Clean,
    /// In progress, interrupted (crash or power cut): recovered on resume.
    Crash,
}

/// Called with (bytes done, total); returning false stops re-encryption cleanly.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64) -> bool;

impl Volume {
    pub fn slot_state(&mut self, slot: u32) -> Result<SlotState, LuksError> {
        let r = self.dev.keyslot_handle().status(slot);
        match r.map_err(|e| self.op_err("read keyslot status", e))? {
            KeyslotInfo::Active | KeyslotInfo::ActiveLast => Ok(SlotState::Bound),
            KeyslotInfo::Unbound => Ok(SlotState::Unbound),
            KeyslotInfo::Inactive | KeyslotInfo::Invalid => Ok(SlotState::Free),
        }
    }

    /// The lowest free keyslot number.
    pub fn free_slot(&mut self) -> Result<u32, LuksError> {
        for slot in 0..32 {
            if self.slot_state(slot)? == SlotState::Free {
                return Ok(slot);
            }
        }
        Err(LuksError::Op {
            op: "add keyslot",
            path: self.path().display().to_string(),
            reason: "no free keyslot".into(),
        })
    }

    /// Adds keyslot `slot` for `passphrase` wrapping `volume_key`; `unbound` for a key the
    /// data segment does not use yet (re-encryption's target key).
    pub fn add_keyslot_by_key(
        &mut self,
        slot: u32,
        volume_key: &Secret,
        passphrase: &[u8],
        unbound: bool,
    ) -> Result<u32, LuksError> {
        self.use_minimal_pbkdf()?;
        let flags = if unbound {
            CryptVolumeKey::NO_SEGMENT | CryptVolumeKey::DIGEST_REUSE
        } else {
            CryptVolumeKey::empty()
        };
        let r = self.dev.keyslot_handle().add_by_key(
            Some(slot),
            Some(Either::Left(volume_key.expose())),
            passphrase,
            flags,
        );
        r.map_err(|e| self.op_err("add keyslot", e))
    }

    pub fn reencryption(&mut self) -> Result<Reencryption, LuksError> {
        let params = reencrypt_params(CryptReencrypt::empty());
        let r = self.dev.reencrypt_handle().status(params);
        match r.map_err(|e| self.op_err("read re-encryption status", e))? {
            CryptReencryptInfo::None => Ok(Reencryption::None),
            CryptReencryptInfo::Clean => Ok(Reencryption::Clean),
            CryptReencryptInfo::Crash => Ok(Reencryption::Crash),
            CryptReencryptInfo::Invalid => Err(LuksError::Op {
                op: "read re-encryption status",
                path: self.path().display().to_string(),
                reason: "the re-encryption metadata is invalid".into(),
            }),
        }
    }

    /// Sets up re-encryption from keyslot `old`'s key to keyslot `new`'s, both opened by
    /// `passphrase`, in the header only: no data moves yet.
    pub fn start_reencryption(
        &mut self,
        passphrase: &[u8],
        old: u32,
        new: u32,
    ) -> Result<(), LuksError> {
        ensure_lock_dir();
        // The cipher and sector size of the data segment stay; only the key changes.
        let cipher = self.dev.status_handle().get_cipher();
        let mode = self.dev.status_handle().get_cipher_mode();
        let (cipher, mode) = match (cipher, mode) {
            (Ok(c), Ok(m)) => (c, m),
            _ => {
                return Err(LuksError::Op {
                    op: "re-encrypt",
                    path: self.path().display().to_string(),
                    reason: "cannot read the data segment's cipher".into(),
                });
            }
        };
        let sector_size = self
            .metadata()?
            .pointer("/segments/0/sector_size")
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0);
        let mut params = reencrypt_params(CryptReencrypt::INITIALIZE_ONLY);
        if let Some(luks2) = params.luks2.as_mut() {
            luks2.sector_size = sector_size;
        }
        let init = self.dev.reencrypt_handle().reencrypt_init_by_passphrase(
            None,
            passphrase,
            Some(old),
            Some(new),
            Some((cipher.as_str(), mode.as_str())),
            params,
        );
        init.map(|_| ())
            .map_err(|e| self.op_err("set up re-encryption", e))
    }

    /// Runs (or resumes, after a crash too) the re-encryption set up before. `active`:
    /// the mapping of the volume when it is in use (online), None for an unused device.
    pub fn resume_reencryption(
        &mut self,
        passphrase: &[u8],
        active: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<(), LuksError> {
        ensure_lock_dir();
        // libcryptsetup 2.6 takes a finished pass whose last header update is missing for
        // one not started, and would re-encrypt the data a second time, destroying it:
        // `commit_finished_reencryption` is for that header, never a resume.
        if is_finished_uncommitted(&self.metadata()?) {
            return Err(LuksError::Op {
                op: "resume re-encryption",
                path: self.path().display().to_string(),
                reason: "the data pass had finished before libcryptsetup's last header update; it is not resumed (that would re-encrypt the data a second time), but finished in the header".into(),
            });
        }
        // A run stopped inside a hotzone (kill -9, power cut) leaves the header in the
        // crash state, which libcryptsetup refuses to resume (EINVAL) until the hotzone is
        // restored from its checksums. Activation does that at boot; an unused device (an
        // image file, `first-boot` or `finish-provisioning` run offline) gets it here, as
        // `cryptsetup repair` would do it.
        if active.is_none() && self.reencryption()? == Reencryption::Crash {
            log::info!("recovering the re-encryption interrupted in a hotzone");
            let recover = self.dev.reencrypt_handle().reencrypt_init_by_passphrase(
                None,
                passphrase,
                None,
                None,
                None,
                reencrypt_params(CryptReencrypt::RECOVERY),
            );
            recover.map_err(|e| self.op_err("recover interrupted re-encryption", e))?;
            // Recovering the last hotzone also finishes the re-encryption (and drops the old
            // key's keyslots): nothing is left to resume.
            if self.reencryption()? == Reencryption::None {
                return Ok(());
            }
        }
        let init = self.dev.reencrypt_handle().reencrypt_init_by_passphrase(
            active,
            passphrase,
            None,
            None,
            None,
            reencrypt_params(CryptReencrypt::RESUME_ONLY),
        );
        init.map_err(|e| self.op_err("resume re-encryption", e))?;
        let mut callback: Progress<'_> = progress;
        let run = self
            .dev
            .reencrypt_handle()
            .reencrypt2(Some(on_progress), Some(&mut callback));
        run.map_err(|e| self.op_err("re-encrypt", e))
    }

    /// Activation while re-encryption is in progress needs both keys: by passphrase.
    pub fn activate_by_passphrase(
        &mut self,
        name: &str,
        passphrase: &[u8],
    ) -> Result<(), LuksError> {
        let r = self.dev.activate_handle().activate_by_passphrase(
            Some(name),
            None,
            passphrase,
            CryptActivate::empty(),
        );
        r.map(|_| ()).map_err(|e| self.op_err("activate", e))
    }
}

/// libcryptsetup serializes re-encryption with a lock file there; an initrd may not have
/// the directory yet.
fn ensure_lock_dir() {
    if let Err(e) = std::fs::create_dir_all(LOCK_DIR) {
        log::debug!("cannot create {LOCK_DIR}: {e}");
    }
}

unsafe extern "C" fn on_progress(size: u64, offset: u64, usr: *mut c_void) -> i32 {
    if usr.is_null() {
        return 0;
    }
    // SAFETY: `usr` is the `&mut Progress` passed to reencrypt2 in `Volume::reencrypt`,
    // alive for the whole run.
    let callback = unsafe { &mut *usr.cast::<Progress<'_>>() };
    if callback(offset, size) { 0 } else { 1 }
}

fn reencrypt_params(flags: CryptReencrypt) -> CryptParamsReencrypt {
    CryptParamsReencrypt {
        mode: CryptReencryptModeInfo::Reencrypt,
        direction: CryptReencryptDirectionInfo::Forward,
        // Every hotzone is checksummed before it is overwritten: a crash or power cut at
        // any moment is recovered on the next run.
        resilience: "checksum".into(),
        hash: "sha256".into(),
        data_shift: 0,
        // Progress is written to the header after each hotzone: bounded, so that an
        // interrupted run loses little work and the metadata moves on visibly.
        max_hotzone_size: MAX_HOTZONE_SECTORS,
        device_size: 0,
        luks2: Some(CryptParamsLuks2 {
            pbkdf: None,
            integrity: None,
            integrity_params: None,
            data_alignment: 0,
            data_device: None,
            sector_size: 0,
            label: None,
            subsystem: None,
        }),
        flags,
    }
}
