//! `sealroot predict`: the PCR values of the next boot, from this boot's TCG event log with
//! the events a new kernel, initrd or command line will change replaced, in the format
//! `enroll --pcr-values` and `approve --pcr-values` read. `--verify` replays the log as it
//! is and compares it with the live PCRs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use crate::authenticode;
use crate::error::{Error, Result};
use crate::eventlog::{
    EV_EFI_BOOT_SERVICES_APPLICATION, EventLog, TAG_LINUX_INITRD, TAG_LOAD_OPTIONS,
};
use crate::tpm::LazyTpm;
use crate::tpm::pcr::PcrBank;

pub const DEFAULT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

pub struct PredictOptions {
    pub eventlog: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The command line exactly as the boot loader passes it as LoadOptions.
    pub cmdline: Option<String>,
    pub pcrs: Vec<u32>,
    pub bank: PcrBank,
    pub verify: bool,
    pub tcti: Option<String>,
}

/// Returns the text to print: the JSON values file, or the verification report.
pub fn run(o: &PredictOptions) -> Result<String> {
    let bytes = std::fs::read(&o.eventlog).map_err(|e| {
        Error::Usage(format!(
            "cannot read the event log {}: {e} (run as root on the machine, or pass --eventlog)",
            o.eventlog.display()
        ))
    })?;
    let mut log = EventLog::parse(&bytes)
        .map_err(|e| Error::Usage(format!("{}: {e}", o.eventlog.display())))?;
    if !log.banks.contains(&o.bank) {
        return Err(Error::Usage(format!(
            "the event log has no {} bank (it has {:?})",
            o.bank, log.banks
        )));
    }
    if o.verify {
        return verify(o, &log);
    }
    if let Some(path) = &o.kernel {
        let image = read(path)?;
        // The kernel is the last application started (directly by the firmware, or by shim).
        let last = log
            .events
            .iter()
            .rev()
            .find(|e| e.pcr == 4 && e.kind == EV_EFI_BOOT_SERVICES_APPLICATION)
            .map(|e| e.number)
            .ok_or_else(|| {
                Error::Usage("the log has no EFI application in PCR 4 to replace".into())
            })?;
        let mut digests = BTreeMap::new();
        for bank in &log.banks {
            digests.insert(
                *bank,
                authenticode::pe_hash(&image, *bank)
                    .map_err(|e| Error::Usage(format!("--kernel {}: {e}", path.display())))?,
            );
        }
        log.substitute(|e| e.number == last, |b| digests[&b].clone());
    }
    if let Some(path) = &o.initrd {
        let data = read(path)?;
        let n = log.substitute(
            |e| e.pcr == 9 && e.tag() == Some(TAG_LINUX_INITRD),
            |b| b.hash(&data),
        );
        if n == 0 {
            return Err(Error::Usage(
                "the log has no initrd event in PCR 9 (the kernel measures the initrd only when the boot loader serves it through LoadFile2)".into(),
            ));
        }
    }
    if let Some(cmdline) = &o.cmdline {
        let mut utf16: Vec<u8> = cmdline
            .encode_utf16()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        utf16.extend_from_slice(&[0, 0]);
        let n = log.substitute(
            |e| e.pcr == 9 && e.tag() == Some(TAG_LOAD_OPTIONS),
            |b| b.hash(&utf16),
        );
        if n == 0 {
            return Err(Error::Usage(
                "the log has no command-line event in PCR 9 (GRUB measures the command line into PCR 8, which sealroot does not predict yet)".into(),
            ));
        }
    }
    let values = log.replay(o.bank).map_err(Error::Usage)?;
    let mut out = BTreeMap::new();
    for p in &o.pcrs {
        let v = values
            .get(p)
            .cloned()
            .unwrap_or_else(|| vec![0u8; o.bank.digest_len()]);
        out.insert(p.to_string(), hex::encode(v));
    }
    let json = json!({"pcr_bank": o.bank.name(), "pcr_values": out});
    Ok(serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The log as it is, replayed, against the live PCRs: each PCR matches or not.
fn verify(o: &PredictOptions, log: &EventLog) -> Result<String> {
    let replayed = log.replay(o.bank).map_err(Error::Usage)?;
    let live = LazyTpm::new(o.tcti.as_deref())
        .get()?
        .pcr_read(o.bank, &o.pcrs)?;
    let mut report = String::new();
    let mut bad = Vec::new();
    for p in &o.pcrs {
        let want = replayed
            .get(p)
            .cloned()
            .unwrap_or_else(|| vec![0u8; o.bank.digest_len()]);
        let ok = live.get(p) == Some(&want);
        report += &format!(
            "PCR {p}: {}\n",
            if ok {
                "the log replays to the live value"
            } else {
                "the log does NOT replay to the live value"
            }
        );
        if !ok {
            bad.push(*p);
        }
    }
    if bad.is_empty() {
        Ok(report)
    } else {
        Err(Error::Other(format!(
            "{}the event log does not account for PCR(s) {bad:?}: something was measured that the log does not show, so predictions for them would be wrong",
            report
        )))
    }
}
