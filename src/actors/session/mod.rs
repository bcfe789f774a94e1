//! The device session: one actor per connected device, the channel half of a connection.
//!
//! The connection (in `transport`) does the socket I/O and the handshake; once the device
//! is authenticated it spawns this actor and hands it the frames it reads, a batch per
//! socket read. The session is a shell around the device's [`DeliveryCore`]: it answers
//! requests ([`requests`]), hands sends to their conversations (one message per
//! conversation per batch), writes cursor moves (coalesced per conversation per batch),
//! and puts what conversations commit into the connection's bounded [`Outbox`] in the
//! order the delivery core decides ([`delivery`]). The outbox is `actors::outbox`.
//!
//! - [`delivery`]: catch-up, live batches, gap filling (the core decides, this does I/O).
//! - [`requests`]: one function per request frame.
//! - [`inbox`]: the conversation list's frames (pages, mute/archive/pin/clear).
//! - [`presence`]: telling 1:1 peers that the user came or went.
//! - [`keys`]: the key directory's frames and the low-keys notice.
//! - [`to_device`]: to-device messages and device-list notices.

pub mod delivery;
pub mod inbox;
pub mod keys;
pub mod presence;
pub mod requests;
pub mod to_device;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use super::outbox::{Outbox, PushError};

use super::NodeContext;
use super::mailbox::{Label, Mailbox, MailboxGauge};
use super::messages::{SessionControl, SessionMsg, SessionRequest};
use crate::cores::delivery::{Backpressure, DeliveryCore, Pressure};
use crate::ids::{DeviceId, UserId};
use crate::protocol::{self, ErrorCode};
use crate::store::now_ms;

/// The session actor.
pub struct DeviceSession;

/// Spawn arguments.
pub struct SessionArgs {
    /// The authenticated user.
    pub user: UserId,
    /// The authenticated device.
    pub device: DeviceId,
    /// Towards the device.
    pub outbox: Outbox,
    /// Node services.
    pub ctx: NodeContext,
}

/// Session state.
pub struct SessionState {
    user: UserId,
    device: DeviceId,
    outbox: Outbox,
    ctx: NodeContext,
    gauge: Arc<MailboxGauge>,
    core: DeliveryCore,
    backpressure: Backpressure,
    stopping: bool,
    /// This actor's id (the router's registration).
    id: ractor::ActorId,
    /// The end of the session has run (see [`SessionState::finish`]).
    finished: bool,
    /// The device's place in its to-device queue (set at catch-up).
    to_device: crate::cores::to_device::Receiver,
    /// The user's privacy settings and blocks (loaded at start, reloaded when changed).
    privacy: crate::privacy::PrivacyCache,
}

impl SessionState {
    /// The end of this session: the gauge and the node's counts, then the one
    /// end-of-session path (unregistering, last seen, offline presence, a push for what
    /// the device left unacknowledged). Runs once, from `post_stop` — or, when the actor
    /// failed (a panic skips `post_stop`), when its state is dropped.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.gauge.close();
        // The connection ends with its session. A device that left without Bye (its
        // socket closed) leaves nothing else to close the outbox: the writer would wait
        // for frames forever, and the socket, its tasks and buffers would stay. Frames
        // queued before are still written; no final frame (the first close's wins, so a
        // session closed for a reason keeps its Closing frame).
        self.outbox.close(Bytes::new());
        self.ctx.stats.deregister(self.id);
        metrics::gauge!("switchboard_sessions").decrement(1.0);
        crate::actors::session_end::disconnected(
            &self.ctx,
            self.user,
            self.device,
            self.id,
            self.core.views().map(|v| (&v.record, v.delivered, v.pushed)),
        );
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // (The end-of-session path spawns tasks, which needs a runtime.)
        if !self.finished && tokio::runtime::Handle::try_current().is_ok() {
            // post_stop did not run: the actor failed (a panic), was killed (a supervisor
            // stopping, shutdown past its grace), was stopped before it started, or its
            // task was dropped with its runtime. Its connection is closed, and its device
            // must not stay listed as connected (here, in other nodes' directories, in
            // Redis). (At shutdown the writer may already be gone: the last-seen write is
            // then lost, and logged.)
            self.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Internal, "session failed", 1000)));
            self.finish();
        }
    }
}

