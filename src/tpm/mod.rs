//! Everything that talks to the TPM, through one context type (`Tpm`) on tpm2-tss's ESAPI.
//! Knows nothing of LUKS or token formats: callers hand in bytes. One file per mechanism:
//!
//! - `context`: opening the TPM (TCTI choice), handle lifetimes, `LazyTpm`
//! - `session`: salted sessions with parameter encryption
//! - `object`: public areas and Names, CreatePrimary, persistent handles, Load
//! - `srk`: the storage root key
//! - `seal`: sealed-object blobs and TPM2_Create; `unseal`: the unseal flow
//! - `duplicate`: sealing offline to a storage key's public area (no TPM); `import`:
//!   TPM2_Import of such an object at unlock
//! - `policy`: policy digests computed in software; `policy_session`: the same assertions
//!   sent to the TPM
//! - `pcr`: banks, PCR_Read, PCR_Event; `fence`: what the fence measures
//! - `lockout`: the dictionary-attack state, checked before a PIN is asked for
//! - `wire`: marshalling helpers; `error`: return codes as actionable errors

pub mod context;
pub mod duplicate;
pub mod error;
pub mod fence;
mod import;
pub mod lockout;
pub mod nv;
pub mod object;
pub mod pcr;
pub mod policy;
mod policy_session;
pub mod seal;
pub mod session;
pub mod srk;
pub mod unseal;
pub mod wire;

pub use context::{LazyTpm, Tpm};
pub use error::TpmError;
pub use wire::serialized_key_resource;
