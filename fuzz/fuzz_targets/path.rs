#![no_main]
//! Fuzz target: see `ringmesh_tests::fuzz::path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_tests::fuzz::path(data));
