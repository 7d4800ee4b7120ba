//! libFuzzer driver of the `http_body` target (invariants in `herald_fuzz::body::http_body`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::body::http_body(data));
