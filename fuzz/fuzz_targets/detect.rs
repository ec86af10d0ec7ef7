//! libFuzzer target: [`mesh_test::fuzz::detect`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_test::fuzz::detect(data));
