#![no_main]
//! Fuzz target: see `ringmesh_core::fuzzing::certificate`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_core::fuzzing::certificate(data));
