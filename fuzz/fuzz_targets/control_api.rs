#![no_main]
//! Fuzz target: see `ringmesh_control::fuzzing::control_api`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmesh_control::fuzzing::control_api(data));
