//! The next boot's measurements: this boot's event log with the events that a new kernel,
//! initrd or command line change replaced, for a direct EFI-stub boot (the firmware, or a
//! boot loader that passes the files on unchanged, starts the kernel; the stub measures
//! the initrd and the LoadOptions into PCR 9). Also QEMU's direct kernel boot with OVMF
//! (`-kernel -initrd -append`), which differs in two exact ways: QEMU writes into the
//! kernel's setup header before OVMF measures it, and OVMF appends " initrd=initrd" to
//! the command line.

use crate::approval::RecordedEvent;
use crate::authenticode;
use crate::eventlog::{
    EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR, Event, EventLog, TAG_LINUX_INITRD,
    TAG_LOAD_OPTIONS,
};
use crate::tpm::pcr::PcrBank;

/// How the boot that is predicted hands over the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// The files as they are (firmware boot entry, systemd-boot, a UEFI shell).
    EfiStub,
    /// QEMU -kernel/-initrd/-append on the q35 machine with this much RAM (MiB), OVMF.
    QemuDirect { memory_mib: u64 },
}

impl Loader {
    /// The LoadOptions the stub will see for a command line.
    pub fn load_options(&self, cmdline: &str, with_initrd: bool) -> String {
        match self {
            Loader::QemuDirect { .. } if with_initrd => format!("{cmdline} initrd=initrd"),
            _ => cmdline.to_string(),
        }
    }

    /// The command line as the booted kernel shows it (/proc/cmdline), back to what the
    /// boot loader was given.
    pub fn given_cmdline(&self, proc_cmdline: &str) -> String {
        let line = proc_cmdline.trim_end_matches(['\n', '\0']);
        match self {
            Loader::QemuDirect { .. } => line.strip_suffix(" initrd=initrd").unwrap_or(line),
            Loader::EfiStub => line,
        }
        .to_string()
    }
}

/// `--qemu-direct-boot MIB`, or the files as they are.
pub fn loader(qemu_direct_boot: Option<u64>) -> Loader {
    match qemu_direct_boot {
        Some(memory_mib) => Loader::QemuDirect { memory_mib },
        None => Loader::EfiStub,
    }
}

/// What the next boot changes; `None` keeps this boot's event.
pub struct NextBoot<'a> {
    pub kernel: Option<&'a [u8]>,
    pub initrd: Option<&'a [u8]>,
    /// The command line given to the boot loader.
    pub cmdline: Option<&'a str>,
    pub loader: Loader,
}

/// Edits `log` into the next boot's log. Each change must find the event it replaces.
pub fn apply(log: &mut EventLog, next: &NextBoot<'_>) -> Result<(), String> {
    if let Some(image) = next.kernel {
        let image = match next.loader {
            Loader::EfiStub => image.to_vec(),
            Loader::QemuDirect { memory_mib } => {
                let initrd_len = next.initrd.map(|i| i.len()).unwrap_or(0);
                qemu_patched_kernel(image, initrd_len, memory_mib, next.cmdline.unwrap_or(""))?
            }
        };
        let last = kernel_event(log)
            .ok_or("the log has no EFI application in PCR 4 to replace")?
            .number;
        let mut digests = std::collections::BTreeMap::new();
        for bank in &log.banks {
            digests.insert(*bank, authenticode::pe_hash(&image, *bank)?);
        }
        log.substitute(|e| e.number == last, |b| digests[&b].clone());
    } else if next.initrd.is_some() && matches!(next.loader, Loader::QemuDirect { .. }) {
        return Err(
            "under QEMU's direct kernel boot the kernel's measurement depends on the initrd's size: give --kernel too".into(),
        );
    }
    if let Some(data) = next.initrd {
        let n = log.substitute(
            |e| e.pcr == 9 && e.tag() == Some(TAG_LINUX_INITRD),
            |b| b.hash(data),
        );
        if n == 0 {
            return Err("the log has no initrd event in PCR 9 (the kernel measures the initrd only when the boot loader serves it through LoadFile2)".into());
        }
    }
    if let Some(cmdline) = next.cmdline {
        let options = next
            .loader
            .load_options(cmdline, next.initrd.is_some() || has_initrd(log));
        let mut utf16: Vec<u8> = options
            .encode_utf16()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        utf16.extend_from_slice(&[0, 0]);
        let n = log.substitute(
            |e| e.pcr == 9 && e.tag() == Some(TAG_LOAD_OPTIONS),
            |b| b.hash(&utf16),
        );
        if n == 0 {
            return Err("the log has no command-line event in PCR 9 (GRUB measures the command line into PCR 8, which sealroot does not predict)".into());
        }
    }
    Ok(())
}

