//! Fuzz target: see `herald::fuzzing::topic_pattern`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::topic_pattern(data));
