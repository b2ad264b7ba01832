//! LUKS2 through libcryptsetup. Knows nothing of the TPM: tokens are plain JSON here.

mod finish_window;
pub(crate) mod header;
pub mod reencrypt;
pub mod volume;

pub use volume::{LuksError, Volume};

#[cfg(feature = "static")]
mod json_seed;
