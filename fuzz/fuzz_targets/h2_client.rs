#![no_main]
//! Fuzz target: see `ringmesh_tests::fuzz::h2_client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_tests::fuzz::h2_client(data));
