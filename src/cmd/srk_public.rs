//! `sealroot srk-public`: the SRK's TPM2B_PUBLIC, for sealing to this TPM from elsewhere.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::tpm::LazyTpm;
use crate::tpm::object::name_of;

pub struct SrkPublicOptions {
    /// None: stdout (refused on a terminal: the bytes are binary).
    pub out: Option<PathBuf>,
    pub tcti: Option<String>,
}

/// Writes the public area; returns the line to show on stderr (handle, Name, size).
pub fn run(o: &SrkPublicOptions) -> Result<String> {
    if o.out.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "the public area is binary: pass --out FILE or redirect stdout".into(),
        ));
    }
    let srk = LazyTpm::new(o.tcti.as_deref()).get()?.srk()?;
    let written = match &o.out {
        Some(path) => std::fs::write(path, &srk.public),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&srk.public).and_then(|_| out.flush())
        }
    };
    written.map_err(|e| Error::Other(format!("cannot write the public area: {e}")))?;
    Ok(format!(
        "storage root key 0x{:08x}, Name {} ({} bytes of TPM2B_PUBLIC)",
        srk.handle,
        hex::encode(name_of(&srk.public)?),
        srk.public.len()
    ))
}
