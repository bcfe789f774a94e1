//! Fuzz target: WebSocket frames after the upgrade: parsing, reassembly, message rules (harness: `switchboard::fuzz::ws_frames`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::ws_frames(data));
