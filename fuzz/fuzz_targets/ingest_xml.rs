#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mpm_fuzz::ingest_xml(data));