fn has_initrd(log: &EventLog) -> bool {
    log.events
        .iter()
        .any(|e| e.pcr == 9 && e.tag() == Some(TAG_LINUX_INITRD))
}

/// The kernel is the last application started (directly by the firmware, or by shim).
fn kernel_event(log: &EventLog) -> Option<&Event> {
    log.events
        .iter()
        .rev()
        .find(|e| e.pcr == 4 && e.kind == EV_EFI_BOOT_SERVICES_APPLICATION)
}

/// The kernel image as OVMF measures it under QEMU's direct kernel boot: QEMU (hw/i386
/// x86_load_linux, 7.2 in Debian 12) fills in the setup header as a boot loader would —
/// loader type, heap end, command line address, initrd address and size — and OVMF's
/// kernel loader hashes the patched image.
pub fn qemu_patched_kernel(
    image: &[u8],
    initrd_len: usize,
    memory_mib: u64,
    cmdline: &str,
) -> Result<Vec<u8>, String> {
    const REAL_ADDR: u32 = 0x1_0000;
    const CMDLINE_ADDR: u32 = 0x2_0000;
    // QEMU's acpi_data_size for q35 (0x20000 + 0x8000).
    const ACPI_DATA_SIZE: u64 = 0x2_8000;
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        return Err("not a Linux x86 bzImage (no setup header)".into());
    }
    let protocol = u16::from_le_bytes([image[0x206], image[0x207]]);
    if protocol < 0x20c || image[0x211] & 1 == 0 {
        return Err(format!(
            "boot protocol {protocol:#x}: only bzImages with protocol 2.12 or newer are modelled"
        ));
    }
    if cmdline.split_whitespace().any(|w| w.starts_with("vga=")) {
        return Err("QEMU rewrites the header for vga=, which is not modelled".into());
    }
    let memory = memory_mib * 1024 * 1024;
    // q35: RAM below 4 GiB, as QEMU lays it out.
    let below_4g = if memory >= 0xb000_0000 {
        0x8000_0000
    } else {
        memory
    };
    let xloadflags = u16::from_le_bytes([image[0x236], image[0x237]]);
    let mut initrd_max: u64 = if xloadflags & 2 != 0 {
        u32::MAX as u64
    } else {
        u32::from_le_bytes([image[0x22c], image[0x22d], image[0x22e], image[0x22f]]) as u64
    };
    if initrd_max >= below_4g - ACPI_DATA_SIZE {
        initrd_max = below_4g - ACPI_DATA_SIZE - 1;
    }
    let initrd_addr = initrd_max
        .checked_sub(initrd_len as u64)
        .ok_or("the initrd does not fit below 4 GiB")?
        & !4095;
    let mut out = image.to_vec();
    out[0x210] = 0xb0;
    out[0x211] |= 0x80;
    out[0x224..0x226].copy_from_slice(&((CMDLINE_ADDR - REAL_ADDR - 0x200) as u16).to_le_bytes());
    out[0x228..0x22c].copy_from_slice(&CMDLINE_ADDR.to_le_bytes());
    if initrd_len > 0 {
        out[0x218..0x21c].copy_from_slice(&(initrd_addr as u32).to_le_bytes());
        out[0x21c..0x220].copy_from_slice(&(initrd_len as u32).to_le_bytes());
    }
    Ok(out)
}

/// What an event measured, in words; `last_app` marks the kernel.
fn what(e: &Event, kernel: Option<usize>) -> &'static str {
    match (e.kind, e.tag()) {
        (_, Some(TAG_LINUX_INITRD)) => "initrd",
        (_, Some(TAG_LOAD_OPTIONS)) => "command line",
        (EV_EFI_BOOT_SERVICES_APPLICATION, _) if Some(e.number) == kernel => "kernel image",
        (EV_EFI_BOOT_SERVICES_APPLICATION, _) => "boot application",
        (EV_SEPARATOR, _) => "separator",
        _ => "firmware event",
    }
}

