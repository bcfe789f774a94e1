//! Fuzz target: every JSON body and the query string of the HTTP API, with their validation (harness: `switchboard::fuzz::http_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::http_json(data));
