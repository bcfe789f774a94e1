//! The client SDK of end-to-end encryption (docs/e2ee.md): what a Switchboard app runs so
//! that the server carries only ciphertext. Olm and Megolm come from vodozemac (the audited
//! Rust implementation, wire-compatible with libolm); this module decides what to encrypt
//! for whom, moves keys over the protocol's key directory and to-device messages, and keeps
//! the device's secrets in an encrypted local store.
//!
//! - [`device`]: [`E2ee`], one device's SDK: publishes keys, sends encrypted messages
//!   (sharing room keys as needed), and turns received frames into decrypted events.
//! - [`events`]: what the app gets back (bodies, decrypted and undecryptable messages).
//! - [`olm`]: the Olm account (signed uploads) and pairwise sessions.
//! - [`megolm`]: outbound and inbound group sessions, message decryption and its checks.
//! - [`envelope`]: the versioned envelope and plaintext types (`proto/e2ee.proto`).
//! - [`store`]: the encrypted redb store of the device's state.
//! - [`safety`]: safety numbers and trust on first use.
//!
//! The rotation rules are a pure core of their own: `crate::cores::megolm_rotation`.

pub mod device;
pub mod envelope;
pub mod events;
pub mod megolm;
pub mod olm;
pub mod safety;
pub mod store;

pub use device::{E2ee, E2eeConfig, SdkError};
pub use events::{Body, Event, Received, Undecryptable};
pub use store::StoreKey;
