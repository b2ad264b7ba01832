//! A stop request (SIGTERM, SIGINT) for long work that can pause cleanly: re-encryption
//! checks it between hotzones, so a shutdown leaves the header consistent.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Turns SIGTERM and SIGINT into a stop request.
pub fn install() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        if unsafe { sigaction(signal, &action) }.is_err() {
            log::debug!("cannot handle {signal}");
        }
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
