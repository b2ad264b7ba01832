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

/// The TPM, opened on first use so commands that never need it never touch it, and once
/// per command so a TPM without a resource manager is fine.
pub struct LazyTpm {
    tcti: String,
    /// Ok(context) or the reason it could not be opened.
    ctx: Option<Result<Context, String>>,
}

impl LazyTpm {
    pub fn new(cli_tcti: Option<&str>) -> LazyTpm {
        LazyTpm {
            tcti: choose_tcti(cli_tcti),
            ctx: None,
        }
    }

    pub fn get(&mut self) -> Result<&mut Context, TpmError> {
        let tcti = self.tcti.clone();
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
