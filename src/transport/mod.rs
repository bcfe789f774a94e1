//! Transports: WebSocket (binary messages at `/v1/ws`) and raw TCP (length-prefixed
//! frames). Each only moves frames; both end in [`connection::serve`], which runs the
//! handshake and hands authenticated devices to a session actor. Nothing here interprets
//! a request beyond Hello and Ping. Both listeners can serve TLS ([`tls`]).

pub mod budgets;
pub mod connection;
pub mod handshakes;
pub mod tcp;
pub mod tls;
pub mod ws;

pub use connection::{ConnectionConfig, ConnectionDeps, FrameSink};
