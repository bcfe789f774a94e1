//! Messages of a conversation actor (the sequencer's shell).

use crate::actors::mailbox::Addressed;
use crate::actors::store_writer::WriteError;
use crate::cores::requests::{CursorMove, EditRequest, GroupRequest, SendRequest};
use crate::cores::sequencer::{BatchId, TargetInfo};
use crate::store::{StoreError, WriteOutcome};

/// Everything a conversation receives.
pub enum ConversationMsg {
    /// Counted by the conversation's mailbox.
    Request(ConversationRequest),
    /// Never counted, never refused.
    Control(ConversationControl),
    /// The actor's own follow-ups.
    Internal(ConversationInternal),
}

/// What sessions (local or forwarded by another node) ask of a conversation.
pub enum ConversationRequest {
    /// Messages to sequence, in the order one device sent them (one batch per socket read).
    Sends(Vec<SendRequest>),
    /// A device's cursor moved: relay the receipt.
    Cursor(CursorMove),
    /// A group change (or the creation event of a new group).
    Group(Box<GroupRequest>),
    /// Delete for everyone, or a retention change.
    Edit(Box<EditRequest>),
}

/// Control of a conversation.
pub enum ConversationControl {
    /// Fault injection for SREs and tests: the actor panics (and is restarted).
    Crash,
    /// Answers once everything queued before it has been handled (shutdown).
    Sync(ractor::RpcReplyPort<()>),
    /// The conversation's owner is now another node (membership changed, or this node is
    /// draining). Sent by the router after it closed the mailbox, so it queues behind every
    /// request already accepted: those are sequenced, their commits acknowledged, and then
    /// the actor stops. The new owner reactivates from the store.
    Handoff,
}

/// A conversation's own follow-ups.
pub enum ConversationInternal {
    /// The store writer's answer for one of our batches.
    Persisted(BatchId, Result<Vec<WriteOutcome>, WriteError>),
    /// A target read from the store for an edit, reaction or delete.
    Target(u64, Result<Option<TargetInfo>, StoreError>),
    /// Idle check.
    Tick,
    /// Send the coalesced group receipt counts that changed.
    FlushReceipts,
}

impl Addressed for ConversationMsg {
    type Request = ConversationRequest;

    fn request(request: ConversationRequest) -> Self {
        ConversationMsg::Request(request)
    }

    fn into_request(self) -> Option<ConversationRequest> {
        match self {
            ConversationMsg::Request(r) => Some(r),
            _ => None,
        }
    }

    fn is_request(&self) -> bool {
        matches!(self, ConversationMsg::Request(_))
    }
}

impl From<ConversationControl> for ConversationMsg {
    fn from(c: ConversationControl) -> Self {
        ConversationMsg::Control(c)
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for ConversationMsg {}
