//! The session supervisor: parent of every DeviceSession on the node.
//!
//! Sessions are temporary children in Erlang terms: a session lives and dies with its
//! connection, so a stopped or failed session is never restarted (the device reconnects
//! and gets a fresh one). What this supervisor must do is *not* what ractor does by
//! default: one session ending must not stop the supervisor and with it every other
//! device on the node. It counts failures for `/admin/tree` and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::mailbox::{ActorStats, Mailbox};
use super::messages::SessionMsg;
use super::session::{DeviceSession, SessionArgs};

/// Name of this supervisor in the tree and the restart metrics.
pub const NAME: &str = "session-supervisor";

/// Messages of the session supervisor (it only receives supervision events).
pub enum SessionSupervisorMsg {}

/// The supervisor actor.
pub struct SessionSupervisor;

/// Its state.
pub struct SessionSupervisorState {
    failures: Arc<AtomicU64>,
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMsg;
    type State = SessionSupervisorState;
    type Arguments = Arc<ActorStats>;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, stats: Arc<ActorStats>) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionSupervisorState { failures: stats.restarts(NAME) })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            state.failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("switchboard_session_failures_total").increment(1);
            tracing::warn!(actor = %cell.get_id(), error = %error, "session failed; its connection is closed");
        }
        Ok(())
    }
}

/// Spawns a session under the supervisor and returns its bounded mailbox.
pub async fn start_session(supervisor: &ActorCell, args: SessionArgs) -> Result<Mailbox<SessionMsg>, ractor::SpawnErr> {
    let stats = args.ctx.stats.clone();
    let (actor, _) = Actor::spawn_linked(None, DeviceSession, args, supervisor.clone()).await?;
    let gauge = stats.gauge(actor.get_id()).ok_or_else(|| ractor::SpawnErr::StartupFailed("session registered no mailbox".into()))?;
    Ok(Mailbox::new(actor, gauge))
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for SessionSupervisorMsg {}
