//! `sealroot predict`: the PCR values of the next boot, from this boot's TCG event log with
//! the events a new kernel, initrd or command line will change replaced, in the format
//! `enroll --pcr-values` and `approve --pcr-values` read. `--verify` replays the log as it
//! is and compares it with the live PCRs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use crate::error::{Error, Result};
use crate::eventlog::EventLog;
use crate::predict::{self, Loader, NextBoot};
use crate::tpm::LazyTpm;
use crate::tpm::pcr::PcrBank;

pub const DEFAULT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

pub struct PredictOptions {
    pub eventlog: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The command line given to the boot loader (`loader` says what the stub sees).
    pub cmdline: Option<String>,
    pub loader: Loader,
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
    let kernel = o.kernel.as_ref().map(read).transpose()?;
    let initrd = o.initrd.as_ref().map(read).transpose()?;
    let next = NextBoot {
        kernel: kernel.as_deref(),
        initrd: initrd.as_deref(),
        cmdline: o.cmdline.as_deref(),
        loader: o.loader,
    };
    predict::apply(&mut log, &next).map_err(Error::Usage)?;
    let values = log.replay(o.bank).map_err(Error::Usage)?;
    let mut out = BTreeMap::new();
    for p in &o.pcrs {
        let v = values
            .get(p)
            .cloned()
            .unwrap_or_else(|| vec![0u8; o.bank.digest_len()]);
        out.insert(p.to_string(), hex::encode(v));
    }
    // The events too, so that an approval made from this file can later say which one a
    // boot changed (`status`).
    let events = predict::record(&log, &o.pcrs, o.bank);
    let json = json!({"pcr_bank": o.bank.name(), "pcr_values": out, "events": events});
    Ok(serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
}

pub fn read(path: &PathBuf) -> Result<Vec<u8>> {
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
