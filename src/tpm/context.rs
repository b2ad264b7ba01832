//! `Tpm`, the one door to the TPM: an ESAPI context over the TCTI the user chose, opened on
//! first use. Every handle a method creates is flushed or closed before it returns.

use std::ffi::CString;
use std::path::Path;
use std::ptr;

use tss_esapi_sys::{
    ESYS_CONTEXT, ESYS_TR, Esys_Finalize, Esys_FlushContext, Esys_Initialize, Esys_TR_Close,
    TSS2_TCTI_CONTEXT, Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize,
};

use super::error::TpmError;
use super::pcr::PcrBank;
use super::srk::ExpectedParent;

pub const TCTI_ENV: &str = "SEALROOT_TCTI";

/// `--tcti`, else `$SEALROOT_TCTI`, else the kernel resource manager, else the raw device.
pub fn choose_tcti(cli: Option<&str>) -> String {
    if let Some(t) = cli.filter(|t| !t.is_empty()) {
        return t.to_string();
    }
    if let Ok(t) = std::env::var(TCTI_ENV)
        && !t.is_empty()
    {
        return t;
    }
    if Path::new("/dev/tpmrm0").exists() {
        "device:/dev/tpmrm0".into()
    } else {
        "device:/dev/tpm0".into()
    }
}

pub struct Tpm {
    pub(super) ctx: *mut ESYS_CONTEXT,
    tcti: *mut TSS2_TCTI_CONTEXT,
    /// Names of persistent keys read from this TPM (handle, Name), so checking several
    /// tokens against the SRK costs one ReadPublic.
    pub(super) names: Vec<(u32, Vec<u8>)>,
    /// A policy session started ahead of time (`prestart_policy_session`).
    pub(super) spare: Option<super::session::SpareSession>,
}

impl Tpm {
    /// Opens the TPM behind `tcti` (tpm2-tss spelling: `device:PATH`,
    /// `swtpm:host=H,port=P`, `mssim:host=H,port=P`). The TCTI loader is the authority on
    /// its own syntax; only what it would report badly is checked here.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let unavailable = |reason: String| TpmError::Unavailable {
            tcti: tcti.to_string(),
            reason,
        };
        if tcti.starts_with("swtpm:path=") || tcti.starts_with("swtpm:socket") {
            return Err(unavailable(
                "the swtpm unix-socket TCTI is not supported; run swtpm with a TCP server and use swtpm:host=H,port=P".into(),
            ));
        }
        if let Some(path) = tcti.strip_prefix("device:")
            && !Path::new(path).exists()
        {
            return Err(unavailable(format!("{path} does not exist")));
        }
        let conf = CString::new(tcti).map_err(|_| unavailable("NUL in the TCTI".into()))?;
        let mut tcti_ctx: *mut TSS2_TCTI_CONTEXT = ptr::null_mut();
        // SAFETY: conf is a valid C string; tcti_ctx receives an allocation we finalize.
        let rc = unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut tcti_ctx) };
        if rc != 0 {
            return Err(unavailable(format!("cannot connect (0x{rc:x})")));
        }
        let mut ctx: *mut ESYS_CONTEXT = ptr::null_mut();
        // SAFETY: tcti_ctx is initialized; ctx receives an allocation we finalize.
        let rc = unsafe { Esys_Initialize(&mut ctx, tcti_ctx, ptr::null_mut()) };
        if rc != 0 {
            // SAFETY: tcti_ctx came from Tss2_TctiLdr_Initialize.
            unsafe { Tss2_TctiLdr_Finalize(&mut tcti_ctx) };
            return Err(unavailable(format!(
                "ESAPI initialization failed (0x{rc:x})"
            )));
        }
        Ok(Tpm {
            ctx,
            tcti: tcti_ctx,
            names: Vec::new(),
            spare: None,
        })
    }

    /// Forgets a handle without a command (persistent objects, ended sessions).
    pub(super) fn close(&mut self, tr: &mut ESYS_TR) {
        // SAFETY: tr is a handle of this context; closing sends no command.
        unsafe { Esys_TR_Close(self.ctx, tr) };
    }

    /// Flushes a transient object or session. Errors are ignored: the caller is already
    /// returning the result that matters, and there is nothing left to do about them.
    pub(super) fn flush(&mut self, tr: ESYS_TR) {
        // SAFETY: tr is a transient object or session of this context.
        unsafe { Esys_FlushContext(self.ctx, tr) };
    }
}

