#![no_main]
//! See `node::fuzz_targets::client_frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::client_frame(data));
