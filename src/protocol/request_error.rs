//! Why a device's request was refused, as a type: every refusal in the server (session,
//! sequencer, router, store failures) is one of these, and [`RequestError::code`] is the
//! one place where a refusal becomes a protocol `ErrorCode`. Nothing decides by matching
//! error text.

use super::{ErrorCode, ServerFrame, error_frame};

/// A refused request. The `Display` text is what the device reads in `Error.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field is missing or malformed, or the request makes no sense in this state.
    #[error("{0}")]
    InvalidArgument(String),
    /// The device is not (or no longer) a member of the conversation.
    #[error("not a member of this conversation")]
    NotAMember,
    /// The request needs a group admin (or the message's sender).
    #[error("{0}")]
    NotAdmin(String),
    /// Only admins may send in this group.
    #[error("only admins may send in this group")]
    SendRestricted,
    /// The group is at its member limit.
    #[error("the group is limited to {0} members")]
    GroupFull(usize),
    /// Unknown or revoked invite token.
    #[error("invalid or revoked invite")]
    InvalidInvite,
    /// No conversation has this id.
    #[error("no conversation has this id")]
    UnknownConversation,
    /// No user has this id.
    #[error("no user {0}")]
    UnknownUser(String),
    /// The payload is larger than the limit, in bytes.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Size of the payload.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing was stored or changed; the same request may be retried (same
    /// `client_msg_id` for sends).
    #[error("{0}; retry")]
    Unavailable(String),
    /// The device sends faster than its budget allows.
    #[error("{0}")]
    RateLimited(String),
    /// Hello on an authenticated connection.
    #[error("already authenticated")]
    AlreadyAuthenticated,
    /// The device's outbound queue is full: it does not read its frames.
    #[error("outbox full")]
    SlowConsumer,
    /// An upload carried more one-time keys than allowed (per frame or per device).
    #[error("{0}")]
    TooManyKeys(String),
    /// A key's signature did not verify against the device's Ed25519 identity key.
    #[error("{0}")]
    InvalidSignature(String),
    /// The caller shares no conversation with this user (key directory).
    #[error("no shared conversation with user {0}")]
    NoSharedConversation(String),
    /// A to-device target is not a live device of the named user.
    #[error("no live device {device} of user {user}")]
    UnknownDevice {
        /// The named user.
        user: String,
        /// The device.
        device: String,
    },
    /// A to-device target's queue is full (its device has not acknowledged what it was
    /// sent).
    #[error("the to-device queue of device {device} is full ({max} entries); retry later")]
    QueueFull {
        /// The device.
        device: String,
        /// The bound, in entries.
        max: u64,
    },
    /// A block between the caller and this user (either way) forbids the request: opening
    /// or sending in their 1:1 conversation, or adding them to a group.
    #[error("blocked: {0}")]
    Blocked(String),
    /// The user's privacy settings do not let the caller add them to groups.
    #[error("user {0} does not allow you to add them to groups; send an invite")]
    NotAllowed(String),
    /// Only the primary device may do this.
    #[error("only the primary device may approve a pairing")]
    NotPrimary,
    /// The account has its maximum of live devices.
    #[error("the account already has {0} devices")]
    TooManyDevices(usize),
    /// No pending pairing has this code.
    #[error("unknown or expired pairing code")]
    UnknownPairing,
    /// The pairing code was already approved.
    #[error("this pairing code was already approved")]
    PairingAlreadyApproved,
    /// The user already has the most pinned conversations.
    #[error("at most {0} conversations can be pinned")]
    TooManyPins(usize),
    /// The sender's user already has its share of a to-device target's queue (the device
    /// has not acknowledged what this user sent it); other users can still reach it.
    #[error("the to-device queue of device {device} holds {max} entries from you, your share; retry once it has read them")]
    SenderQueueFull {
        /// The device.
        device: String,
        /// The bound, in entries.
        max: u64,
    },
}

