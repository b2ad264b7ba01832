//! root's kernel user keyring: where the initrd leaves a volume's local approval key for
//! the booted system (as Ubuntu's initrd leaves its policy key). Keys there live in kernel
//! memory only — on no file system, in no environment — and uid 0 alone can read them;
//! they last until the next reboot.

use std::ffi::CString;
use std::io;

use nix::libc;

use crate::secret::Secret;

const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_UNLINK: libc::c_long = 9;
const KEYCTL_SEARCH: libc::c_long = 10;
const KEYCTL_READ: libc::c_long = 11;
/// Possessor: everything; the owning user (uid 0): view, read, search. Services that run
/// with a private session keyring (systemd's default) do not possess root's user keyring,
/// so the user bits must allow reading.
const PERM: libc::c_long = 0x3f0b_0000;

fn c(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a key name"))
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Adds (or replaces) a "user" key in root's user keyring.
pub fn store(description: &str, payload: &[u8]) -> io::Result<()> {
    let kind = c("user")?;
    let desc = c(description)?;
    // SAFETY: every pointer is valid for the length passed, for the call's duration.
    let id = check(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_USER_KEYRING,
        )
    })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, id, PERM) })?;
    Ok(())
}

fn search(description: &str) -> io::Result<Option<libc::c_long>> {
    let kind = c("user")?;
    let desc = c(description)?;
    // SAFETY: valid NUL-terminated strings for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_SEARCH,
            KEY_SPEC_USER_KEYRING,
            kind.as_ptr(),
            desc.as_ptr(),
            0,
        )
    };
    match check(r) {
        Ok(id) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOKEY) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EKEYREVOKED) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EKEYEXPIRED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The payload of a "user" key, if there is one with this description.
pub fn load(description: &str, max: usize) -> io::Result<Option<Secret>> {
    let Some(id) = search(description)? else {
        return Ok(None);
    };
    let mut buf = Secret::zeroed(max);
    // SAFETY: the buffer is writable for `max` bytes.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            id,
            buf.expose_mut().as_mut_ptr(),
            max,
        )
    })? as usize;
    if n > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the key in the keyring is larger than expected",
        ));
    }
    buf.truncate(n);
    Ok(Some(buf))
}

/// Removes a key from root's user keyring (gone is fine).
pub fn remove(description: &str) -> io::Result<()> {
    if let Some(id) = search(description)? {
        // SAFETY: plain integer arguments.
        check(unsafe {
            libc::syscall(libc::SYS_keyctl, KEYCTL_UNLINK, id, KEY_SPEC_USER_KEYRING)
        })?;
    }
    Ok(())
}

/// Descriptions of the "user" keys in root's user keyring that start with `prefix`.
pub fn list(prefix: &str) -> io::Result<Vec<String>> {
    let mut ids = vec![0i32; 256];
    // SAFETY: the buffer is writable for the length passed.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            KEY_SPEC_USER_KEYRING,
            ids.as_mut_ptr(),
            ids.len() * 4,
        )
    })? as usize;
    ids.truncate((n / 4).min(256));
    let mut out = Vec::new();
    for id in ids {
        let mut buf = vec![0u8; 512];
        // SAFETY: the buffer is writable for the length passed.
        let Ok(len) = check(unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_DESCRIBE,
                id as libc::c_long,
                buf.as_mut_ptr(),
                buf.len(),
            )
        }) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..(len as usize).min(buf.len())]);
        // "type;uid;gid;perm;description\0"
        let mut parts = text.trim_end_matches('\0').splitn(5, ';');
        if parts.next() != Some("user") {
            continue;
        }
        if let Some(desc) = parts.nth(3)
            && desc.starts_with(prefix)
        {
            out.push(desc.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real keyring of the user running the tests: stored, listed, read back, removed.
    #[test]
    fn stores_lists_reads_and_removes() {
        let desc = format!("sealroot-test:{}:{}", std::process::id(), line!());
        store(&desc, b"payload").expect("add_key");
        assert!(list("sealroot-test:").expect("list").contains(&desc));
        let got = load(&desc, 64).expect("read").expect("present");
        assert_eq!(got.expose(), b"payload");
        remove(&desc).expect("unlink");
        assert!(load(&desc, 64).expect("read").is_none());
        assert!(!list("sealroot-test:").expect("list").contains(&desc));
    }
}
