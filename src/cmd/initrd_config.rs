//! `sealroot initrd-config`: the initrd's trusted configuration from the host's, validated
//! (the initrd hooks run it at build time; a bad configuration fails the build).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::tpm::LazyTpm;
use crate::trust::{HOST_CONFIG, Trust};

pub struct InitrdConfigOptions {
    /// None: /etc/sealroot/sealroot.conf, whose absence means the defaults.
    pub config: Option<PathBuf>,
    /// The TPM for `srk_name=tpm`.
    pub tcti: Option<String>,
}

/// The text of /etc/sealroot/initrd.conf.
pub fn run(o: &InitrdConfigOptions) -> Result<String> {
    let path = o.config.clone().unwrap_or_else(|| HOST_CONFIG.into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Usage(format!("{}: {e}", path.display()))),
    };
    let mut trust =
        Trust::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    if trust.srk_name_from_tpm {
        let handle = trust.parent.handle;
        let name = LazyTpm::new(o.tcti.as_deref())
            .get()
            .and_then(|t| t.persistent_name(handle))
            .map_err(|e| {
                Error::Other(format!(
                    "srk_name=tpm: cannot read the key at 0x{handle:08x} ({e}); enroll first (it creates the SRK), or remove srk_name=tpm"
                ))
            })?;
        trust.parent.name = Some(name);
    }
    Ok(trust.render())
}
