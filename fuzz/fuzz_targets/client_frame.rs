//! libFuzzer driver of the `client_frame` target (invariants in `herald_fuzz::frame::client_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::frame::client_frame(data));
