#![no_main]
//! Fuzz target: see `ringmesh_core::fuzzing::h2_server`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_core::fuzzing::h2_server(data));
