//! The conversation supervisor: activates conversations on demand and restarts them.
//!
//! It overrides ractor's default (stop the parent when a child stops): a passivated
//! conversation just leaves the registry; a failed one (panic, store failure, sequence
//! desync) is restarted from the store at once, unless it failed more than
//! `max_restarts` times within `restart_window`, in which case it stays passive until the
//! next request reactivates it (so a poisoned conversation cannot spin the node).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::NodeContext;
use super::conversation::{Conversation, ConversationArgs, ConversationMsg};
use super::mailbox::Mailbox;
use crate::store::ConversationId;

/// Why an activation failed.
#[derive(Debug, Clone)]
pub enum ActivateError {
    /// No conversation has that id.
    Unknown,
    /// The actor could not start (store unreachable...).
    Failed(String),
}

/// Messages of the conversation supervisor.
pub enum ConversationSupervisorMsg {
    /// Returns the live activation of a conversation, starting one if needed.
    Activate(ConversationId, RpcReplyPort<Result<Mailbox<ConversationMsg>, ActivateError>>),
}

/// The supervisor actor.
pub struct ConversationSupervisor;

/// Its state: live activations and recent failures.
pub struct ConversationSupervisorState {
    ctx: NodeContext,
    live: HashMap<ConversationId, Mailbox<ConversationMsg>>,
    by_actor: HashMap<ractor::ActorId, ConversationId>,
    failures: HashMap<ConversationId, Vec<Instant>>,
    restarts: Arc<AtomicU64>,
}

/// Name of this supervisor in the tree and the restart metrics.
pub const NAME: &str = "conversation-supervisor";

impl Actor for ConversationSupervisor {
    type Msg = ConversationSupervisorMsg;
    type State = ConversationSupervisorState;
    type Arguments = NodeContext;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, ctx: NodeContext) -> Result<Self::State, ActorProcessingErr> {
        let restarts = ctx.stats.restarts(NAME);
        Ok(ConversationSupervisorState { ctx, live: HashMap::new(), by_actor: HashMap::new(), failures: HashMap::new(), restarts })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationSupervisorMsg::Activate(id, reply) => {
                let result = activate(&myself, state, id).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    remove_if_same(state, id, &cell);
                    tracing::debug!(conversation = %id, reason = reason.as_deref().unwrap_or(""), "conversation stopped");
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(id) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                remove_if_same(state, id, &cell);
                state.ctx.router.forget_conversation(id, cell.get_id());
                tracing::warn!(conversation = %id, error = %error, "conversation failed");
                let window = state.ctx.limits.restart_window;
                state.failures.retain(|_, times| times.iter().any(|t| t.elapsed() < window));
                let recent = state.failures.entry(id).or_default();
                recent.retain(|t| t.elapsed() < window);
                recent.push(Instant::now());
                if state.ctx.router.owned_elsewhere(id) {
                    // Another node owns it now (typically: it was handing off and the new
                    // owner appended first). Restarting it here would run a second
                    // sequencer for nothing; the next request goes to the owner.
                    tracing::info!(conversation = %id, "failed conversation is owned by another node; not restarted here");
                    return Ok(());
                }
                if recent.len() as u32 > state.ctx.limits.max_restarts {
                    tracing::error!(conversation = %id, failures = recent.len(), "restart intensity exceeded; left passive");
                    return Ok(());
                }
                state.restarts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("switchboard_actor_restarts_total", "supervisor" => NAME).increment(1);
                if let Err(e) = activate(&myself, state, id).await {
                    tracing::warn!(conversation = %id, error = ?e, "restart failed; next request reactivates");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn activate(
    myself: &ActorRef<ConversationSupervisorMsg>,
    state: &mut ConversationSupervisorState,
    id: ConversationId,
) -> Result<Mailbox<ConversationMsg>, ActivateError> {
    if let Some(mb) = state.live.get(&id)
        && !mb.gauge().is_closed()
    {
        return Ok(mb.clone());
    }
    let after_failure = state.failures.contains_key(&id);
    let args = ConversationArgs { id, ctx: state.ctx.clone(), after_failure };
    let (actor, _) = Actor::spawn_linked(None, Conversation, args, myself.get_cell()).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("unknown conversation") { ActivateError::Unknown } else { ActivateError::Failed(text) }
    })?;
    let gauge = state.ctx.stats.gauge(actor.get_id()).ok_or_else(|| ActivateError::Failed("conversation registered no mailbox".into()))?;
    let mailbox = Mailbox::new(actor.clone(), gauge);
    state.live.insert(id, mailbox.clone());
    state.by_actor.insert(actor.get_id(), id);
    state.ctx.router.cache_conversation(id, mailbox.clone());
    Ok(mailbox)
}

/// Forgets an activation only if it is still the registered one: a passivating actor may
/// report its end after a fresh activation of the same conversation took its place.
fn remove_if_same(state: &mut ConversationSupervisorState, id: ConversationId, cell: &ractor::ActorCell) {
    if state.live.get(&id).is_some_and(|mb| mb.actor().get_id() == cell.get_id()) {
        state.live.remove(&id);
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for ConversationSupervisorMsg {}
