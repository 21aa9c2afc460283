#![no_main]
//! See `checker::fuzz_targets::edn`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| checker::fuzz_targets::edn(data));
