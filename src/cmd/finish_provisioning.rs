//! `sealroot finish-provisioning`: the part of a first boot that runs after switch-root —
//! the data pass of re-encryption, online, then the removal of the image's last keyslot.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::firstboot;
use crate::luks::Volume;

/// Returns how many volumes were finished.
pub fn run(devices: &[PathBuf]) -> Result<usize> {
    let mappings = active_luks2_mappings();
    let targets: Vec<PathBuf> = if devices.is_empty() {
        mappings.iter().map(|m| m.device.clone()).collect()
    } else {
        devices.to_vec()
    };
    let mut finished = 0;
    let mut first_error = None;
    for device in targets {
        match finish_one(&device, &mappings) {
            Ok(true) => finished += 1,
            Ok(false) => log::info!("{}: nothing to finish", device.display()),
            Err(e) => {
                crate::console::error(&format!("{}: {e}", device.display()));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(finished),
    }
}

fn finish_one(device: &Path, mappings: &[Mapping]) -> Result<bool> {
    let mut vol = Volume::open(device)?;
    let uuid = vol.uuid()?.replace('-', "");
    let active = mappings
        .iter()
        .find(|m| m.uuid == uuid)
        .map(|m| m.name.clone());
    firstboot::finish_provisioning(&mut vol, active.as_deref())
}

/// An active dm-crypt mapping of a LUKS2 volume.
struct Mapping {
    name: String,
    /// The LUKS UUID without dashes, as device-mapper records it.
    uuid: String,
    device: PathBuf,
}

/// From /sys/block/dm-*/dm: uuid "CRYPT-LUKS2-<uuid>-<name>", name, and the one slave.
fn active_luks2_mappings() -> Vec<Mapping> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        let (Ok(dm_uuid), Ok(name)) = (read("dm/uuid"), read("dm/name")) else {
            continue;
        };
        let Some(rest) = dm_uuid.strip_prefix("CRYPT-LUKS2-") else {
            continue;
        };
        let Some(uuid) = rest.split('-').next() else {
            continue;
        };
        let slaves: Vec<_> = std::fs::read_dir(dir.join("slaves"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if let [slave] = slaves.as_slice() {
            out.push(Mapping {
                name,
                uuid: uuid.to_string(),
                device: Path::new("/dev").join(slave),
            });
        }
    }
    out
}
