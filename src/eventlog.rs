//! The TCG event log the firmware and the kernel leave behind
//! (/sys/kernel/security/tpm0/binary_bios_measurements, crypto-agile format, TCG PC Client
//! Platform Firmware Profile §10): parsed, replayed into PCR values, and edited to predict
//! the next boot. A log that does not parse is an error naming the event, never a guess.

use std::collections::BTreeMap;

use crate::tpm::pcr::PcrBank;

pub const EV_NO_ACTION: u32 = 0x0000_0003;
pub const EV_SEPARATOR: u32 = 0x0000_0004;
pub const EV_EVENT_TAG: u32 = 0x0000_0006;
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// Linux EFI stub tags (PCR 9): the initrd served by LoadFile2, and the LoadOptions.
pub const TAG_LINUX_INITRD: u32 = 0x8F3B_22EC;
pub const TAG_LOAD_OPTIONS: u32 = 0x8F3B_22ED;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, from 0 (the Spec ID event).
    pub number: usize,
    pub pcr: u32,
    pub kind: u32,
    /// One digest per bank the log records.
    pub digests: BTreeMap<PcrBank, Vec<u8>>,
    pub data: Vec<u8>,
}

impl Event {
    /// The tag id of an EV_EVENT_TAG event.
    pub fn tag(&self) -> Option<u32> {
        (self.kind == EV_EVENT_TAG && self.data.len() >= 8)
            .then(|| u32::from_le_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]))
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        let what = match (self.kind, self.tag()) {
            (_, Some(TAG_LINUX_INITRD)) => "the initrd (EFI stub)".to_string(),
            (_, Some(TAG_LOAD_OPTIONS)) => "the kernel command line (EFI stub)".to_string(),
            (EV_EFI_BOOT_SERVICES_APPLICATION, _) => {
                "an EFI application (kernel, shim, boot loader)".to_string()
            }
            (EV_SEPARATOR, _) => "the separator".to_string(),
            (k, _) => format!("event type 0x{k:08x}"),
        };
        format!("event {} (PCR {}, {what})", self.number, self.pcr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub banks: Vec<PcrBank>,
    pub events: Vec<Event>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    event: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        // `pos` may lie past the end: the Spec ID event's fields start at 24, whatever
        // its size.
        let Some(out) = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
        else {
            return Err(format!(
                "event {}: truncated in {what} (offset {})",
                self.event, self.pos
            ));
        };
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Event data larger than this is a broken log, not a measurement.
const MAX_EVENT_DATA: usize = 1 << 20;

impl EventLog {
    pub fn parse(bytes: &[u8]) -> Result<EventLog, String> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            event: 0,
        };
        // The first event is in the old SHA-1 format and carries the Spec ID event, which
        // says which banks (and digest sizes) the rest of the log has.
        let _pcr = r.u32("the PCR index")?;
        let kind = r.u32("the event type")?;
        r.take(20, "the SHA-1 digest")?;
        let size = r.u32("the event size")? as usize;
        let spec = r.take(size, "the Spec ID event")?.to_vec();
        if kind != EV_NO_ACTION || !spec.starts_with(b"Spec ID Event03\0") {
            return Err(
                "event 0 is not a crypto-agile Spec ID event (\"Spec ID Event03\"): not a TCG 2.0 log"
                    .into(),
            );
        }
        let mut s = Reader {
            buf: &spec,
            pos: 24,
            event: 0,
        };
        let count = s.u32("the algorithm count")?;
        let mut sizes: BTreeMap<u16, usize> = BTreeMap::new();
        for _ in 0..count {
            let alg = s.u16("an algorithm")?;
            let len = s.u16("a digest size")? as usize;
            sizes.insert(alg, len);
        }
        let banks: Vec<PcrBank> = [PcrBank::Sha1, PcrBank::Sha256, PcrBank::Sha384]
            .into_iter()
            .filter(|b| sizes.get(&b.alg_id()) == Some(&b.digest_len()))
            .collect();
        let mut events = Vec::new();
        while r.pos < bytes.len() {
            r.event += 1;
            let number = r.event;
            let pcr = r.u32("the PCR index")?;
            let kind = r.u32("the event type")?;
            let n = r.u32("the digest count")?;
            let mut digests = BTreeMap::new();
            for _ in 0..n {
                let alg = r.u16("a digest algorithm")?;
                let len = *sizes.get(&alg).ok_or_else(|| {
                    format!(
                        "event {number}: digest algorithm 0x{alg:04x} is not in the Spec ID event"
                    )
                })?;
                let d = r.take(len, "a digest")?.to_vec();
                if let Some(bank) = banks.iter().find(|b| b.alg_id() == alg) {
                    digests.insert(*bank, d);
                }
            }
            let size = r.u32("the event size")? as usize;
            if size > MAX_EVENT_DATA {
                return Err(format!("event {number}: {size} bytes of event data"));
            }
            let data = r.take(size, "the event data")?.to_vec();
            if pcr > 23 {
                return Err(format!("event {number}: PCR {pcr}"));
            }
            events.push(Event {
                number,
                pcr,
                kind,
                digests,
                data,
            });
        }
        Ok(EventLog { banks, events })
    }

    /// The PCR values the log accounts for, per bank (PCRs start at zeros; EV_NO_ACTION
    /// events extend nothing). PCR 0's locality start value is not handled: only PCRs 1-23
    /// are given.
    pub fn replay(&self, bank: PcrBank) -> Result<BTreeMap<u32, Vec<u8>>, String> {
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for e in &self.events {
            if e.kind == EV_NO_ACTION || e.pcr == 0 {
                continue;
            }
            let digest = e
                .digests
                .get(&bank)
                .ok_or_else(|| format!("{} has no {bank} digest", e.describe()))?;
            let old = pcrs
                .entry(e.pcr)
                .or_insert_with(|| vec![0u8; bank.digest_len()]);
            *old = bank.extend(old, digest);
        }
        Ok(pcrs)
    }

    /// Replaces the digests of the events `which` selects with `digest` (one value per
    /// bank); returns how many events it changed.
    pub fn substitute(
        &mut self,
        which: impl Fn(&Event) -> bool,
        digest: impl Fn(PcrBank) -> Vec<u8>,
    ) -> usize {
        let mut n = 0;
        for e in self.events.iter_mut().filter(|e| which(e)) {
            for (bank, d) in e.digests.iter_mut() {
                *d = digest(*bank);
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal crypto-agile log: the Spec ID event (SHA-256 only), then the events.
    fn log(events: &[(u32, u32, [u8; 32], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes()); // platform class
        spec.extend_from_slice(&[0, 2, 0, 2]); // version, errata, uintn size
        spec.extend_from_slice(&1u32.to_le_bytes());
        spec.extend_from_slice(&0x000bu16.to_le_bytes());
        spec.extend_from_slice(&32u16.to_le_bytes());
        spec.push(0); // vendor info size
        out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        out.extend_from_slice(&spec);
        for (pcr, kind, digest, data) in events {
            out.extend_from_slice(&pcr.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&0x000bu16.to_le_bytes());
            out.extend_from_slice(digest);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn replays_and_substitutes() {
        let bytes = log(&[
            (4, EV_SEPARATOR, [1; 32], &[0, 0, 0, 0]),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, [2; 32], b"kernel"),
        ]);
        let mut l = EventLog::parse(&bytes).unwrap();
        assert_eq!(l.banks, [PcrBank::Sha256]);
        let b = PcrBank::Sha256;
        let want = b.extend(&b.extend(&[0; 32], &[1; 32]), &[2; 32]);
        assert_eq!(l.replay(b).unwrap()[&4], want);
        let n = l.substitute(
            |e| e.kind == EV_EFI_BOOT_SERVICES_APPLICATION,
            |_| vec![3; 32],
        );
        assert_eq!(n, 1);
        assert_ne!(l.replay(b).unwrap()[&4], want);
    }

    #[test]
    fn a_broken_log_names_the_event() {
        let mut bytes = log(&[(4, EV_SEPARATOR, [1; 32], &[0, 0, 0, 0])]);
        bytes.truncate(bytes.len() - 2);
        let e = EventLog::parse(&bytes).unwrap_err();
        assert!(e.contains("event 1"), "{e}");
        assert!(EventLog::parse(b"garbage garbage garbage garbage garbage").is_err());
    }

    #[test]
    fn a_spec_id_event_shorter_than_its_fields_is_an_error() {
        // Found by fuzzing (fuzz/regressions/eventlog): the fields start at offset 24.
        let mut bytes = 0u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 20]);
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(b"Spec ID Event03\0");
        let e = EventLog::parse(&bytes).unwrap_err();
        assert!(e.contains("truncated in the algorithm count"), "{e}");
    }
}
