#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealroot_fuzz::esys_tr(data));
