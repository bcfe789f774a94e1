//! The node supervisor: root of the tree, parent of the store writer and the two
//! supervisors. A failure of any of these infrastructure actors is not something to
//! paper over: the node supervisor stops, and the process exits non-zero so that the
//! service manager restarts it (everything acknowledged is already in the store).

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use super::conversation_supervisor::ConversationSupervisor;
use super::mailbox::{ActorStats, Mailbox};
use super::messages::ConversationSupervisorMsg;
use super::push::{PushArgs, PushConfig, PushDispatcher, PushSink};
use super::session_supervisor::{SessionSupervisor, SessionSupervisorMsg};
use super::store_writer::{StoreWriter, StoreWriterConfig, StoreWriterHandle};
use super::{ActorLimits, NodeContext, Router};
use crate::store::Store;

/// Messages of the node supervisor (supervision events only).
pub enum NodeMsg {}

/// The root actor.
pub struct NodeSupervisor;

/// Handles to the running tree.
#[derive(Clone)]
pub struct Node {
    /// What actors share.
    pub ctx: NodeContext,
    /// The root, for `/admin/tree`.
    pub root: ActorRef<NodeMsg>,
    /// Parent of sessions.
    pub sessions: ActorRef<SessionSupervisorMsg>,
    /// Parent of conversations.
    pub conversations: ActorRef<ConversationSupervisorMsg>,
    /// Becomes true if an infrastructure actor died and the node must exit.
    pub failed: watch::Receiver<bool>,
}

/// Root state: where to report a fatal child failure.
pub struct NodeState {
    failed: watch::Sender<bool>,
}

/// Root arguments.
pub struct NodeArgs {
    failed: watch::Sender<bool>,
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: NodeArgs) -> Result<Self::State, ActorProcessingErr> {
        Ok(NodeState { failed: args.failed })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = %describe(&cell), error = %error, "infrastructure actor failed; node stopping");
                let _ = state.failed.send(true);
                myself.stop(Some("infrastructure actor failed".into()));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::info!(actor = %describe(&cell), reason = reason.as_deref().unwrap_or(""), "infrastructure actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

fn describe(cell: &ActorCell) -> String {
    cell.get_name().unwrap_or_else(|| cell.get_id().to_string())
}

/// Starts the tree on the current tokio runtime.
pub async fn start(store: Arc<dyn Store>, limits: ActorLimits, push_sink: Arc<dyn PushSink>, push: PushConfig) -> Result<Node, ractor::SpawnErr> {
    let (failed_tx, failed_rx) = watch::channel(false);
    let (root, _) = Actor::spawn(None, NodeSupervisor, NodeArgs { failed: failed_tx }).await?;
    let stats = Arc::new(ActorStats::default());
    let writer_config = StoreWriterConfig { max_batch: limits.max_write_batch, defer: limits.write_defer };
    let (writer, _) = Actor::spawn_linked(Some("store-writer".into()), StoreWriter, (store.clone(), writer_config), root.get_cell()).await?;
    let router = Router::new();
    let push_args = PushArgs { store: store.clone(), router: router.clone(), sink: push_sink, config: push, stats: stats.clone() };
    let (push_actor, _) = Actor::spawn_linked(Some("push-dispatcher".into()), PushDispatcher, push_args, root.get_cell()).await?;
    let push_gauge =
        stats.gauge(push_actor.get_id()).ok_or_else(|| ractor::SpawnErr::StartupFailed("push dispatcher registered no mailbox".into()))?;
    let ctx = NodeContext {
        store,
        writer: StoreWriterHandle::new(writer),
        router: router.clone(),
        stats: stats.clone(),
        limits: Arc::new(limits),
        push: Mailbox::new(push_actor, push_gauge),
    };
    let (sessions, _) = Actor::spawn_linked(Some(super::session_supervisor::NAME.into()), SessionSupervisor, stats, root.get_cell()).await?;
    let (conversations, _) =
        Actor::spawn_linked(Some(super::conversation_supervisor::NAME.into()), ConversationSupervisor, ctx.clone(), root.get_cell()).await?;
    router.set_conversation_supervisor(conversations.clone());
    Ok(Node { ctx, root, sessions, conversations, failed: failed_rx })
}

impl Node {
    /// Stops every actor: sessions first (their connections are told why), then
    /// conversations, then the writer after it has committed what it holds.
    pub async fn shutdown(&self) {
        let timeout = Some(std::time::Duration::from_secs(10));
        self.sessions.get_cell().stop_children_and_wait(Some("shutdown".into()), timeout).await;
        self.conversations.get_cell().stop_children_and_wait(Some("shutdown".into()), timeout).await;
        self.ctx.writer.barrier().await;
        let _ = self.root.stop_children_and_wait(Some("shutdown".into()), timeout).await;
        let _ = self.root.stop_and_wait(Some("shutdown".into()), timeout).await;
        if let Err(e) = self.ctx.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for NodeMsg {}
