//! Messages of a device session.

use std::sync::Arc;

use bytes::Bytes;

use crate::actors::mailbox::Addressed;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{ErrorCode, client_frame};
use crate::store::ConversationRecord;

/// Everything a session receives.
pub enum SessionMsg {
    /// Counted by the session's mailbox.
    Request(SessionRequest),
    /// Never counted, never refused.
    Control(SessionControl),
}

/// What other actors (and the connection) ask of a session.
pub enum SessionRequest {
    /// Frames the device sent, decoded, in the order they were read (one message per
    /// socket read, however many frames it held).
    Frames(Vec<client_frame::Kind>),
    /// What one commit of a conversation produced: messages to deliver and frames for
    /// particular devices (SendAcks, answers), shared by every recipient device.
    Conversation(Arc<ConversationBatch>),
    /// An encoded frame to pass through (receipts, typing, presence, errors).
    Push(Bytes),
    /// A to-device entry for this device, stored at `position` of its queue; `frame` is
    /// its encoded `ToDeviceMessage`. Sent in queue order by the session's receiver.
    ToDevice {
        /// Its position.
        position: u64,
        /// The encoded frame.
        frame: Bytes,
    },
    /// This user's privacy settings or blocks changed: drop what is cached of them (the
    /// session's own user: reload, and tell the device with `PrivacyChanged`).
    PrivacyChanged(UserId),
}

/// Control of a session.
pub enum SessionControl {
    /// Close the connection with a reason (revoked, replaced, slow, shutdown): queued and
    /// running work is abandoned.
    Close {
        /// Why.
        code: ErrorCode,
        /// Human text.
        reason: String,
        /// Suggested reconnect delay; 0 = do not reconnect automatically.
        reconnect_after_ms: u32,
    },
    /// The socket is gone.
    ConnectionClosed,
    /// Answers once every message queued before it has been handled (shutdown).
    Sync(ractor::RpcReplyPort<()>),
}

/// Whether a close for `code` drops the frames queued for the device (`Outbox::preempt`)
/// rather than writing them first (`Outbox::close`). A revoked device must get nothing
/// more, a replaced connection's device has a newer one, and a slow consumer cannot take
/// more; a drain or a shutdown is graceful: the acknowledgements of what the node stored
/// still go out, within the close grace.
pub fn close_preempts(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::DeviceRevoked | ErrorCode::Replaced | ErrorCode::SlowConsumer)
}

/// Closes `outbox` with `last` as [`close_preempts`] says for `code`.
pub fn close_outbox(outbox: &crate::actors::outbox::Outbox, code: ErrorCode, last: Bytes) {
    if close_preempts(code) { outbox.preempt(last) } else { outbox.close(last) }
}

/// The output of one commit of one conversation, as every recipient device gets it:
/// frames encoded once, shared through an `Arc`.
#[derive(Debug, Clone)]
pub struct ConversationBatch {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Committed messages, in seq order.
    pub deliveries: Vec<Delivery>,
    /// Frames for particular devices (SendAcks of their messages, answers to their
    /// changes), in seq order.
    pub frames: Vec<DeviceFrame>,
}

/// One committed message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its seq.
    pub seq: u64,
    /// The device that sent it: it is not sent back there (the device has its SendAck),
    /// unless it is an event.
    pub sender_device: DeviceId,
    /// For events: the conversation's record as of this event (membership, settings),
    /// so every session's view follows membership in log order.
    pub event_record: Option<Arc<ConversationRecord>>,
    /// The encoded `ServerFrame::Message`.
    pub frame: Bytes,
}

/// A frame for one device.
#[derive(Debug, Clone)]
pub struct DeviceFrame {
    /// Its user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The seq it acknowledges or answers (0: none).
    pub seq: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

impl ConversationBatch {
    /// Users who must get this batch: those any frame is for (its recipients are added by
    /// the conversation).
    pub fn frame_users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.frames.iter().map(|f| f.user)
    }
}

impl Addressed for SessionMsg {
    type Request = SessionRequest;

    fn request(request: SessionRequest) -> Self {
        SessionMsg::Request(request)
    }

    fn into_request(self) -> Option<SessionRequest> {
        match self {
            SessionMsg::Request(r) => Some(r),
            SessionMsg::Control(_) => None,
        }
    }

    fn is_request(&self) -> bool {
        matches!(self, SessionMsg::Request(_))
    }
}

impl From<SessionControl> for SessionMsg {
    fn from(c: SessionControl) -> Self {
        SessionMsg::Control(c)
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for SessionMsg {}