/// Why the session must end while doing its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The device did not read its frames in time.
    Slow,
    /// The connection is closing or gone.
    Gone,
}

impl Actor for DeviceSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        let SessionArgs { user, device, outbox, ctx } = args;
        let gauge = ctx.stats.register(myself.get_id(), Label::Session(user, device), ctx.limits.session_mailbox);
        metrics::gauge!("switchboard_sessions").increment(1.0);
        let backpressure = Backpressure::new(ctx.limits.slow_consumer_timeout.as_millis() as u64);
        let ctx_window = ctx.limits.to_device.window;
        Ok(SessionState {
            user,
            device,
            outbox,
            ctx,
            gauge,
            core: DeliveryCore::new(user, device),
            backpressure,
            stopping: false,
            id: myself.get_id(),
            finished: false,
            to_device: crate::cores::to_device::Receiver::new(0, ctx_window),
            privacy: crate::privacy::PrivacyCache::default(),
        })
    }

    async fn post_start(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        Box::pin(start(myself, state)).await
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.finish();
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.received(&msg);
        if state.stopping {
            return Ok(());
        }
        if state.outbox.is_closed() && !matches!(msg, SessionMsg::Control(SessionControl::Sync(_))) {
            // Closed from outside (revoked, replaced, drained, slow): queued work is
            // abandoned, the actor stops.
            state.stopping = true;
            myself.stop(Some("connection closed".into()));
            return Ok(());
        }
        // Busy time counts the awaits too (store reads, a full outbox): while they last
        // the session takes nothing from its mailbox, which is what an operator looks for.
        let started = Instant::now();
        let result = match msg {
            // Boxed: the handlers' state machines are large (a full outbox's wait holds a
            // timer) and would otherwise be part of every idle session's resident future
            // (memory per session), for one small allocation per mailbox message.
            SessionMsg::Request(SessionRequest::Frames(frames)) => Box::pin(requests::handle_frames(&myself, state, frames)).await,
            SessionMsg::Request(SessionRequest::Conversation(batch)) => Box::pin(delivery::live(state, &batch)).await,
            SessionMsg::Request(SessionRequest::Push(frame)) => Box::pin(push(state, frame)).await,
            SessionMsg::Request(SessionRequest::ToDevice { position, frame }) => Box::pin(to_device::live(state, position, frame)).await,
            SessionMsg::Request(SessionRequest::PrivacyChanged(user)) => Box::pin(presence::privacy_changed(state, user)).await,
            SessionMsg::Control(SessionControl::Close { code, reason, reconnect_after_ms }) => {
                crate::actors::messages::close_outbox(
                    &state.outbox,
                    code,
                    protocol::encode_server(&protocol::closing_frame(code, reason.clone(), reconnect_after_ms)),
                );
                state.stopping = true;
                myself.stop(Some(reason));
                Ok(())
            }
            SessionMsg::Control(SessionControl::ConnectionClosed) => {
                state.stopping = true;
                myself.stop(Some("connection closed".into()));
                Ok(())
            }
            SessionMsg::Control(SessionControl::Sync(reply)) => {
                let _ = reply.send(());
                Ok(())
            }
        };
        state.gauge.add_busy(started);
        match result {
            Ok(()) => Ok(()),
            Err(stop) => stop_for(&myself, state, stop),
        }
    }
}

