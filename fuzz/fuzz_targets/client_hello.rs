//! libFuzzer target: [`mesh_test::fuzz::client_hello`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_test::fuzz::client_hello(data));
