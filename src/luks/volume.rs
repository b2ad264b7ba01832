//! One LUKS2 volume: header, keyslots, tokens, activation.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptPbkdf};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat};
use libcryptsetup_rs::{CryptDevice, CryptInit, CryptPbkdfType, LibcryptErr, TokenInput};
use serde_json::Value;

use crate::error::exit;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("{path}: no such device or file; check the path, or wait for the disk to appear")]
    Missing { path: String },
    #[error(
        "{path} is not a LUKS2 volume ({reason}); sealroot needs LUKS2 (see `cryptsetup convert --type luks2`)"
    )]
    NotLuks2 { path: String, reason: String },
    #[error(
        "{path} cannot be written ({reason}); a keyslot and a token must be added to its LUKS2 header: make it writable and try again"
    )]
    ReadOnly { path: String, reason: String },
    #[error("the passphrase does not open any keyslot of {path}; check it and try again")]
    WrongPassphrase { path: String },
    #[error("{op} on {path} failed: {reason}")]
    Op {
        op: &'static str,
        path: String,
        reason: String,
    },
}

impl LuksError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LuksError::Missing { .. } | LuksError::NotLuks2 { .. } => exit::DEVICE,
            LuksError::WrongPassphrase { .. } => exit::USAGE,
            LuksError::Op { .. } | LuksError::ReadOnly { .. } => exit::FAILURE,
        }
    }
}

/// libcryptsetup prints its own errors on stderr unless told otherwise; route them to our
/// log so that every problem is reported once, by us, with what to do next.
/// With `SEALROOT_LOG=libcryptsetup=debug` its own debug trace is included too.
pub fn quiet_library_log() {
    libcryptsetup_rs::set_log_callback::<()>(Some(log_callback), None);
    if log::log_enabled!(target: "libcryptsetup", log::Level::Debug) {
        libcryptsetup_rs::set_debug_level(libcryptsetup_rs::consts::vals::CryptDebugLevel::All);
    }
}

unsafe extern "C" fn log_callback(level: c_int, msg: *const c_char, _usr: *mut c_void) {
    if msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    log::debug!(target: "libcryptsetup", "[{level}] {}", text.trim_end());
}

pub struct KeyslotInfo {
    pub id: u32,
    pub kdf: String,
    /// PBKDF2's hash and iterations (None for Argon2).
    pub pbkdf2: Option<(String, u64)>,
}

/// The KDF of keyslots sealroot adds (their passphrases are 256-bit random secrets, so
/// stretching adds nothing): PBKDF2-SHA512, 1000 iterations, as systemd does for its TPM
/// slots. Also how `remove` tells its own slots from a user's passphrase.
pub const SEALED_SLOT_HASH: &str = "sha512";
pub const SEALED_SLOT_ITERATIONS: u32 = 1000;

impl KeyslotInfo {
    /// Whether sealroot (or systemd-cryptenroll) could have made this slot: a user's
    /// passphrase slot has Argon2 or a benchmarked iteration count.
    pub fn looks_sealed(&self) -> bool {
        matches!(&self.pbkdf2, Some((hash, iterations))
            if hash == SEALED_SLOT_HASH && *iterations == u64::from(SEALED_SLOT_ITERATIONS))
    }
}

pub struct TokenEntry {
    pub id: u32,
    pub json: Value,
}

pub struct Volume {
    pub(super) dev: CryptDevice,
    path: PathBuf,
}

