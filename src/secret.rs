//! The one owner of secret bytes: zeroized on drop, mlocked while alive, never printed
//! or cloned by accident.

use std::fmt;
use std::io::Read;

use zeroize::Zeroize;

/// Secret bytes in a fixed-capacity buffer: the buffer never reallocates, so no stale copy
/// is left behind on the heap, and it is locked into RAM so it never reaches swap.
pub struct Secret {
    buf: Box<[u8]>,
    len: usize,
    locked: bool,
}

impl Secret {
    /// An empty secret able to hold `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Secret {
        let buf = vec![0u8; capacity.max(1)].into_boxed_slice();
        let locked = lock(&buf);
        Secret {
            buf,
            len: 0,
            locked,
        }
    }

    /// Copies `bytes` into a new secret. The caller stays responsible for its own copy.
    pub fn from_slice(bytes: &[u8]) -> Secret {
        let mut s = Secret::with_capacity(bytes.len());
        s.buf[..bytes.len()].copy_from_slice(bytes);
        s.len = bytes.len();
        s
    }

    /// `len` zero bytes, to be filled in place through `expose_mut`.
    pub fn zeroed(len: usize) -> Secret {
        let mut s = Secret::with_capacity(len);
        s.len = len;
        s
    }

    /// Shortens the secret, wiping what is cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.buf[len..self.len].zeroize();
            self.len = len;
        }
    }

    /// `len` bytes from the kernel's CSPRNG.
    pub fn random(len: usize) -> Result<Secret, getrandom::Error> {
        let mut s = Secret::with_capacity(len);
        getrandom::getrandom(&mut s.buf[..len])?;
        s.len = len;
        Ok(s)
    }

    /// Reads everything from `reader` (up to `capacity` bytes) without intermediate copies.
    pub fn read_from(reader: &mut dyn Read, capacity: usize) -> std::io::Result<Secret> {
        let mut s = Secret::with_capacity(capacity);
        loop {
            if s.len == capacity {
                // One byte more tells "exactly full" from "too long".
                let mut probe = [0u8; 1];
                if reader.read(&mut probe)? != 0 {
                    probe.zeroize();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("secret longer than {capacity} bytes"),
                    ));
                }
                return Ok(s);
            }
            match reader.read(&mut s.buf[s.len..capacity]) {
                Ok(0) => return Ok(s),
                Ok(n) => s.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends one byte; false when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        self.buf[self.len] = byte;
        self.len += 1;
        true
    }

    /// Removes trailing bytes matching `pred` (e.g. the newline of a key file).
    pub fn trim_end_matches(&mut self, pred: impl Fn(u8) -> bool) {
        while self.len > 0 && pred(self.buf[self.len - 1]) {
            self.len -= 1;
            self.buf[self.len] = 0;
        }
    }

    pub fn expose(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Zeroes 64 KiB of stack below the caller. C libraries leave secrets in locals they do not
/// wipe (tpm2-tss decrypts a response parameter, and keeps its session key, in stack
/// arrays); once such a call has returned its frames are dead, and this frame covers them.
#[inline(never)]
pub fn wipe_stack() {
    let mut area = [0u8; 64 * 1024];
    area.zeroize();
    std::hint::black_box(&mut area);
}

fn lock(buf: &[u8]) -> bool {
    // SAFETY: the range is a live allocation owned by the Secret for its whole life.
    let ptr = std::ptr::NonNull::new(buf.as_ptr() as *mut std::ffi::c_void);
    let locked = match ptr {
        Some(p) => unsafe { nix::sys::mman::mlock(p, buf.len()).is_ok() },
        None => buf.is_empty(),
    };
    if !locked {
        warn_once_unlocked();
    }
    locked
}

/// Said once per run: secrets still work, but could reach swap.
fn warn_once_unlocked() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::warn!("cannot mlock secret memory (RLIMIT_MEMLOCK?): secrets may reach swap");
    });
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.buf.zeroize();
        if self.locked
            && let Some(p) = std::ptr::NonNull::new(self.buf.as_ptr() as *mut std::ffi::c_void)
        {
            // SAFETY: same range that was locked in `with_capacity`.
            let _ = unsafe { nix::sys::mman::munlock(p, self.buf.len()) };
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.len)
    }
}

impl PartialEq for Secret {
    /// Constant-time over the contents, so comparisons leak no prefix length.
    fn eq(&self, other: &Secret) -> bool {
        if self.len != other.len {
            return false;
        }
        let diff = self
            .expose()
            .iter()
            .zip(other.expose())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_trims_and_bounds() {
        let mut data: &[u8] = b"hunter2\n";
        let mut s = Secret::read_from(&mut data, 64).unwrap();
        s.trim_end_matches(|b| b == b'\n');
        assert_eq!(s.expose(), b"hunter2");
        let mut long: &[u8] = &[7u8; 65];
        assert!(Secret::read_from(&mut long, 64).is_err());
        let mut exact: &[u8] = &[7u8; 64];
        assert_eq!(Secret::read_from(&mut exact, 64).unwrap().len(), 64);
    }

    #[test]
    fn debug_redacts() {
        let s = Secret::from_slice(b"topsecret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("topsecret"));
        assert!(shown.contains("9 bytes"));
    }

    #[test]
    fn random_differs() {
        let a = Secret::random(32).unwrap();
        let b = Secret::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a != b);
    }
}
