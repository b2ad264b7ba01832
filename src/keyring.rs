//! root's kernel user keyring: where the initrd leaves a volume's local approval key for
//! the booted system (as Ubuntu's initrd leaves its policy key). Keys there live in kernel
//! memory only — on no file system, in no environment — and uid 0 alone can read them;
//! they last until the next reboot.

use std::ffi::CString;
use std::io;

use nix::libc;

use crate::secret::Secret;

const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;
const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
const KEYCTL_INVALIDATE: libc::c_long = 21;
const KEYCTL_LINK: libc::c_long = 8;
const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_UNLINK: libc::c_long = 9;
const KEYCTL_SEARCH: libc::c_long = 10;
const KEYCTL_READ: libc::c_long = 11;
/// The owning user (uid 0) everything, possessors nothing: possession is about keyrings,
/// not uids — a process that dropped to another uid still possesses root's user keyring
/// when its session keyring links it (pam_keyinit does), and possessor rights would let
/// it read the key. Services with a private session keyring (systemd's default) do not
/// possess it at all, so uid 0 must be able to read through the user bits.
const PERM: libc::c_long = 0x003f_0000;

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

/// Adds (or replaces) a "user" key in root's user keyring. It is made in this process's
/// own keyring, restricted, and only then linked where others look: never readable with
/// the kernel's default rights, not even for a moment.
pub fn store(description: &str, payload: &[u8]) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "only root keeps keys in root's keyring",
        ));
    }
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
            KEY_SPEC_PROCESS_KEYRING,
        )
    })?;
    // SAFETY: plain integer arguments.
    let linked = check(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, id, PERM) })
        .and_then(|_| {
            // SAFETY: plain integer arguments.
            check(unsafe {
                libc::syscall(libc::SYS_keyctl, KEYCTL_LINK, id, KEY_SPEC_USER_KEYRING)
            })
        });
    if let Err(e) = linked {
        // SAFETY: plain integer arguments.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id) };
        return Err(e);
    }
    Ok(())
}

/// Only keys that root owns: anyone who possesses root's user keyring may add keys to it.
fn owned_by_root(id: libc::c_long) -> Option<String> {
    let mut buf = vec![0u8; 512];
    // SAFETY: the buffer is writable for the length passed.
    let len = check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_DESCRIBE,
            id,
            buf.as_mut_ptr(),
            buf.len(),
        )
    })
    .ok()? as usize;
    let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]).to_string();
    // "type;uid;gid;perm;description\0"
    let mut parts = text.trim_end_matches('\0').splitn(5, ';');
    let kind = parts.next()?;
    let uid = parts.next()?;
    let description = parts.nth(2)?;
    (kind == "user" && uid == "0").then(|| description.to_string())
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
    let Some(id) = search(description)?.filter(|id| owned_by_root(*id).is_some()) else {
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
        if let Some(desc) = owned_by_root(id as libc::c_long)
            && desc.starts_with(prefix)
        {
            out.push(desc);
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

    /// A process that dropped root but still possesses root's user keyring (its session
    /// keyring links it, as pam_keyinit arranges) can neither read nor change the key.
    #[test]
    fn a_process_that_dropped_root_cannot_read_the_key() {
        use std::os::unix::process::CommandExt;
        const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        let desc = format!("sealroot-test:{}:{}", std::process::id(), line!());
        store(&desc, b"scalar").expect("add_key");
        let id = search(&desc).expect("search").expect("present");
        // SAFETY: plain syscalls on this thread's credentials.
        unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            );
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_LINK,
                KEY_SPEC_USER_KEYRING,
                KEY_SPEC_SESSION_KEYRING,
            );
        }
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: only syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setresuid(65534, 65534, 65534) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut buf = [0u8; 16];
                let read = libc::syscall(libc::SYS_keyctl, KEYCTL_READ, id, buf.as_mut_ptr(), 16);
                let kind = c"user";
                let desc = c"sealroot-test:overwrite";
                let write = libc::syscall(
                    libc::SYS_add_key,
                    kind.as_ptr(),
                    desc.as_ptr(),
                    buf.as_ptr(),
                    4usize,
                    KEY_SPEC_SESSION_KEYRING,
                );
                let update = libc::syscall(
                    libc::SYS_keyctl,
                    2 as libc::c_long,
                    id,
                    buf.as_ptr(),
                    4usize,
                );
                let _ = write;
                if read >= 0 || update >= 0 {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                Ok(())
            });
        }
        let outcome = cmd.status();
        remove(&desc).expect("unlink");
        let status = outcome.expect("the child could read or change root's key");
        assert!(status.success());
    }
}
