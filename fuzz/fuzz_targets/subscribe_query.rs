//! Fuzz target: see `herald::fuzzing::subscribe_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::subscribe_query(data));
