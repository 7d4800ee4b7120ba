//! libFuzzer driver of the `claims` target (invariants in `herald_fuzz::token::structured_token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::token::structured_token(data));
