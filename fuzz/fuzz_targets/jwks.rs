#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mpm_fuzz::jwks(data));
