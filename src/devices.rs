//! Finding the volumes at boot. The boot scripts name a volume as crypttab does (`UUID=…`,
//! `PARTUUID=…`, `LABEL=…`, `PARTLABEL=…` or a path) and `unlock --wait` waits for it here,
//! in the process that will unlock it, so the process start and the TPM context are paid
//! while the disk is still on its way.
//!
//! A `UUID=` volume is taken from udev's /dev/disk/by-uuid link, or earlier: as soon as the
//! kernel's own node of a disk or partition holds a LUKS2 header with that UUID (udev takes a
//! few hundred milliseconds more to make the link). The node is probed as udev's blkid
//! builtin probes it, and used only when it is the one device carrying that UUID and nothing
//! is built on it; device-mapper and MD devices, and initrds with multipath, are left to
//! udev. The header is attacker input either way (a disk with the same UUID gets the same
//! link): the TPM policy and the fence, not the name, decide what unlocks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::blkid;

/// How often the wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Kernel names of disks and their partitions that the scan probes: those udev's
/// persistent-storage rules link by UUID. Optical and floppy drives (whose open may block),
/// loop, RAM, device-mapper and MD devices are not probed.
const SCANNED: [&str; 5] = ["sd", "vd", "xvd", "nvme", "mmcblk"];

/// Files whose presence in the root means multipath: its paths carry the same header, and
/// opening one would keep multipathd from the disk.
const MULTIPATH: [&str; 3] = [
    "/etc/multipath.conf",
    "/sbin/multipathd",
    "/usr/sbin/multipathd",
];

/// A volume as crypttab and the kernel command line name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Uuid(String),
    Link(PathBuf),
    Path(PathBuf),
}

impl Source {
    /// `UUID=…` (also `luks-UUID`'s UUID as the scripts pass it), `PARTUUID=`, `LABEL=`,
    /// `PARTLABEL=` (udev's links), else a path. Values that would leave the link directory
    /// stay paths that never exist.
    pub fn parse(spec: &str) -> Source {
        let link = |dir: &str, value: &str| {
            if value.is_empty() || value.contains('/') || value == "." || value == ".." {
                Source::Path(PathBuf::from(spec))
            } else {
                Source::Link(Path::new("/dev/disk").join(dir).join(value))
            }
        };
        if let Some(uuid) = spec.strip_prefix("UUID=") {
            return match link("by-uuid", uuid) {
                Source::Link(_) => Source::Uuid(uuid.to_string()),
                other => other,
            };
        }
        for (prefix, dir) in [
            ("PARTUUID=", "by-partuuid"),
            ("LABEL=", "by-label"),
            ("PARTLABEL=", "by-partlabel"),
        ] {
            if let Some(value) = spec.strip_prefix(prefix) {
                return link(dir, value);
            }
        }
        Source::Path(PathBuf::from(spec))
    }

    /// Where udev puts it (or the path itself): what is opened, and named in messages, when
    /// the scan has not found it.
    pub fn path(&self) -> PathBuf {
        match self {
            Source::Uuid(uuid) => Path::new("/dev/disk/by-uuid").join(uuid),
            Source::Link(p) | Source::Path(p) => p.clone(),
        }
    }
}

/// The kernel's block devices, probed once each.
pub struct Scan {
    sys: PathBuf,
    dev: PathBuf,
    /// (name, dev number, size) of devices already probed: a device is probed again only
    /// when it changed (a medium inserted, a new device under the same name).
    seen: HashSet<(String, String, String)>,
    /// UUID → the kernel nodes that carry it as a LUKS device.
    found: Vec<(String, PathBuf)>,
    enabled: bool,
}

impl Scan {
    /// The scan of this system, unless it has multipath.
    pub fn new() -> Scan {
        let enabled = !MULTIPATH.iter().any(|p| Path::new(p).exists());
        if !enabled {
            log::debug!("multipath in this root: waiting for udev's links only");
        }
        Scan::at("/sys/class/block", "/dev", enabled)
    }

    pub fn at(sys: impl Into<PathBuf>, dev: impl Into<PathBuf>, enabled: bool) -> Scan {
        Scan {
            sys: sys.into(),
            dev: dev.into(),
            seen: HashSet::new(),
            found: Vec::new(),
            enabled,
        }
    }

