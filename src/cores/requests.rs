//! What a device asks of a conversation, once its session has checked the frame: the
//! inputs of the [`super::sequencer::Sequencer`]. Plain data, so they can cross actors
//! and nodes unchanged.

use bytes::Bytes;

use super::group::GroupOp;
use crate::ids::{DeviceId, UserId};
use crate::protocol::pb;
use crate::store::ContentKind;

/// One message to sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Sending user.
    pub user: UserId,
    /// Sending device.
    pub device: DeviceId,
    /// Idempotency key chosen by the client (1 to 64 bytes).
    pub client_msg_id: String,
    /// Opaque content (ciphertext).
    pub payload: Bytes,
    /// Ordinary, edit or reaction.
    pub kind: ContentKind,
    /// Target of an edit or reaction (0 for ordinary messages).
    pub reference_seq: u64,
    /// Media the message declares (checked by `media::attachments::declared`).
    pub attachments: Vec<crate::ids::MediaId>,
}

/// A conversation-level change that is not about membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationOp {
    /// Delete the message at this seq for everyone.
    Delete(u64),
    /// Disappearing messages after this many seconds (0 = off).
    Retention(u32),
}

/// One conversation-level change (delete for everyone, retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRequest {
    /// Who asks.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Echoed in the answer.
    pub request_id: u64,
    /// What to change.
    pub op: ConversationOp,
}

/// One group change (or the creation event of a new group).
#[derive(Debug, Clone)]
pub struct GroupRequest {
    /// Who asks.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Echoed in the answer.
    pub request_id: u64,
    /// What to change.
    pub op: GroupOp,
}

/// A device's delivered or read cursor moved (already stored by its session): the
/// conversation relays the receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorMove {
    /// Whose cursor.
    pub user: UserId,
    /// Which device.
    pub device: DeviceId,
    /// Delivered (✓✓) or read (blue ✓✓).
    pub kind: pb::ReceiptKind,
    /// New position.
    pub seq: u64,
}

/// Longest retention: one year, in seconds.
pub const MAX_RETENTION_SECS: u32 = 365 * 24 * 3600;
