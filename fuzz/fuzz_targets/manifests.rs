//! libFuzzer target: [`mesh_test::fuzz::manifests`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_test::fuzz::manifests(data));
