//! PCR reads (only on failure paths) and the fence's TPM2_PCR_Event.

use super::wire::*;
use super::*;

impl Esys {
    /// Extends `pcr` with `event` in every bank the TPM has allocated (TPM2_PCR_Event: the
    /// TPM hashes the data once per bank), in one command.
    pub fn pcr_event(&mut self, pcr: u32, event: &[u8]) -> Result<(), TpmError> {
        if pcr > 23 {
            return Err(TpmError::Invalid(format!("PCR {pcr} out of range")));
        }
        let digest;
        let data = if event.len() > MAX_EVENT {
            digest = Sha256::digest(event);
            &digest[..]
        } else {
            event
        };
        let mut ev = TPM2B_EVENT {
            size: data.len() as u16,
            buffer: [0u8; MAX_EVENT],
        };
        ev.buffer[..data.len()].copy_from_slice(data);
        let mut digests: *mut TPML_DIGEST_VALUES = ptr::null_mut();
        // SAFETY: pointers to live locals; digests is freed below.
        let rc = unsafe {
            Esys_PCR_Event(
                self.ctx,
                ESYS_TR_PCR0 + pcr,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &ev,
                &mut digests,
            )
        };
        if !digests.is_null() {
            // SAFETY: allocated by ESAPI.
            unsafe { Esys_Free(digests.cast()) };
        }
        check("PCR_Event", rc).map_err(generic)
    }

    /// Current values of `pcrs` in `bank` (PCR_Read returns at most 8 per call).
    pub fn pcr_read(
        &mut self,
        bank: PcrBank,
        pcrs: &[u32],
    ) -> Result<BTreeMap<u32, Vec<u8>>, TpmError> {
        let mut out = BTreeMap::new();
        for chunk in pcrs.chunks(8) {
            let selection = pcr_selection(bank, chunk);
            let mut counter = 0u32;
            let mut sel_out: *mut TPML_PCR_SELECTION = ptr::null_mut();
            let mut values: *mut TPML_DIGEST = ptr::null_mut();
            // SAFETY: pointers to live locals; outputs are freed below.
            let rc = unsafe {
                Esys_PCR_Read(
                    self.ctx,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    &selection,
                    &mut counter,
                    &mut sel_out,
                    &mut values,
                )
            };
            let result = check("PCR_Read", rc).map_err(generic).map(|_| {
                // SAFETY: on success both outputs are valid ESAPI allocations. The TPM
                // returns the selected PCRs in ascending order.
                let (sel, vals) = unsafe { (&*sel_out, &*values) };
                let mut returned = Vec::new();
                for s in &sel.pcrSelections[..(sel.count as usize).min(16)] {
                    for i in 0..(u32::from(s.sizeofSelect) * 8).min(32) {
                        if s.pcrSelect[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                            returned.push(i);
                        }
                    }
                }
                for (i, d) in returned
                    .into_iter()
                    .zip(&vals.digests[..(vals.count as usize).min(8)])
                {
                    out.insert(i, d.buffer[..usize::from(d.size).min(64)].to_vec());
                }
            });
            // SAFETY: allocated by ESAPI (or null).
            unsafe {
                if !sel_out.is_null() {
                    Esys_Free(sel_out.cast());
                }
                if !values.is_null() {
                    Esys_Free(values.cast());
                }
            }
            result?;
        }
        Ok(out)
    }
}
