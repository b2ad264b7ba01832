#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealroot_fuzz::token_systemd(data));
