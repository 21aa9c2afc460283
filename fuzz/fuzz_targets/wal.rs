#![no_main]
//! See `node::fuzz_targets::wal`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::wal(data));
