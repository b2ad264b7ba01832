//! What a block device holds, as udev's own `blkid` builtin decides it (libblkid's safe
//! probe): the boot path uses it to find a LUKS2 disk by UUID as soon as the kernel makes
//! the disk's node, without waiting for udev's /dev/disk/by-uuid link. Only the RAID and
//! crypto signatures are probed (the file system probers would only slow the boot): a RAID
//! member (whose copy of the header is no volume of its own) or a device with two such
//! signatures is no LUKS device here, as for udev.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BLKID_SUBLKS_UUID: c_int = 1 << 3;
const BLKID_SUBLKS_TYPE: c_int = 1 << 5;
const BLKID_FLTR_ONLYIN: c_int = 2;
const BLKID_USAGE_RAID: c_int = 1 << 2;
const BLKID_USAGE_CRYPTO: c_int = 1 << 3;

#[link(name = "blkid")]
unsafe extern "C" {
    fn blkid_new_probe_from_filename(filename: *const c_char) -> *mut c_void;
    fn blkid_free_probe(pr: *mut c_void);
    fn blkid_probe_enable_superblocks(pr: *mut c_void, enable: c_int) -> c_int;
    fn blkid_probe_set_superblocks_flags(pr: *mut c_void, flags: c_int) -> c_int;
    fn blkid_probe_filter_superblocks_usage(pr: *mut c_void, flag: c_int, usage: c_int) -> c_int;
    fn blkid_do_safeprobe(pr: *mut c_void) -> c_int;
    fn blkid_probe_lookup_value(
        pr: *mut c_void,
        name: *const c_char,
        data: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;
}

/// A device's one identified content (TYPE and UUID as blkid spells them).
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: String,
    pub uuid: String,
}

/// Probes `device`: `Ok(None)` when it holds nothing identifiable, or more than one thing
/// (blkid's "ambivalent" result, which udev does not link either).
pub fn probe(device: &Path) -> Result<Option<Identity>, String> {
    let path = CString::new(device.as_os_str().as_bytes())
        .map_err(|_| "a device path with a NUL byte".to_string())?;
    // SAFETY: path is a valid C string; the probe is freed below on every path.
    let pr = unsafe { blkid_new_probe_from_filename(path.as_ptr()) };
    if pr.is_null() {
        return Err(format!(
            "cannot open {}: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    let result = (|| {
        // SAFETY: pr is a live probe.
        unsafe {
            if blkid_probe_enable_superblocks(pr, 1) != 0
                || blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID) != 0
                || blkid_probe_filter_superblocks_usage(
                    pr,
                    BLKID_FLTR_ONLYIN,
                    BLKID_USAGE_RAID | BLKID_USAGE_CRYPTO,
                ) != 0
            {
                return Err("blkid refused its probe settings".to_string());
            }
            match blkid_do_safeprobe(pr) {
                0 => {}
                // 1: nothing found; -2: more than one signature.
                1 | -2 => return Ok(None),
                _ => return Err(format!("cannot probe {}", device.display())),
            }
        }
        let value = |name: &CStr| {
            let mut data: *const c_char = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: pr is live; data points into the probe, copied before it is freed.
            let rc = unsafe { blkid_probe_lookup_value(pr, name.as_ptr(), &mut data, &mut len) };
            (rc == 0 && !data.is_null())
                // SAFETY: blkid returns a NUL-terminated string.
                .then(|| {
                    unsafe { CStr::from_ptr(data) }
                        .to_string_lossy()
                        .into_owned()
                })
        };
        Ok(match (value(c"TYPE"), value(c"UUID")) {
            (Some(kind), Some(uuid)) => Some(Identity { kind, uuid }),
            _ => None,
        })
    })();
    // SAFETY: pr came from blkid_new_probe_from_filename and is not used after this.
    unsafe { blkid_free_probe(pr) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_holds_nothing() {
        let dir = std::env::temp_dir().join(format!("sealroot-blkid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("zeros");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(probe(&f), Ok(None));
        assert!(probe(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
