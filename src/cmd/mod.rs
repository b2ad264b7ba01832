//! One module per user-visible verb: orchestration only, joining `tpm` and `luks` through
//! `token`.

pub mod enroll;
pub mod fence;
pub mod recover;
pub mod remove;
pub mod status;
pub mod unlock;

use tss_esapi::Context;

use crate::tpm::TpmError;
use crate::tpm::context::{choose_tcti, open};
use crate::tpm::esys::Esys;

/// A TPM context, opened on first use so commands that never need it never touch it, and
/// once per command so a TPM without a resource manager (one open at a time) is fine.
/// `LazyTpm` (tss-esapi) serves enroll and status; `LazyEsys` (raw ESAPI) the boot path.
pub struct Lazy<T> {
    tcti: String,
    open: fn(&str) -> Result<T, TpmError>,
    /// Ok(context) or the reason it could not be opened.
    ctx: Option<Result<T, String>>,
}

pub type LazyTpm = Lazy<Context>;
pub type LazyEsys = Lazy<Esys>;

impl LazyTpm {
    pub fn new(cli_tcti: Option<&str>) -> LazyTpm {
        Lazy::with(cli_tcti, open)
    }
}

impl LazyEsys {
    pub fn new(cli_tcti: Option<&str>) -> LazyEsys {
        Lazy::with(cli_tcti, Esys::open)
    }
}

impl<T> Lazy<T> {
    fn with(cli_tcti: Option<&str>, open: fn(&str) -> Result<T, TpmError>) -> Lazy<T> {
        Lazy {
            tcti: choose_tcti(cli_tcti),
            open,
            ctx: None,
        }
    }

    pub fn get(&mut self) -> Result<&mut T, TpmError> {
        let (tcti, open) = (self.tcti.clone(), self.open);
        let slot = self.ctx.get_or_insert_with(|| {
            open(&tcti).map_err(|e| match e {
                TpmError::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            })
        });
        match slot {
            Ok(ctx) => Ok(ctx),
            // Opening failed once: report the same failure without trying again.
            Err(reason) => Err(TpmError::Unavailable {
                tcti,
                reason: reason.clone(),
            }),
        }
    }
}
