//! Fuzz target: see `herald::fuzzing::ws_wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::ws_wire(data));
