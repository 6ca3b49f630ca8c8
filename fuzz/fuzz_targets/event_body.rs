#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| recap::fuzzing::event_body(data));