// SAFETY: the ESAPI and TCTI contexts have no thread affinity; `Tpm` is used through `&mut`,
// by one thread at a time (the unlock unseals on a second thread while the first loads the
// LUKS2 header, and joins it before touching the TPM again).
unsafe impl Send for Tpm {}

impl Drop for Tpm {
    fn drop(&mut self) {
        // A spare session nobody used would hold a slot of a TPM without a resource manager.
        if let Some(spare) = self.spare.take() {
            self.flush(spare.session);
        }
        // SAFETY: both were allocated in `open` and are finalized exactly once.
        unsafe {
            Esys_Finalize(&mut self.ctx);
            Tss2_TctiLdr_Finalize(&mut self.tcti);
        }
    }
}

/// A TPM context opened on first use, so commands that never need it never touch it, and
/// once per command so a TPM without a resource manager (one open at a time) is fine.
pub struct LazyTpm {
    tcti: String,
    /// Ok(context) or the reason it could not be opened.
    tpm: Option<Result<Tpm, String>>,
}

impl LazyTpm {
    pub fn new(cli_tcti: Option<&str>) -> LazyTpm {
        LazyTpm {
            tcti: choose_tcti(cli_tcti),
            tpm: None,
        }
    }

    /// Forgets the context (or the failure to open one): the next `get` opens the TPM
    /// again. After a transport failure ESAPI refuses every later command on its context,
    /// although the TPM may answer a new one.
    pub fn reopen(&mut self) {
        self.tpm = None;
    }

    /// The device node the TCTI opens (`device:PATH`), if it is one.
    pub fn device(&self) -> Option<&Path> {
        self.tcti.strip_prefix("device:").map(Path::new)
    }

    /// Opens the context now if its device is there and starts the policy session an unseal
    /// under the expected storage key will use, keeping no failure (the `get` that needs it
    /// tries again and reports): the unlock does this while it waits for the disks.
    pub fn prepare(&mut self, parent: &ExpectedParent) {
        if self.tpm.is_some() || self.device().is_some_and(|d| !d.exists()) {
            return;
        }
        match Tpm::open(&self.tcti) {
            Ok(mut tpm) => {
                match tpm.prestart_policy_session(parent, PcrBank::Sha256) {
                    Ok(()) | Err(TpmError::UntrustedParent { .. }) => {}
                    // A context that failed a command may refuse the next: not kept.
                    Err(e) => {
                        log::debug!("starting a session early: {e}");
                        return;
                    }
                }
                log::debug!("TPM opened early, while waiting for the volumes");
                self.tpm = Some(Ok(tpm));
            }
            Err(e) => log::debug!("opening the TPM early: {e}"),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.tpm, Some(Ok(_)))
    }

    pub fn get(&mut self) -> Result<&mut Tpm, TpmError> {
        let tcti = &self.tcti;
        let slot = self.tpm.get_or_insert_with(|| {
            Tpm::open(tcti).map_err(|e| match e {
                TpmError::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            })
        });
        match slot {
            Ok(tpm) => Ok(tpm),
            // Opening failed once: report the same failure without trying again.
            Err(reason) => Err(TpmError::Unavailable {
                tcti: self.tcti.clone(),
                reason: reason.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_wins() {
        assert_eq!(
            choose_tcti(Some("swtpm:host=127.0.0.1,port=1")),
            "swtpm:host=127.0.0.1,port=1"
        );
    }

    #[test]
    fn missing_device_is_unavailable() {
        let e = Tpm::open("device:/nonexistent/tpm")
            .err()
            .map(|e| e.exit_code());
        assert_eq!(e, Some(crate::error::exit::TPM_UNAVAILABLE));
    }
}
