#![no_main]
//! See `checker::fuzz_targets::jsonl`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| checker::fuzz_targets::jsonl(data));
