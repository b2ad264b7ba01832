//! `sealroot fence`: extend the fence PCR on its own, for boot hooks that found nothing to
//! unlock or are about to show a prompt.

use crate::error::Result;
use crate::tpm::LazyTpm;
use crate::tpm::fence;

pub struct FenceOptions {
    pub pcr: u32,
    pub tcti: Option<String>,
}

pub fn run(o: &FenceOptions) -> Result<()> {
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    tpm.get()?.pcr_event(o.pcr, &fence::event(&[]))?;
    crate::console::progress(&format!("fence PCR {} extended", o.pcr));
    Ok(())
}
