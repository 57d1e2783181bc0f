#![no_main]
//! Fuzz target: see `ringmesh_tests::fuzz::control_api`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_tests::fuzz::control_api(data));
