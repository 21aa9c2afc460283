#![no_main]
//! See `node::fuzz_targets::peer_frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::peer_frame(data));
