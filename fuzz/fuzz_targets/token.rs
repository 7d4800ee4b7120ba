//! libFuzzer driver of the `token` target (invariants in `herald_fuzz::token::token_string`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::token::token_string(data));
