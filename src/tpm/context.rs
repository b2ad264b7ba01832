//! Choosing the TCTI and opening an ESAPI context.

use std::path::Path;
use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::tcti_ldr::TctiNameConf;

use super::error::TpmError;

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

/// Opens the TPM behind `tcti` (tpm2-tss spelling: `device:PATH`, `swtpm:host=H,port=P`,
/// `mssim:host=H,port=P`).
pub fn open(tcti: &str) -> Result<Context, TpmError> {
    let unavailable = |reason: String| TpmError::Unavailable {
        tcti: tcti.to_string(),
        reason,
    };
    if tcti.starts_with("swtpm:path=") || tcti.starts_with("swtpm:socket") {
        return Err(unavailable(
            "the swtpm unix-socket TCTI is not supported; run swtpm with a TCP server and use swtpm:host=H,port=P".into(),
        ));
    }
    let conf =
        TctiNameConf::from_str(tcti).map_err(|e| unavailable(format!("cannot parse TCTI: {e}")))?;
    if let TctiNameConf::Device(ref dev) = conf {
        let path = dev_path(tcti);
        if !Path::new(&path).exists() {
            let _ = dev;
            return Err(unavailable(format!("{path} does not exist")));
        }
    }
    Context::new(conf).map_err(|e| unavailable(format!("cannot connect: {e}")))
}

fn dev_path(tcti: &str) -> String {
    match tcti.strip_prefix("device:") {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => "/dev/tpm0".to_string(),
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
        let e = open("device:/nonexistent/tpm").err().map(|e| e.exit_code());
        assert_eq!(e, Some(crate::error::exit::TPM_UNAVAILABLE));
    }
}
