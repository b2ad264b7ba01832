//! A TPM that does not answer must not hang the boot. tpm2-tss's synchronous calls wait
//! forever, so `unlock` and `fence` run under a watchdog: when the time spent outside PIN
//! prompts exceeds the limit, the process says so and exits with the TPM-unavailable code,
//! and the boot scripts fence (or power off) as after any failure. Time a person spends
//! typing a PIN is not counted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::exit;

static EPOCH: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since EPOCH when the watchdog fires; 0 while paused.
static DEADLINE: AtomicU64 = AtomicU64::new(0);
static LIMIT_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Starts the watchdog (once per process) with this limit, armed.
pub fn start(limit: Duration) {
    LIMIT_MS.store(limit.as_millis().max(1) as u64, Ordering::SeqCst);
    arm();
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let deadline = DEADLINE.load(Ordering::SeqCst);
                if deadline != 0 && now_ms() > deadline {
                    crate::console::error(&format!(
                        "the TPM did not answer within {} s; giving up (use `sealroot recover`, or check the TPM)",
                        LIMIT_MS.load(Ordering::SeqCst) / 1000
                    ));
                    std::process::exit(i32::from(exit::TPM_UNAVAILABLE));
                }
            }
        });
    });
}

fn arm() {
    DEADLINE.store(now_ms() + LIMIT_MS.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// Stops the clock while a person is asked for something; it restarts, full, on drop.
pub struct Paused(bool);

pub fn pause() -> Paused {
    let was_armed = DEADLINE.swap(0, Ordering::SeqCst) != 0;
    Paused(was_armed)
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.0 {
            arm();
        }
    }
}
