#![no_main]
//! See `node::fuzz_targets::state_image`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzz_targets::state_image(data));