impl RequestError {
    /// The protocol code of this refusal (docs/protocol.md lists them).
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            RequestError::NotAMember => ErrorCode::NotAMember,
            RequestError::NotAdmin(_) => ErrorCode::NotAdmin,
            RequestError::SendRestricted => ErrorCode::SendRestricted,
            RequestError::GroupFull(_) => ErrorCode::GroupFull,
            RequestError::InvalidInvite => ErrorCode::InvalidInvite,
            RequestError::UnknownConversation => ErrorCode::UnknownConversation,
            RequestError::UnknownUser(_) => ErrorCode::UnknownUser,
            RequestError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            RequestError::Unavailable(_) => ErrorCode::Unavailable,
            RequestError::RateLimited(_) => ErrorCode::RateLimited,
            RequestError::AlreadyAuthenticated => ErrorCode::AlreadyAuthenticated,
            RequestError::SlowConsumer => ErrorCode::SlowConsumer,
            RequestError::TooManyKeys(_) => ErrorCode::TooManyKeys,
            RequestError::InvalidSignature(_) => ErrorCode::InvalidSignature,
            RequestError::NoSharedConversation(_) => ErrorCode::NoSharedConversation,
            RequestError::UnknownDevice { .. } => ErrorCode::UnknownDevice,
            RequestError::QueueFull { .. } | RequestError::SenderQueueFull { .. } => ErrorCode::QueueFull,
            RequestError::Blocked(_) => ErrorCode::Blocked,
            RequestError::NotAllowed(_) => ErrorCode::NotAllowed,
            RequestError::NotPrimary => ErrorCode::NotPrimary,
            RequestError::TooManyDevices(_) => ErrorCode::TooManyDevices,
            RequestError::UnknownPairing => ErrorCode::UnknownPairing,
            RequestError::PairingAlreadyApproved => ErrorCode::PairingAlreadyApproved,
            RequestError::TooManyPins(_) => ErrorCode::TooManyPins,
        }
    }

    /// Shorthand for [`RequestError::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        RequestError::InvalidArgument(message.into())
    }

    /// The `Error` frame telling the device, echoing `request_ref` (the `client_msg_id` of
    /// a send, the `request_id` of other requests as decimal text, empty if none).
    pub fn frame(&self, request_ref: impl Into<String>) -> ServerFrame {
        error_frame(self.code(), self.to_string(), request_ref, false)
    }
}

impl From<super::IdError> for RequestError {
    fn from(e: super::IdError) -> Self {
        RequestError::InvalidArgument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_code_and_a_readable_text() {
        let all = [
            RequestError::invalid("x"),
            RequestError::NotAMember,
            RequestError::NotAdmin("only admins".into()),
            RequestError::SendRestricted,
            RequestError::GroupFull(1024),
            RequestError::InvalidInvite,
            RequestError::UnknownConversation,
            RequestError::UnknownUser("u".into()),
            RequestError::PayloadTooLarge { len: 2, max: 1 },
            RequestError::Unavailable("store unavailable".into()),
            RequestError::RateLimited("slow down".into()),
            RequestError::AlreadyAuthenticated,
            RequestError::SlowConsumer,
            RequestError::TooManyKeys("too many".into()),
            RequestError::InvalidSignature("bad".into()),
            RequestError::NoSharedConversation("u".into()),
            RequestError::UnknownDevice { user: "u".into(), device: "d".into() },
            RequestError::QueueFull { device: "d".into(), max: 1 },
            RequestError::Blocked("x".into()),
            RequestError::NotAllowed("u".into()),
            RequestError::NotPrimary,
            RequestError::TooManyDevices(5),
            RequestError::UnknownPairing,
            RequestError::PairingAlreadyApproved,
            RequestError::TooManyPins(3),
        ];
        let codes: std::collections::HashSet<i32> = all.iter().map(|e| e.code() as i32).collect();
        assert_eq!(codes.len(), all.len());
        assert!(all.iter().all(|e| !e.to_string().is_empty()));
        assert_eq!(RequestError::Unavailable("message not stored".into()).to_string(), "message not stored; retry");
        // A sender's share of a queue is a full queue to that sender (retry later).
        assert_eq!(RequestError::SenderQueueFull { device: "d".into(), max: 1 }.code(), ErrorCode::QueueFull);
    }
}
