//! To-device queue and device-list notice records (docs/e2ee.md): what the store keeps so
//! that an Olm message addressed to one device survives until that device acknowledges
//! it, and so that a device hears which users' device lists changed while it was away.
//!
//! Each device has one queue. Storing a send gives each target's entry the next position
//! of that target's queue (1, 2, 3…: positions are never reused) and checks, in the same
//! transaction, that every target is a live device of the named user and that no queue
//! would pass its bound; on failure nothing is stored. Entries are deleted up to a
//! position when the device acknowledges it. The send's client id is remembered for
//! [`SEND_IDS_KEPT_MS`] so that a retry stores nothing twice.
//!
//! The store holds payloads as opaque bytes (Olm ciphertexts); it never sees a key.

use serde::{Deserialize, Serialize};

use super::{DeviceId, UserId};

/// How long a send's client id is remembered (a retry within this time is a duplicate), in
/// ms: 24 hours. After it, the id may be pruned (`Store::purge_expired`).
pub const SEND_IDS_KEPT_MS: u64 = 24 * 3600 * 1000;

/// One target of a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToDeviceTarget {
    /// The device's user (checked: the device must be theirs).
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Its ciphertext, opaque.
    pub payload: Vec<u8>,
}

/// A send of one payload to each of some devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToDeviceSend {
    /// Sender.
    pub sender_user: UserId,
    /// Sending device (the client id is unique per sending device).
    pub sender_device: DeviceId,
    /// The device's id for this send, 1 to 64 bytes.
    pub client_id: String,
    /// When the server accepted it, ms since the Unix epoch.
    pub sent_ms: u64,
    /// Each device once (checked before the store is called).
    pub targets: Vec<ToDeviceTarget>,
}

/// The bounds a send is checked against, per target, in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueBounds {
    /// Unacknowledged entries a device's queue may hold.
    pub per_device: u64,
    /// Unacknowledged entries one other user's devices may have in a device's queue (a
    /// user's own devices are bound only by `per_device`), so that a stranger who shares
    /// a 1:1 cannot fill a device's queue and lock out everybody else's key shares.
    /// Counted only when the queue holds at least this many entries
    /// (`crate::cores::to_device::sender_bound_applies`).
    pub per_sender: u64,
}

/// What storing a send did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToDeviceStored {
    /// Stored: each target's (user, device, position), in no particular order.
    Stored(Vec<(UserId, DeviceId, u64)>),
    /// The sending device used this client id within [`SEND_IDS_KEPT_MS`]: nothing stored.
    Duplicate,
    /// A target is not a live device of the named user: nothing stored.
    UnknownDevice {
        /// The named user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A target's queue holds its maximum of unacknowledged entries: nothing stored.
    QueueFull {
        /// The device.
        device: DeviceId,
    },
    /// The sender's user already has `QueueBounds::per_sender` unacknowledged entries in a
    /// target's queue: nothing stored.
    SenderFull {
        /// The device.
        device: DeviceId,
    },
}

/// One queued entry, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToDeviceEntry {
    /// Its position in the receiving device's queue (from 1).
    pub position: u64,
    /// Sender.
    pub sender_user: UserId,
    /// Sending device.
    pub sender_device: DeviceId,
    /// The ciphertext, opaque.
    pub payload: Vec<u8>,
    /// When it was stored, ms since the Unix epoch.
    pub sent_ms: u64,
}

/// A page of a device's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToDeviceQueue {
    /// The highest position the device has acknowledged (entries up to it are gone); 0
    /// for a queue never acknowledged.
    pub acked: u64,
    /// Entries after the requested position, in position order.
    pub entries: Vec<ToDeviceEntry>,
}
