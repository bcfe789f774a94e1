//! The conversation supervisor: activates conversations on demand and restarts them.
//!
//! It overrides ractor's default (stop the parent when a child stops): a passivated
//! conversation just leaves the registry; a failed one (panic, store failure, sequence
//! conflict) is restarted from the store at once, unless it failed more than
//! `max_restarts` times within `restart_window`, in which case it stays passive until the
//! next request reactivates it (so a poisoned conversation cannot spin the node).
//!
//! Activations run concurrently: each is spawned in a task of its own (its `pre_start`
//! reads the store), and the supervisor only records the result. Requests for a
//! conversation being activated wait for that one activation; an activation storm is not
//! serialised through this actor.
//!
//! It also asks every live conversation, every half idle time, whether it has been idle
//! long enough to passivate (one timer for all of them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SpawnErr, SupervisionEvent};

use super::NodeContext;
use super::conversation::{ActivationError, Conversation, ConversationArgs};
use super::mailbox::Mailbox;
use super::messages::{ActivateError, ConversationInternal, ConversationMsg, ConversationSupervisorMsg};
use crate::ids::ConversationId;

/// The supervisor actor.
pub struct ConversationSupervisor;

type Waiter = RpcReplyPort<Result<Mailbox<ConversationMsg>, ActivateError>>;

/// Its state: live activations, activations under way, recent failures.
pub struct ConversationSupervisorState {
    ctx: NodeContext,
    live: HashMap<ConversationId, Mailbox<ConversationMsg>>,
    by_actor: HashMap<ractor::ActorId, ConversationId>,
    activating: HashMap<ConversationId, Vec<Waiter>>,
    failures: HashMap<ConversationId, Vec<Instant>>,
    restarts: Arc<AtomicU64>,
}

/// Name of this supervisor in the tree and the restart metrics.
pub const NAME: &str = "conversation-supervisor";

impl Actor for ConversationSupervisor {
    type Msg = ConversationSupervisorMsg;
    type State = ConversationSupervisorState;
    type Arguments = NodeContext;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: NodeContext) -> Result<Self::State, ActorProcessingErr> {
        let restarts = ctx.stats.restarts(NAME);
        // Half the idle time, so that a conversation passivates within 1.5 × idle. One
        // timer for every conversation: a timer each was a task each (~300 B apiece).
        // (Never zero: an interval of zero would panic.)
        let sweep = (ctx.limits.conversation_idle / 2).max(std::time::Duration::from_millis(10));
        myself.send_interval(sweep, || ConversationSupervisorMsg::IdleSweep);
        Ok(ConversationSupervisorState {
            ctx,
            live: HashMap::new(),
            by_actor: HashMap::new(),
            activating: HashMap::new(),
            failures: HashMap::new(),
            restarts,
        })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationSupervisorMsg::Activate(id, reply) => {
                if let Some(mb) = state.live.get(&id)
                    && !mb.gauge().is_closed()
                {
                    let _ = reply.send(Ok(mb.clone()));
                    return Ok(());
                }
                match state.activating.get_mut(&id) {
                    Some(waiters) => waiters.push(reply),
                    None => {
                        state.activating.insert(id, vec![reply]);
                        start_activation(&myself, state, id);
                    }
                }
            }
            ConversationSupervisorMsg::Activated(id, result) => activated(state, id, result),
            ConversationSupervisorMsg::IdleSweep => {
                for mailbox in state.live.values() {
                    mailbox.control(ConversationMsg::Internal(ConversationInternal::Tick));
                }
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
                if let std::collections::hash_map::Entry::Vacant(slot) = state.activating.entry(id) {
                    slot.insert(Vec::new());
                    start_activation(&myself, state, id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Spawns an activation in a task of its own; its result comes back as `Activated`.
fn start_activation(myself: &ActorRef<ConversationSupervisorMsg>, state: &ConversationSupervisorState, id: ConversationId) {
    let after_failure = state.failures.contains_key(&id);
    let args = ConversationArgs { id, ctx: state.ctx.clone(), after_failure };
    let (me, parent) = (myself.clone(), myself.get_cell());
    tokio::spawn(async move {
        let result = Actor::spawn_linked(None, Conversation, args, parent).await.map(|(actor, _)| actor).map_err(classify);
        // The supervisor is gone (shutdown): stop what we started.
        if let Err(ractor::MessagingErr::SendErr(ConversationSupervisorMsg::Activated(_, Ok(actor)))) =
            me.cast(ConversationSupervisorMsg::Activated(id, result))
        {
            actor.stop(Some("supervisor stopped".into()));
        }
    });
}

/// Tells an unknown conversation from a failed start by the error's type.
fn classify(e: SpawnErr) -> ActivateError {
    match &e {
        SpawnErr::StartupFailed(inner) => match inner.downcast_ref::<ActivationError>() {
            Some(ActivationError::Unknown(_)) => ActivateError::Unknown,
            Some(ActivationError::Store(store)) => ActivateError::Failed(store.to_string()),
            None => ActivateError::Failed(e.to_string()),
        },
        _ => ActivateError::Failed(e.to_string()),
    }
}

fn activated(state: &mut ConversationSupervisorState, id: ConversationId, result: Result<ActorRef<ConversationMsg>, ActivateError>) {
    let waiters = state.activating.remove(&id).unwrap_or_default();
    let result = result.and_then(|actor| {
        if matches!(actor.get_status(), ActorStatus::Stopping | ActorStatus::Stopped) {
            return Err(ActivateError::Failed("conversation stopped while starting".into()));
        }
        let gauge = state.ctx.stats.gauge(actor.get_id()).ok_or_else(|| ActivateError::Failed("conversation registered no mailbox".into()))?;
        let mailbox = Mailbox::new(actor.clone(), gauge);
        state.live.insert(id, mailbox.clone());
        state.by_actor.insert(actor.get_id(), id);
        state.ctx.router.cache_conversation(id, mailbox.clone());
        Ok(mailbox)
    });
    if let Err(e) = &result {
        tracing::debug!(conversation = %id, error = %e, "activation did not start");
    }
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

/// Forgets an activation only if it is still the registered one: a passivating actor may
/// report its end after a fresh activation of the same conversation took its place.
fn remove_if_same(state: &mut ConversationSupervisorState, id: ConversationId, cell: &ractor::ActorCell) {
    if state.live.get(&id).is_some_and(|mb| mb.actor().get_id() == cell.get_id()) {
        state.live.remove(&id);
    }
}
