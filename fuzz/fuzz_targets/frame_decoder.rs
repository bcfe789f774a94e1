//! Fuzz target: client and server frames: decode, round trip, ids (harness: `switchboard::fuzz::frame_decoder`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::frame_decoder(data));
