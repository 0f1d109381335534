//! Fuzz target: see `herald::fuzzing::publish_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::publish_body(data));
