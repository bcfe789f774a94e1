//! What the SDK hands the app: message bodies, decrypted and undecryptable messages, and
//! the events a received frame turns into ([`Event`]).

use bytes::Bytes;

use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{id_bytes, server_frame};
use crate::sdk::envelope::pb as e2ee;
use crate::sdk::megolm::DecryptError;
use crate::sdk::safety::KeyChange;

/// What a conversation message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text.
    Text(String),
    /// An encrypted attachment's key and digest (the file itself is uploaded separately).
    Media(e2ee::MediaKey),
    /// An app-defined payload.
    Custom(Bytes),
}

impl Body {
    pub(crate) fn to_plaintext(&self, conversation: ConversationId) -> e2ee::RoomPlaintext {
        use e2ee::room_plaintext::Body as B;
        let body = match self {
            Body::Text(t) => B::Text(t.clone()),
            Body::Media(m) => B::Media(m.clone()),
            Body::Custom(c) => B::Custom(c.clone()),
        };
        e2ee::RoomPlaintext { conversation_id: id_bytes(conversation), body: Some(body) }
    }

    pub(crate) fn from_plaintext(p: e2ee::RoomPlaintext) -> Body {
        use e2ee::room_plaintext::Body as B;
        match p.body {
            Some(B::Text(t)) => Body::Text(t),
            Some(B::Media(m)) => Body::Media(m),
            Some(B::Custom(c)) => Body::Custom(c),
            None => Body::Custom(Bytes::new()),
        }
    }
}

/// A decrypted conversation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Conversation.
    pub conversation: ConversationId,
    /// Its seq.
    pub seq: u64,
    /// Sender.
    pub sender_user: UserId,
    /// Sending device.
    pub sender_device: DeviceId,
    /// Server time, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// What it says.
    pub body: Body,
    /// It was reported undecryptable before, and its key has now arrived.
    pub retried: bool,
}

/// A conversation message that did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecryptable {
    /// Conversation.
    pub conversation: ConversationId,
    /// Its seq.
    pub seq: u64,
    /// Sender.
    pub sender_user: UserId,
    /// Sending device.
    pub sender_device: DeviceId,
    /// Why; when [`DecryptError::is_retryable`], the message is kept and comes back as an
    /// [`Event::Message`] with `retried` once its key arrives.
    pub error: DecryptError,
}

/// What the SDK makes of a frame.
#[derive(Debug, Clone)]
pub enum Event {
    /// A conversation message, decrypted.
    Message(Received),
    /// A conversation message that does not decrypt (reported, never dropped silently).
    Undecryptable(Undecryptable),
    /// A peer's (or our own user's) device list changed since first seen; an
    /// `IdentityChanged` is a warning to show the user.
    KeyChanged(KeyChange),
    /// A to-device message that could not be used (acknowledged all the same: it cannot
    /// decrypt later either).
    ToDeviceFailed {
        /// Its queue position.
        position: u64,
        /// Sender.
        sender_user: UserId,
        /// Sending device.
        sender_device: DeviceId,
        /// Why.
        reason: String,
    },
    /// A frame the SDK does not consume (events, receipts, answers, …), passed on.
    Frame(Box<server_frame::Kind>),
}
