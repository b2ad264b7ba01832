//! The top-level error: every failure a command can report, each mapped to a documented
//! exit code. Lower layers have their own enums (`tpm::TpmError`, `luks::LuksError`).

use crate::luks::LuksError;
use crate::tpm::TpmError;

/// Documented exit codes (README, `--help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_TOKEN: u8 = 3;
    pub const TPM_UNAVAILABLE: u8 = 4;
    pub const POLICY_MISMATCH: u8 = 5;
    pub const WRONG_PIN: u8 = 6;
    pub const DEVICE: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NoUsableToken(String),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Luks(#[from] LuksError),
    #[error("{0}")]
    Other(String),
    /// A failure while trying one token of a volume ("sealroot token 0").
    #[error("{label}: {source}")]
    Token { label: String, source: Box<Error> },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::NoUsableToken(_) => exit::NO_TOKEN,
            Error::Tpm(e) => e.exit_code(),
            Error::Luks(e) => e.exit_code(),
            Error::Other(_) => exit::FAILURE,
            Error::Token { source, .. } => source.exit_code(),
        }
    }

    /// When several attempts failed, the one to report: the most specific cause a user can
    /// act on wins (a wrong PIN over a changed PCR over "no token fits").
    pub fn rank(&self) -> u8 {
        match self.exit_code() {
            exit::WRONG_PIN => 6,
            exit::POLICY_MISMATCH => 5,
            exit::TPM_UNAVAILABLE => 4,
            exit::DEVICE => 3,
            exit::NO_TOKEN => 2,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