/// The log's events of `pcrs` in one bank, as an approval records them.
pub fn record(log: &EventLog, pcrs: &[u32], bank: PcrBank) -> Vec<RecordedEvent> {
    let kernel = kernel_event(log).map(|e| e.number);
    log.events
        .iter()
        .filter(|e| pcrs.contains(&e.pcr) && e.kind != crate::eventlog::EV_NO_ACTION)
        .filter_map(|e| {
            Some(RecordedEvent {
                pcr: e.pcr,
                what: what(e, kernel).to_string(),
                digest: hex::encode(e.digests.get(&bank)?),
            })
        })
        .collect()
}

/// Why PCR `pcr` of this boot (`now`) differs from an approved boot (`approved`), in
/// words: the first event that differs. Labels from the header are not shown as they are:
/// only sealroot's own words reach the terminal.
pub fn explain(pcr: u32, approved: &[RecordedEvent], now: &[RecordedEvent]) -> String {
    let a: Vec<&RecordedEvent> = approved.iter().filter(|e| e.pcr == pcr).collect();
    let n: Vec<&RecordedEvent> = now.iter().filter(|e| e.pcr == pcr).collect();
    for (x, y) in a.iter().zip(n.iter()) {
        if x.what != y.what {
            break;
        }
        if x.digest != y.digest {
            return match y.what.as_str() {
                "initrd" => format!("PCR {pcr}: the initrd differs from the approved one"),
                "command line" => {
                    format!("PCR {pcr}: the command line differs from the approved one")
                }
                "kernel image" => format!("PCR {pcr}: a different kernel image"),
                "boot application" => {
                    format!("PCR {pcr}: a different boot application (shim or boot loader)")
                }
                "separator" => format!("PCR {pcr}: a different separator event"),
                _ => format!("PCR {pcr}: a firmware measurement differs from the approved one"),
            };
        }
    }
    if a.len() != n.len() || a.iter().zip(n.iter()).any(|(x, y)| x.what != y.what) {
        return format!(
            "PCR {pcr}: this boot measured {} events, the approved boot {} (a different boot path)",
            n.len(),
            a.len()
        );
    }
    format!(
        "PCR {pcr}: the events match the approved ones, yet the value differs (the log does not account for the PCR)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pcr: u32, what: &str, digest: &str) -> RecordedEvent {
        RecordedEvent {
            pcr,
            what: what.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn names_the_event_that_changed() {
        let approved = vec![
            ev(4, "kernel image", "aa"),
            ev(9, "command line", "bb"),
            ev(9, "initrd", "cc"),
        ];
        let mut now = approved.clone();
        now[2].digest = "dd".into();
        assert_eq!(
            explain(9, &approved, &now),
            "PCR 9: the initrd differs from the approved one"
        );
        now[0].digest = "ee".into();
        assert_eq!(
            explain(4, &approved, &now),
            "PCR 4: a different kernel image"
        );
        now[1].digest = "ff".into();
        assert!(explain(9, &approved, &now).contains("command line"));
        // Same events so far, then one more: a different boot path.
        let mut longer = approved.clone();
        longer.push(ev(9, "firmware event", "00"));
        assert!(explain(9, &approved, &longer).contains("measured 3 events, the approved boot 2"));
    }

    #[test]
    fn qemu_patches_only_the_boot_loader_fields() {
        let mut image = vec![0u8; 4096];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x211] = 1;
        image[0x236] = 0x7f;
        let out = qemu_patched_kernel(&image, 4096 * 3 + 1, 1024, "root=x").expect("patched");
        let changed: Vec<usize> = (0..image.len()).filter(|&i| image[i] != out[i]).collect();
        assert!(changed.iter().all(|&i| (0x210..0x22c).contains(&i)));
        // 1 GiB - ACPI data - 1, less the initrd, page aligned down.
        let addr = u32::from_le_bytes([out[0x218], out[0x219], out[0x21a], out[0x21b]]);
        assert_eq!(
            addr,
            ((0x4000_0000u64 - 0x2_8000 - 1 - 12289) & !4095) as u32
        );
        assert!(qemu_patched_kernel(&image, 1, 1024, "vga=791").is_err());
        assert!(qemu_patched_kernel(&image[..100], 1, 1024, "").is_err());
    }
}
