//! libFuzzer target: [`mesh_test::fuzz::csr`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_test::fuzz::csr(data));
