//! Switchboard: a WhatsApp-class messaging server built the Erlang way.
//!
//! Layout (see ARCHITECTURE.md for the invariants between these):
//! - [`ids`]: the opaque id types (user, device, conversation).
//! - [`protocol`]: frames and their encoding; no I/O.
//! - [`store`]: durable state behind one contract; knows nothing of sockets or actors.
//! - [`cores`]: the pure decision cores of the message path (sequencer, delivery, group
//!   rules); no I/O.
//! - [`actors`]: the supervision tree: sessions, conversations, the store writer, the router.
//! - [`transport`]: WebSocket and TCP connections, ending in the same session logic.
//! - [`accounts`]: registration, tokens, devices.
//! - [`status`]: Status posts (24 hours, to contacts or a list of them), their viewers.
//! - [`keys`]: the key directory for end-to-end encryption (uploads, device lists, claims).
//! - [`media`]: encrypted attachments (tus uploads, downloads, blob store, sweep) and public images.
//! - [`http`]: the public JSON API and the admin API.
//! - [`config`], [`server`]: configuration and the node's lifecycle.
//! - [`client`]: the Rust client used by tests, benchmarks and `switchboard client`;
//!   [`media_client`] its tus uploads and downloads, [`attachment`] its file encryption.
//! - [`sdk`]: the client SDK of end-to-end encryption (Olm/Megolm through vodozemac,
//!   key sharing, encrypted local state, safety numbers), used by [`client`]'s users.
//! - [`loadgen`]: the load generator behind `switchboard bench`.
//! - [`testkit`]: private PostgreSQL (and later Redis) instances for tests and trials.

pub mod accounts;
pub mod actors;
pub mod attachment;
pub mod client;
pub mod cluster;
pub mod config;
pub mod contacts;
pub mod cores;
pub mod fuzz;
pub mod history;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod keys;
pub mod lifecycle;
pub mod loadgen;
pub mod media;
pub mod media_client;
pub mod memory_trim;
pub mod pairing;
pub mod pem;
pub mod phone;
pub mod privacy;
pub mod profiles;
pub mod protocol;
pub mod sdk;
pub mod server;
pub mod status;
pub mod store;
pub mod testkit;
pub mod to_device;
pub mod transport;
