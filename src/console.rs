//! Messages for people: one line each on stderr, prefixed `sealroot:`, and in the initrd
//! also in the kernel log (`--kmsg`), where they carry boot timestamps. Never secrets.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static KMSG: AtomicBool = AtomicBool::new(false);

/// Kernel log levels (include/linux/kern_levels.h).
const KERN_ERR: u8 = 3;
const KERN_NOTICE: u8 = 5;

pub fn enable_kmsg() {
    KMSG.store(true, Ordering::Relaxed);
}

pub fn kmsg_enabled() -> bool {
    KMSG.load(Ordering::Relaxed)
}

/// A problem: always shown.
pub fn error(line: &str) {
    eprintln!("sealroot: {line}");
    to_kmsg(KERN_ERR, line);
}

/// Progress worth a line in the initrd (shown only with --kmsg, where nobody watches stderr
/// of a successful command otherwise).
pub fn progress(line: &str) {
    if kmsg_enabled() {
        eprintln!("sealroot: {line}");
        to_kmsg(KERN_NOTICE, line);
    }
}

fn to_kmsg(level: u8, line: &str) {
    if !kmsg_enabled() {
        return;
    }
    // One write per record; the kernel splits nothing and adds the timestamp.
    if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("<{level}>sealroot: {line}\n").as_bytes());
    }
}