/// A session's start: registration, privacy rules, catch-up, presence. Runs once, so it is
/// boxed by `post_start`: inline, its state machine (~0.8 KB) would stay part of every
/// session's task for the session's whole life (memory per session).
async fn start(myself: ActorRef<SessionMsg>, state: &mut SessionState) -> Result<(), ActorProcessingErr> {
    let mailbox = Mailbox::new(myself.clone(), state.gauge.clone());
    let registration = state.ctx.router.register_session(state.user, state.device, mailbox, state.outbox.clone());
    if let Some(old) = registration.replaced {
        // The same device connected again: close the old connection, and let its
        // session finish what it had queued (acks) before we read cursors.
        old.control(SessionControl::Close { code: ErrorCode::Replaced, reason: "this device connected again".into(), reconnect_after_ms: 0 });
        let _ = old.actor().get_cell().wait(Some(std::time::Duration::from_secs(5))).await;
    }
    if registration.recent_writes {
        // Cursor writes of an earlier connection of this device may still be in the
        // writer's queue: wait for them, or catch-up would resend what was acked.
        state.ctx.writer.barrier().await;
    }
    // Before anything reaches another user: the rules of what may (presence, receipts,
    // typing, sends). Unreadable, the session does not start (it would fail open).
    match crate::privacy::PrivacyCache::load(state.ctx.store.as_ref(), state.user).await {
        Ok(cache) => state.privacy = cache,
        Err(e) => {
            tracing::warn!(user = %state.user, error = %e, "privacy settings unreadable; session not started");
            state.stopping = true;
            state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Unavailable, "store unavailable", 1000)));
            myself.stop(Some("privacy settings unreadable".into()));
            return Ok(());
        }
    }
    let started = Instant::now();
    if let Err(stop) = Box::pin(delivery::catch_up(state)).await {
        return stop_for(&myself, state, stop);
    }
    metrics::histogram!("switchboard_catch_up_seconds").record(started.elapsed().as_secs_f64());
    if let Err(stop) = keys::notice_if_low(state).await {
        return stop_for(&myself, state, stop);
    }
    if registration.first_device {
        presence::broadcast_online(state).await;
    }
    Ok(())
}

fn stop_for(myself: &ActorRef<SessionMsg>, state: &mut SessionState, stop: Stop) -> Result<(), ActorProcessingErr> {
    state.stopping = true;
    match stop {
        Stop::Slow => {
            metrics::counter!("switchboard_slow_consumers_total").increment(1);
            tracing::info!(user = %state.user, device = %state.device, "slow consumer disconnected");
            state.outbox.preempt(protocol::encode_server(&protocol::closing_frame(
                ErrorCode::SlowConsumer,
                "device did not read its frames fast enough",
                1000,
            )));
            myself.stop(Some("slow consumer".into()));
        }
        Stop::Gone => myself.stop(Some("connection gone".into())),
    }
    Ok(())
}

/// Queues a frame for the device. A full queue is given the slow-consumer grace to drain
/// (the delivery core decides): bursts pass, a device that stopped reading does not.
/// Meanwhile new work waits in this session's bounded mailbox, never anywhere else.
pub async fn push(state: &mut SessionState, mut frame: Bytes) -> Result<(), Stop> {
    loop {
        match state.outbox.offer(frame) {
            Ok(()) => {
                state.backpressure.drained();
                frames_out().increment(1);
                return Ok(());
            }
            Err((PushError::Closed, _)) => return Err(Stop::Gone),
            Err((PushError::Full, refused)) => match state.backpressure.full(now_ms()) {
                Pressure::Disconnect => return Err(Stop::Slow),
                Pressure::Wait(ms) => {
                    tracing::debug!(user = %state.user, device = %state.device, "outbox full; waiting for the device to read");
                    if !state.outbox.wait_room(std::time::Duration::from_millis(ms)).await && state.outbox.is_closed() {
                        return Err(Stop::Gone);
                    }
                    frame = refused;
                }
            },
        }
    }
}

/// The frames-out counter, resolved once: it is bumped for every frame to every device,
/// and the `counter!` macro's registry lookup showed in the fan-out profile.
fn frames_out() -> &'static metrics::Counter {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!("switchboard_frames_out_total"))
}
