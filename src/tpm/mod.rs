//! Everything that talks to the TPM. Knows nothing of LUKS: callers hand in bytes.

pub mod context;
pub mod error;
pub mod esys;
pub mod fence;
pub mod pcr;
pub mod policy;
pub mod seal;
pub mod session;
pub mod srk;

pub use error::TpmError;
