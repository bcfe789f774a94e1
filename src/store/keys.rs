//! Key directory records: the public keys each device publishes for end-to-end encryption
//! (docs/e2ee.md). The store holds public material only; it never sees a private key.
//!
//! - [`DeviceKeys`]: a device's long-term identity keys (Olm: a Curve25519 key for key
//!   agreement, an Ed25519 key for signatures), with the device's own signature over them.
//! - [`OneTimeKey`]: a Curve25519 one-time key (Olm's pre-key) or the device's fallback key,
//!   signed by the device's Ed25519 key. A one-time key is handed out at most once: every
//!   backend claims it atomically (a redb write transaction on the writer thread; a
//!   PostgreSQL `UPDATE … WHERE … FOR UPDATE SKIP LOCKED … RETURNING`; a ScyllaDB LWT).
//!   A claimed key stays in the store as spent (its id remembered), so that a retried upload
//!   of the same batch cannot put it back; spent and unclaimed keys go when the device is
//!   revoked or uploads new identity keys.
//!
//! Signatures are checked before anything is stored (`crate::cores::keys`), never here.

use serde::{Deserialize, Serialize};

use super::{DeviceId, UserId};

/// A device's identity keys as published (Olm account identity keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// Owner.
    pub user_id: UserId,
    /// Device.
    pub device_id: DeviceId,
    /// Curve25519 identity key (32 bytes).
    pub curve25519: [u8; 32],
    /// Ed25519 fingerprint (signing) key (32 bytes).
    pub ed25519: [u8; 32],
    /// Ed25519 signature (64 bytes) by `ed25519` over the canonical bytes of these keys
    /// (`crate::cores::keys::identity_signed_bytes`).
    pub signature: Vec<u8>,
    /// When they were stored, ms since the Unix epoch.
    pub uploaded_ms: u64,
}

impl DeviceKeys {
    /// True if `other` publishes the same keys (the upload time aside): an upload of the
    /// same keys again is a retry and changes nothing.
    pub fn same_keys(&self, other: &DeviceKeys) -> bool {
        self.user_id == other.user_id && self.device_id == other.device_id && self.curve25519 == other.curve25519 && self.ed25519 == other.ed25519
    }
}

/// A signed Curve25519 one-time key (or fallback key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeKey {
    /// The device's name for the key (vodozemac's base64 `KeyId`), 1 to 64 bytes, unique
    /// per device. A key id seen once for a device is never stored again for it.
    pub key_id: String,
    /// The Curve25519 public key (32 bytes).
    pub key: [u8; 32],
    /// Ed25519 signature (64 bytes) by the device's identity key over the canonical bytes
    /// of this key (`crate::cores::keys::one_time_key_signed_bytes`).
    pub signature: Vec<u8>,
}

/// What a claim handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// The key.
    pub key: OneTimeKey,
    /// True when no one-time key was left and this is the device's fallback key (which is
    /// handed out again until the device replaces it).
    pub fallback: bool,
}

/// What storing identity keys did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysStored {
    /// The same keys were already stored (a retry): nothing changed.
    Unchanged,
    /// The device had no keys; now it has these.
    New,
    /// The device had other identity keys: they were replaced, and its one-time and
    /// fallback keys (made by the old account) were removed.
    Replaced,
}
