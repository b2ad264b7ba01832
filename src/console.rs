//! Messages for people: one line each on stderr, prefixed `sealroot:`, and in the initrd
//! also in the kernel log (`--kmsg`), where they carry boot timestamps. Never secrets.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static KMSG: AtomicBool = AtomicBool::new(false);

/// Kernel log levels (include/linux/kern_levels.h).
const KERN_ERR: u8 = 3;
const KERN_NOTICE: u8 = 5;
const KERN_DEBUG: u8 = 7;

pub fn enable_kmsg() {
    KMSG.store(true, Ordering::Relaxed);
}

pub fn kmsg_enabled() -> bool {
    KMSG.load(Ordering::Relaxed)
}

/// A line safe for a terminal and the kernel log: messages quote header strings, and a
/// control character there (an escape sequence) could redraw the screen into a fake
/// prompt. Every control character becomes a visible `\u{..}`.
pub fn escape(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A problem: always shown.
pub fn error(line: &str) {
    let line = escape(line);
    eprintln!("sealroot: {line}");
    to_kmsg(KERN_ERR, &line);
}

/// Progress worth a line in the initrd (shown only with --kmsg, where nobody watches stderr
/// of a successful command otherwise).
pub fn progress(line: &str) {
    if kmsg_enabled() {
        let line = escape(line);
        eprintln!("sealroot: {line}");
        to_kmsg(KERN_NOTICE, &line);
    }
}

/// An info or debug record (`SEALROOT_LOG`) in the kernel log too, with --kmsg: at
/// KERN_DEBUG, below the console's level, so the console shows what it did before.
pub fn log_record(level: log::Level, line: &str) {
    if kmsg_enabled() && level >= log::Level::Info {
        to_kmsg(KERN_DEBUG, &escape(line));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(escape("a\x1b[2Jb\nc\u{9b}d"), "a\\u{1b}[2Jb\\u{a}c\\u{9b}d");
        assert_eq!(escape("plain, ünïcode"), "plain, ünïcode");
    }
}
