//! `bench sessions`: device session actors in this process, no sockets: memory per
//! session actor, spawn rate, routing rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{LoadError, own_rss};
use crate::ids::{DeviceId, UserId};
use crate::protocol::{self, pb, server_frame};

/// An actor tree in this process with no sockets: sessions get an in-memory outbox whose
/// receiving end the caller holds. Used to measure what sockets would hide (memory per
/// session actor, spawn rate, routing) and by the sequencing micro-benchmark.
pub struct InProcessNode {
    /// The tree.
    pub node: crate::actors::node::Node,
    _dir: tempfile::TempDir,
}

impl InProcessNode {
    /// Starts a node on an embedded store in a temporary directory.
    pub async fn start() -> Result<Self, LoadError> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).map_err(|e| LoadError::Server(e.to_string()))?);
        let node = crate::actors::node::start(
            store,
            crate::actors::ActorLimits::default(),
            Arc::new(crate::actors::push::LogSink),
            crate::actors::push::PushConfig::default(),
        )
        .await
        .map_err(|e| LoadError::Server(e.to_string()))?;
        Ok(Self { node, _dir: dir })
    }

    /// Spawns a device session with an in-memory outbox of `queue` frames; returns its
    /// mailbox and the receiving end of the outbox.
    pub async fn session(
        &self,
        user: UserId,
        device: DeviceId,
        queue: usize,
    ) -> Result<(crate::actors::Mailbox<crate::actors::messages::SessionMsg>, crate::actors::outbox::Outbox), LoadError> {
        let outbox = crate::actors::outbox::Outbox::new(queue);
        let args = crate::actors::session::SessionArgs { user, device, outbox: outbox.clone(), ctx: self.node.ctx.clone() };
        let mailbox = crate::actors::session_supervisor::start_session(&self.node.sessions.get_cell(), args)
            .await
            .map_err(|e| LoadError::Server(e.to_string()))?;
        Ok((mailbox, outbox))
    }
}

/// Result of the in-process `sessions` scenario.
#[derive(Debug, Serialize)]
pub struct SessionsReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Session actors alive at the end.
    pub sessions: usize,
    /// Process RSS before spawning, bytes.
    pub rss_before: u64,
    /// Process RSS with every session alive, bytes.
    pub rss_after: u64,
    /// (after − before) / sessions.
    pub bytes_per_session: u64,
    /// Sessions spawned (and caught up) per second.
    pub spawns_per_sec: f64,
    /// Frames routed user → session → outbox per second, over `routed` frames.
    pub routed_per_sec: f64,
    /// Frames routed.
    pub routed: u64,
}

/// Waits until `n` frames were taken from `outbox` (then forgets them).
async fn take_frames(outbox: &mut crate::actors::outbox::Outbox, taken: &mut Vec<bytes::Bytes>, n: usize) -> Result<(), LoadError> {
    while taken.len() < n {
        if let crate::actors::outbox::Taken::Closing(_) = outbox.take(taken).await {
            return Err(LoadError::Server("session closed".into()));
        }
    }
    taken.clear();
    Ok(())
}

/// Holds `count` idle device session actors in this process (no sockets) and routes one
/// frame to each of them through the router.
pub async fn sessions(count: usize, progress: impl Fn(usize)) -> Result<SessionsReport, LoadError> {
    let node = InProcessNode::start().await?;
    let rss_before = own_rss()?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let user = UserId::random();
        // A small outbox: an idle device has nothing queued.
        held.push(node.session(user, DeviceId::random(), 4).await?);
        users.push(user);
        if i % 10_000 == 9_999 {
            progress(i + 1);
        }
    }
    let spawn_time = started.elapsed();
    // Every session settled before anything is measured: spawning returns once the actor
    // started, while its registration in the router and its catch-up (ending with
    // CatchUpComplete) run afterwards. A frame routed to a user whose session is not yet
    // registered would be dropped, and an RSS read now would miss the catch-ups' memory.
    let mut taken = Vec::new();
    for (_, outbox) in held.iter_mut() {
        take_frames(outbox, &mut taken, 1).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = own_rss()?;
    // Routing: one frame to every user through the router's directory.
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: 1 })));
    let routed_started = Instant::now();
    for user in &users {
        node.node.ctx.router.deliver_to_user(*user, None, || crate::actors::messages::SessionRequest::Push(frame.clone()));
    }
    for (_, outbox) in held.iter_mut() {
        take_frames(outbox, &mut taken, 1).await?;
    }
    let routed_time = routed_started.elapsed();
    Ok(SessionsReport {
        scenario: "sessions",
        sessions: held.len(),
        rss_before,
        rss_after,
        bytes_per_session: rss_after.saturating_sub(rss_before) / count.max(1) as u64,
        spawns_per_sec: count as f64 / spawn_time.as_secs_f64(),
        routed_per_sec: count as f64 / routed_time.as_secs_f64(),
        routed: count as u64,
    })
}
