#![no_main]
//! Fuzz target: see `ringmesh_tests::fuzz::client_hello`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_tests::fuzz::client_hello(data));
