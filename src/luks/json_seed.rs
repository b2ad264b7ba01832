//! json-c (inside libcryptsetup) seeds its hash tables on first use: getrandom with
//! GRND_NONBLOCK and, while the kernel's RNG is not yet initialised, a read of
//! /dev/urandom, which then first generates jitter entropy (1.2 s in the test guest
//! without RDRAND, on the unlock path). A hash-table seed needs no initialised RNG: the
//! static binary gives json-c its seed function, from getrandom(GRND_INSECURE), which never
//! blocks. Only the static build: there json-c's own definition is then not linked in.

use std::ffi::c_int;

/// GRND_INSECURE (Linux 5.6); older kernels refuse it, then GRND_NONBLOCK as json-c does.
const GRND_INSECURE: u32 = 0x0004;

#[unsafe(no_mangle)]
pub extern "C" fn json_c_get_random_seed() -> c_int {
    let mut seed = [0u8; 4];
    for flags in [GRND_INSECURE, nix::libc::GRND_NONBLOCK] {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { nix::libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), flags) };
        if n == seed.len() as isize {
            return c_int::from_ne_bytes(seed);
        }
    }
    // No random bytes without waiting: the clock, as json-c's own last resort.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id()) as c_int
}
