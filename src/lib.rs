//! sealroot: unlock LUKS2 volumes at boot with a key sealed to the TPM.
//!
//! Layers, top to bottom: `cmd` (one verb each) joins `tpm` (knows no LUKS) and `luks`
//! (knows no TPM) through `tokens` (the header formats, each read into one unseal plan);
//! `secret` owns secret bytes.

/// "0.1.0 (git describe of the build)": what `--version` and `status --json` say.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SEALROOT_BUILD"), ")");

pub mod approval;
pub mod authenticode;
pub mod blkid;
pub mod cmd;
pub mod console;
pub mod devices;
pub mod error;
pub mod escrow;
pub mod eventlog;
pub mod firstboot;
pub mod input;
pub mod keyring;
pub mod local_key;
pub mod luks;
pub mod pcr_values;
pub mod pin;
pub mod predict;
pub mod recovery;
pub mod secret;
pub mod stop;
pub mod tokens;
pub mod tpm;
pub mod trust;
pub mod watchdog;
