//! libFuzzer target: [`mesh_test::fuzz::stats`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_test::fuzz::stats(data));