    /// Probes the devices that appeared (or changed) since the last call.
    fn refresh(&mut self) {
        if !self.enabled {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.sys) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !SCANNED.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let attr = |a: &str| {
                std::fs::read_to_string(entry.path().join(a))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let (number, size) = (attr("dev"), attr("size"));
            if size.is_empty() || size == "0" {
                continue;
            }
            // Something built on it (MD, LVM, multipath, a mapping): a component, not a
            // volume.
            let held = std::fs::read_dir(entry.path().join("holders"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if held || !self.seen.insert((name.clone(), number, size)) {
                continue;
            }
            let node = self.dev.join(&name);
            self.found.retain(|(_, p)| *p != node);
            // Only what starts with a LUKS2 header is worth libblkid's probe.
            if !starts_as_luks2(&node) {
                continue;
            }
            log::debug!("{}: probing", node.display());
            match blkid::probe(&node) {
                Ok(Some(id)) if id.kind == "crypto_LUKS" => {
                    log::debug!("{}: a LUKS device, UUID {}", node.display(), id.uuid);
                    self.found.push((id.uuid, node));
                }
                Ok(_) => {}
                // The node may not be there yet; the next round tries again.
                Err(e) => {
                    log::debug!("{e}");
                    self.seen.retain(|(n, _, _)| *n != name);
                }
            }
        }
    }

    /// The one kernel node carrying this UUID, if exactly one does.
    fn lookup(&self, uuid: &str) -> Option<PathBuf> {
        let mut matches = self
            .found
            .iter()
            .filter(|(u, _)| u.eq_ignore_ascii_case(uuid));
        let first = matches.next()?;
        if matches.next().is_some() {
            log::debug!("UUID {uuid} is on more than one device: waiting for udev's link");
            return None;
        }
        Some(first.1.clone())
    }

    /// Where `source` is now, if it is there.
    pub fn locate(&mut self, source: &Source) -> Option<PathBuf> {
        if matches!(source, Source::Uuid(_)) {
            self.refresh();
        }
        self.look(source)
    }

    /// The same from what the last refresh saw.
    fn look(&self, source: &Source) -> Option<PathBuf> {
        let link = source.path();
        if link.exists() {
            return Some(link);
        }
        match source {
            Source::Uuid(uuid) => self.lookup(uuid),
            _ => None,
        }
    }
}

impl Default for Scan {
    fn default() -> Self {
        Scan::new()
    }
}

/// Whether the device's first bytes are a LUKS2 binary header's magic and version. A device
/// that cannot be read yet counts as one: libblkid's probe reports it, and it is tried again.
fn starts_as_luks2(node: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    match std::fs::File::open(node).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => head == *b"LUKS\xba\xbe\x00\x02",
        Err(_) => true,
    }
}

/// Waits until every source is there or `deadline` passes, calling `idle` between looks
/// (the unlock opens the TPM then). A source still missing keeps its udev path: opening it
/// then reports the device as missing.
pub fn wait(
    sources: &[Source],
    scan: &mut Scan,
    deadline: Instant,
    mut idle: impl FnMut(),
) -> Vec<PathBuf> {
    let mut found: Vec<Option<PathBuf>> = vec![None; sources.len()];
    loop {
        // One look at the kernel's devices per round, however many volumes wait on it.
        let scanning = found
            .iter()
            .zip(sources)
            .any(|(slot, source)| slot.is_none() && matches!(source, Source::Uuid(_)));
        if scanning {
            scan.refresh();
        }
        for (slot, source) in found.iter_mut().zip(sources) {
            if slot.is_none() {
                *slot = scan.look(source);
            }
        }
        if found.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        idle();
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
    found
        .into_iter()
        .zip(sources)
        .map(|(p, s)| p.unwrap_or_else(|| s.path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_as_crypttab_spells_them() {
        assert_eq!(Source::parse("UUID=abc"), Source::Uuid("abc".into()));
        assert_eq!(
            Source::parse("PARTUUID=1-2").path(),
            PathBuf::from("/dev/disk/by-partuuid/1-2")
        );
        assert_eq!(
            Source::parse("LABEL=root").path(),
            PathBuf::from("/dev/disk/by-label/root")
        );
        assert_eq!(Source::parse("/dev/vda2"), Source::Path("/dev/vda2".into()));
        // Nothing that leaves the link directory.
        for bad in ["UUID=../../sda", "LABEL=..", "UUID=", "PARTLABEL=a/b"] {
            assert!(
                matches!(Source::parse(bad), Source::Path(_)),
                "{bad} became a link"
            );
        }
    }

    #[test]
    fn a_missing_source_keeps_its_link_after_the_deadline() {
        let dir = std::env::temp_dir().join(format!("sealroot-devices-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sys")).unwrap();
        let mut scan = Scan::at(dir.join("sys"), dir.join("dev"), true);
        let mut rounds = 0;
        let started = Instant::now();
        let got = wait(
            &[Source::parse("UUID=0000")],
            &mut scan,
            Instant::now() + Duration::from_millis(200),
            || rounds += 1,
        );
        assert_eq!(got, vec![PathBuf::from("/dev/disk/by-uuid/0000")]);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(rounds >= 2, "idle ran {rounds} times");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
