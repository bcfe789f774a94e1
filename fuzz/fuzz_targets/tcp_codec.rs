//! Fuzz target: the TCP length-prefix codec, whole and chunked (harness: `switchboard::fuzz::tcp_codec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::tcp_codec(data));
