#![no_main]
//! See `node::fuzz_targets::snapshot_chunk`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::snapshot_chunk(data));
