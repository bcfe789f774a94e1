//! Messages of the conversation supervisor.

use ractor::RpcReplyPort;

use super::ConversationMsg;
use crate::actors::mailbox::Mailbox;
use crate::ids::ConversationId;

/// Why an activation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// No conversation has that id.
    #[error("unknown conversation")]
    Unknown,
    /// The actor could not start (store unreachable, restart limit...).
    #[error("activation failed: {0}")]
    Failed(String),
}

/// Messages of the conversation supervisor.
pub enum ConversationSupervisorMsg {
    /// Returns the live activation of a conversation, starting one if needed.
    Activate(ConversationId, RpcReplyPort<Result<Mailbox<ConversationMsg>, ActivateError>>),
    /// An activation started in the background finished (its own follow-up).
    Activated(ConversationId, Result<ractor::ActorRef<ConversationMsg>, ActivateError>),
    /// Every half idle time: ask each live conversation whether it has been idle long
    /// enough to passivate (its own follow-up; one timer for all, not one per conversation).
    IdleSweep,
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for ConversationSupervisorMsg {}