fn errno(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

impl Volume {
    pub fn open(path: &Path) -> Result<Volume, LuksError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(LuksError::Missing { path: shown });
        }
        let mut dev = CryptInit::init(path).map_err(|e| LuksError::Op {
            op: "open",
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        dev.context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
            .map_err(|e| LuksError::NotLuks2 {
                path: shown.clone(),
                reason: match errno(&e) {
                    Some(22) => "no LUKS2 header".into(),
                    _ => e.to_string(),
                },
            })?;
        Ok(Volume {
            dev,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails unless the device can be opened for writing (a read-only file system or
    /// device): asked before anything is read or sealed, so a header that cannot take the
    /// result is refused with a clear reason instead of an I/O error halfway.
    pub fn check_writable(&self) -> Result<(), LuksError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map(drop)
            .map_err(|e| LuksError::ReadOnly {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            })
    }

    pub(super) fn op_err(&self, op: &'static str, e: LibcryptErr) -> LuksError {
        LuksError::Op {
            op,
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    pub fn uuid(&mut self) -> Result<String, LuksError> {
        let uuid = self.dev.status_handle().get_uuid();
        uuid.map(|u| u.hyphenated().to_string())
            .map_err(|e| self.op_err("read UUID", e))
    }

    /// The LUKS2 JSON metadata as libcryptsetup validated it.
    pub fn metadata(&mut self) -> Result<Value, LuksError> {
        let md = self.dev.status_handle().dump_json();
        md.map_err(|e| self.op_err("read metadata", e))
    }

    pub fn keyslots(&mut self) -> Result<Vec<KeyslotInfo>, LuksError> {
        let md = self.metadata()?;
        let mut out: Vec<KeyslotInfo> = md
            .get("keyslots")
            .and_then(Value::as_object)
            .map(|slots| {
                slots
                    .iter()
                    .filter_map(|(k, v)| {
                        // The re-encryption keyslot has no KDF: it holds progress, not a key.
                        let kdf = v
                            .pointer("/kdf/type")
                            .or_else(|| v.get("type"))
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string();
                        let pbkdf2 = (kdf == "pbkdf2")
                            .then(|| {
                                let hash = v.pointer("/kdf/hash")?.as_str()?.to_string();
                                Some((hash, v.pointer("/kdf/iterations")?.as_u64()?))
                            })
                            .flatten();
                        Some(KeyslotInfo {
                            id: k.parse().ok()?,
                            kdf,
                            pbkdf2,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|k| k.id);
        Ok(out)
    }

    pub fn tokens(&mut self) -> Result<Vec<TokenEntry>, LuksError> {
        let md = self.metadata()?;
        let mut out: Vec<TokenEntry> = md
            .get("tokens")
            .and_then(Value::as_object)
            .map(|tokens| {
                tokens
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(TokenEntry {
                            id: k.parse().ok()?,
                            json: v.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|t| t.id);
        Ok(out)
    }

    /// Checks `passphrase` against `keyslot` (any slot when None) and returns the slot that
    /// opened and the volume key. Nothing is written and nothing is activated.
    pub fn volume_key(
        &mut self,
        keyslot: Option<u32>,
        passphrase: &[u8],
    ) -> Result<(u32, Secret), LuksError> {
        let size = usize::try_from(self.dev.status_handle().get_volume_key_size()).unwrap_or(0);
        if size == 0 {
            return Err(LuksError::Op {
                op: "read volume key size",
                path: self.path.display().to_string(),
                reason: "header reports no volume key".into(),
            });
        }
        let mut vk = Secret::zeroed(size);
        let got = self
            .dev
            .volume_key_handle()
            .get(keyslot, vk.expose_mut(), Some(passphrase));
        match got {
            Ok((slot, len)) => {
                vk.truncate(len);
                Ok((slot as u32, vk))
            }
            Err(e) if matches!(errno(&e), Some(1) | Some(2)) => Err(LuksError::WrongPassphrase {
                path: self.path.display().to_string(),
            }),
            Err(e) => Err(self.op_err("unlock keyslot", e)),
        }
    }

    pub fn activate(&mut self, name: &str, volume_key: &Secret) -> Result<(), LuksError> {
        let r = self.dev.activate_handle().activate_by_volume_key(
            Some(name),
            Some(volume_key.expose()),
            CryptActivate::empty(),
        );
        r.map_err(|e| self.op_err("activate", e))
    }

    /// The PBKDF of keyslots sealroot adds (PBKDF2-SHA512, 1000 iterations, no benchmark):
    /// their passphrases carry full entropy, so stretching buys nothing and would only
    /// slow the boot.
    pub(super) fn use_minimal_pbkdf(&mut self) -> Result<(), LuksError> {
        let pbkdf = CryptPbkdfType {
            type_: CryptKdf::Pbkdf2,
            hash: Some(SEALED_SLOT_HASH.into()),
            time_ms: 0,
            iterations: SEALED_SLOT_ITERATIONS,
            max_memory_kb: 0,
            parallel_threads: 0,
            flags: CryptPbkdf::NO_BENCHMARK,
        };
        let set = self.dev.settings_handle().set_pbkdf_type(&pbkdf);
        set.map_err(|e| self.op_err("set PBKDF", e))
    }

    /// Adds a keyslot for `new` (a full-entropy passphrase: minimal PBKDF), opened with
    /// `existing`.
    pub fn add_keyslot(&mut self, existing: &[u8], new: &[u8]) -> Result<u32, LuksError> {
        self.use_minimal_pbkdf()?;
        let added = self
            .dev
            .keyslot_handle()
            .add_by_passphrase(None, existing, new);
        added.map_err(|e| match errno(&e) {
            Some(1) | Some(2) => LuksError::WrongPassphrase {
                path: self.path.display().to_string(),
            },
            _ => self.op_err("add keyslot", e),
        })
    }

    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<(), LuksError> {
        let r = self.dev.keyslot_handle().destroy(slot);
        r.map_err(|e| self.op_err("destroy keyslot", e))
    }

    pub fn add_token(&mut self, json: &Value) -> Result<u32, LuksError> {
        let r = self.dev.token_handle().json_set(TokenInput::AddToken(json));
        r.map_err(|e| self.op_err("add token", e))
    }

    pub fn replace_token(&mut self, id: u32, json: &Value) -> Result<(), LuksError> {
        let r = self
            .dev
            .token_handle()
            .json_set(TokenInput::ReplaceToken(id, json));
        r.map(|_| ()).map_err(|e| self.op_err("replace token", e))
    }

    pub fn remove_token(&mut self, id: u32) -> Result<(), LuksError> {
        let r = self
            .dev
            .token_handle()
            .json_set(TokenInput::RemoveToken(id));
        r.map(|_| ()).map_err(|e| self.op_err("remove token", e))
    }
}
