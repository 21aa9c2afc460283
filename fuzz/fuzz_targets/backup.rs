#![no_main]
//! See `node::fuzz_targets::backup`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::backup(data));
