//! The device session: one actor per connected device, the channel half of a connection.
//!
//! The connection (in `transport`) does the socket I/O and the handshake; once the device
//! is authenticated it spawns this actor and forwards decoded frames to it. The session
//! answers requests, forwards sends to conversations through the router, and writes
//! everything meant for the device into the connection's bounded [`Outbox`].
//!
//! Ordering: for each conversation the session keeps a watermark, the highest seq it has
//! put in the outbox. Catch-up after connecting sends everything after the device's
//! delivered cursor; a live delivery at or below the watermark is a duplicate and is
//! dropped; one above watermark + 1 means something was missed in between, which is read
//! from the store first. So a device sees each conversation in seq order, without gaps or
//! duplicates, however catch-up and live traffic interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use super::conversation::{ConversationMsg, ConversationOp, EditRequest, GroupRequest, SendRequest, message_frame};
use super::group::GroupOp;
use super::mailbox::{Mailbox, MailboxGauge};
use super::router::RouteError;
use crate::protocol::{self, ErrorCode, MAX_CLIENT_MSG_ID_BYTES, client_frame, id_bytes, parse_id, pb, server_frame};
use crate::store::{
    ContentKind, ConversationId, ConversationKind, ConversationRecord, DeviceId, GroupState, Store, StoreError, StoredMessage, UserId, WriteOp,
    direct_conversation_id, now_ms,
};

/// One message fanned out to many devices: the frame is encoded once and shared.
#[derive(Debug)]
pub struct Delivery {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Its seq.
    pub seq: u64,
    /// The device that sent it (never delivered back to it).
    pub sender_device: DeviceId,
    /// A group event: the conversation's record changed with it.
    pub is_event: bool,
    /// The encoded `ServerFrame::Message`.
    pub frame: Bytes,
}

/// Messages of a session actor. Kept small: large payloads travel as `Bytes` or boxed.
pub enum SessionMsg {
    /// A decoded frame from the device.
    Frame(Box<client_frame::Kind>),
    /// A conversation message for the device.
    Deliver(Arc<Delivery>),
    /// The SendAck of a message this device sent.
    Acked {
        /// Conversation.
        conversation_id: ConversationId,
        /// Seq given to the message.
        seq: u64,
        /// The encoded SendAck.
        frame: Bytes,
    },
    /// An encoded frame to pass through (receipts, typing, presence, errors).
    Push(Bytes),
    /// Close the connection with a reason (revoked, replaced, slow, shutdown).
    Close {
        /// Why.
        code: ErrorCode,
        /// Human text.
        reason: String,
        /// Suggested reconnect delay; 0 = do not reconnect automatically.
        reconnect_after_ms: u32,
    },
    /// The socket is gone.
    ConnectionClosed,
    /// Answers once every message queued before it has been handled (shutdown).
    Sync(ractor::RpcReplyPort<()>),
}

/// The session's end of a connection: a bounded queue of encoded frames towards the
/// device, and a way to close the connection with a final frame that skips the queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    close: Arc<CloseSignal>,
}

/// Shared close state of one connection.
#[derive(Default)]
pub struct CloseSignal {
    token: CancellationToken,
    frame: Mutex<Option<Bytes>>,
}

impl CloseSignal {
    /// Asks the connection to send `frame` (if not already closing) and close.
    pub fn close(&self, frame: Bytes) {
        let mut slot = self.frame.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() && !self.token.is_cancelled() {
            *slot = Some(frame);
        }
        drop(slot);
        self.token.cancel();
    }

    /// Resolves once the connection must close.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// True once closing.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The final frame to send, once.
    pub fn take_frame(&self) -> Option<Bytes> {
        self.frame.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
enum PushError {
    /// The device is not reading fast enough.
    Slow,
    /// The connection is gone.
    Gone,
}

impl Outbox {
    /// A queue of `capacity` frames; the receiver goes to the connection's writer.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Bytes>, Arc<CloseSignal>) {
        let (tx, rx) = mpsc::channel(capacity);
        let close = Arc::new(CloseSignal::default());
        (Self { tx, close: close.clone() }, rx, close)
    }

    /// Queues a frame without waiting.
    fn try_push(&self, frame: Bytes) -> Result<(), (PushError, Bytes)> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(f) => (PushError::Slow, f),
            mpsc::error::TrySendError::Closed(f) => (PushError::Gone, f),
        })
    }

    /// Queues a frame, waiting up to `timeout` for room (catch-up, which may be large).
    async fn push_wait(&self, frame: Bytes, timeout: std::time::Duration) -> Result<(), PushError> {
        match self.tx.send_timeout(frame, timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(PushError::Slow),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(PushError::Gone),
        }
    }

    /// Queues a frame for the device now; used by the connection before the session runs.
    pub fn push_now(&self, frame: Bytes) -> bool {
        self.tx.try_send(frame).is_ok()
    }

    /// Closes the connection with a final frame.
    pub fn close(&self, frame: Bytes) {
        self.close.close(frame);
    }
}

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

/// What the session knows of one conversation.
struct ConvView {
    record: ConversationRecord,
    /// The seqs this user may see (from joining a group to leaving it).
    range: (u64, u64),
    /// Highest seq put in the outbox (or covered by the delivered cursor).
    pushed: u64,
    delivered: u64,
    read: u64,
}

impl ConvView {
    /// A view of `record` for `user`, resuming after `delivered` (None if the user may see
    /// nothing of it).
    fn new(record: ConversationRecord, user: UserId, delivered: u64, read: u64) -> Option<Self> {
        let range = record.visible_range(user)?;
        // Nothing before joining: start at the joining event at the earliest.
        let pushed = delivered.max(range.0.saturating_sub(1));
        Some(Self { record, range, pushed, delivered, read })
    }

    fn visible(&self, seq: u64) -> bool {
        seq >= self.range.0 && seq <= self.range.1
    }
}

/// Session state.
pub struct SessionState {
    user: UserId,
    device: DeviceId,
    outbox: Outbox,
    ctx: NodeContext,
    gauge: Arc<MailboxGauge>,
    convs: HashMap<ConversationId, ConvView>,
    stopping: bool,
}

/// Fault of a request that the device is told about in an Error frame.
struct Reject {
    code: ErrorCode,
    message: String,
}

impl Reject {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<protocol::IdError> for Reject {
    fn from(e: protocol::IdError) -> Self {
        Reject::new(ErrorCode::InvalidArgument, e.to_string())
    }
}

impl From<crate::store::StoreError> for Reject {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store read failed for a request");
        Reject::new(ErrorCode::Internal, "store unavailable; retry")
    }
}

impl Actor for DeviceSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        let SessionArgs { user, device, outbox, ctx } = args;
        let gauge = ctx.stats.register(myself.get_id(), format!("session user={user} device={device}"), ctx.limits.session_mailbox);
        metrics::gauge!("switchboard_sessions").increment(1.0);
        Ok(SessionState { user, device, outbox, ctx, gauge, convs: HashMap::new(), stopping: false })
    }

    async fn post_start(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let mailbox = Mailbox::new(myself.clone(), state.gauge.clone());
        let registration = state.ctx.router.register_session(state.user, state.device, mailbox);
        if let Some(old) = registration.replaced {
            // The same device connected again: close the old connection, and let its
            // session finish what it had queued (acks) before we read cursors.
            let _ = old.actor().cast(SessionMsg::Close {
                code: ErrorCode::Replaced,
                reason: "this device connected again".into(),
                reconnect_after_ms: 0,
            });
            let _ = old.actor().get_cell().wait(Some(std::time::Duration::from_secs(5))).await;
        }
        // Cursor writes of an earlier connection may still be in the writer's queue.
        state.ctx.writer.barrier().await;
        let started = Instant::now();
        if let Err(e) = Box::pin(catch_up(&myself, state)).await {
            return stop_for(&myself, state, e);
        }
        metrics::histogram!("switchboard_catch_up_seconds").record(started.elapsed().as_secs_f64());
        if registration.first_device {
            broadcast_presence(state, true, 0);
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.close();
        state.ctx.stats.deregister(myself.get_id());
        metrics::gauge!("switchboard_sessions").decrement(1.0);
        if state.ctx.router.unregister_session(state.user, state.device, myself.get_id()) {
            let at = now_ms();
            state.ctx.writer.write(WriteOp::LastSeen { user_id: state.user, at_ms: at }, Box::new(|_| {}));
            broadcast_presence(state, false, at);
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        let result = match msg {
            SessionMsg::Frame(kind) => {
                state.gauge.taken();
                metrics::counter!("switchboard_frames_in_total").increment(1);
                // Boxed: the request handlers' state machines are large and would otherwise
                // be part of every idle session's resident future (memory per session).
                Box::pin(handle_frame(&myself, state, *kind)).await
            }
            SessionMsg::Deliver(delivery) => {
                state.gauge.taken();
                Box::pin(deliver(state, &delivery)).await
            }
            SessionMsg::Acked { conversation_id, seq, frame } => {
                state.gauge.taken();
                if let Some(view) = state.convs.get_mut(&conversation_id)
                    && view.pushed + 1 == seq
                {
                    view.pushed = seq;
                }
                Box::pin(push(state, frame)).await
            }
            SessionMsg::Push(frame) => {
                state.gauge.taken();
                Box::pin(push(state, frame)).await
            }
            SessionMsg::Close { code, reason, reconnect_after_ms } => {
                state.outbox.close(protocol::encode_server(&protocol::closing_frame(code, reason.clone(), reconnect_after_ms)));
                state.stopping = true;
                myself.stop(Some(reason));
                Ok(())
            }
            SessionMsg::ConnectionClosed => {
                state.stopping = true;
                myself.stop(Some("connection closed".into()));
                Ok(())
            }
            SessionMsg::Sync(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => stop_for(&myself, state, e),
        }
    }
}

fn stop_for(myself: &ActorRef<SessionMsg>, state: &mut SessionState, e: PushError) -> Result<(), ActorProcessingErr> {
    state.stopping = true;
    match e {
        PushError::Slow => {
            metrics::counter!("switchboard_slow_consumers_total").increment(1);
            tracing::info!(user = %state.user, device = %state.device, "slow consumer disconnected");
            state.outbox.close(protocol::encode_server(&protocol::closing_frame(
                ErrorCode::SlowConsumer,
                "device did not read its frames fast enough",
                1000,
            )));
            myself.stop(Some("slow consumer".into()));
        }
        PushError::Gone => myself.stop(Some("connection gone".into())),
    }
    Ok(())
}

/// Queues a frame for the device. A full queue is given `slow_consumer_timeout` to drain:
/// bursts (a batch of acks, a big fan-out) pass, a device that stopped reading does not.
/// Meanwhile new work waits in this session's bounded mailbox, never anywhere else.
async fn push(state: &SessionState, frame: Bytes) -> Result<(), PushError> {
    match state.outbox.try_push(frame) {
        Ok(()) => {}
        Err((PushError::Slow, frame)) => {
            tracing::debug!(user = %state.user, device = %state.device, "outbox full; waiting for the device to read");
            state.outbox.push_wait(frame, state.ctx.limits.slow_consumer_timeout).await?
        }
        Err((e, _)) => return Err(e),
    }
    frames_out().increment(1);
    Ok(())
}

/// The frames-out counter, resolved once: it is bumped for every frame to every device,
/// and the `counter!` macro's registry lookup showed in the fan-out profile.
fn frames_out() -> &'static metrics::Counter {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!("switchboard_frames_out_total"))
}

/// Sends everything after the device's delivered cursor, conversation by conversation.
async fn catch_up(_myself: &ActorRef<SessionMsg>, state: &mut SessionState) -> Result<(), PushError> {
    let store = state.ctx.store.clone();
    let load = async {
        let ids = store.conversations_of(state.user).await?;
        let cursors: HashMap<_, _> = store.cursors_of(state.device).await?.into_iter().collect();
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = store.conversation(id).await? {
                let c = cursors.get(&id).copied().unwrap_or_default();
                if let Some(view) = ConvView::new(record, state.user, c.delivered, c.read) {
                    views.push(view);
                }
            }
        }
        Ok::<_, crate::store::StoreError>(views)
    };
    let views = match load.await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "catch-up could not read the store");
            state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Internal, "store unavailable", 2000)));
            return Err(PushError::Gone);
        }
    };
    let page = state.ctx.limits.catch_up_page;
    let wait = state.ctx.limits.slow_consumer_timeout;
    let mut total = 0u64;
    let conversations = views.len() as u32;
    for mut view in views {
        let id = view.record.conversation_id;
        loop {
            let batch = match store.messages_after(id, view.pushed, page).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up read failed");
                    state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Internal, "store unavailable", 2000)));
                    return Err(PushError::Gone);
                }
            };
            let n = batch.len();
            let mut past_range = false;
            for m in batch {
                if m.seq > view.range.1 {
                    past_range = true;
                    break;
                }
                view.pushed = m.seq;
                if m.sender_device_id == state.device && m.event.is_none() {
                    continue;
                }
                let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Message(message_frame(&m))));
                state.outbox.push_wait(frame, wait).await?;
                total += 1;
            }
            if n < page || past_range {
                break;
            }
        }
        state.convs.insert(id, view);
    }
    let done = protocol::server(server_frame::Kind::CatchUpComplete(pb::CatchUpComplete { conversations, messages: total }));
    state.outbox.push_wait(protocol::encode_server(&done), wait).await?;
    frames_out().increment(total + 1);
    Ok(())
}

/// Live delivery with the watermark rules in the module doc.
async fn deliver(state: &mut SessionState, delivery: &Delivery) -> Result<(), PushError> {
    let id = delivery.conversation_id;
    if !state.convs.contains_key(&id) {
        // A conversation that began (or that this user joined) after catch-up.
        match state.ctx.store.conversation(id).await {
            Ok(Some(record)) => match ConvView::new(record, state.user, 0, 0) {
                Some(view) => {
                    state.convs.insert(id, view);
                }
                None => return Ok(()),
            },
            _ => return Ok(()),
        }
    }
    let Some(view) = state.convs.get(&id) else { return Ok(()) };
    let pushed = view.pushed;
    if delivery.seq <= pushed || !view.visible(delivery.seq) {
        return Ok(());
    }
    if delivery.seq > pushed + 1 {
        fill_gap(state, id, pushed, delivery.seq - 1).await?;
    }
    push(state, delivery.frame.clone()).await?;
    if let Some(view) = state.convs.get_mut(&id) {
        view.pushed = delivery.seq;
    }
    if delivery.is_event {
        // Membership or settings changed with this event; the store has the new record.
        if let Ok(Some(record)) = state.ctx.store.conversation(id).await
            && let Some(view) = state.convs.get_mut(&id)
        {
            view.range = record.visible_range(state.user).unwrap_or((1, delivery.seq));
            view.record = record;
        }
    }
    Ok(())
}

/// Sends the stored messages in (after, up_to] that this connection has not seen.
async fn fill_gap(state: &mut SessionState, id: ConversationId, after: u64, up_to: u64) -> Result<(), PushError> {
    let mut cursor = after;
    while cursor < up_to {
        let want = ((up_to - cursor) as usize).min(state.ctx.limits.catch_up_page);
        let batch = match state.ctx.store.messages_after(id, cursor, want).await {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "gap fill read failed");
                return Err(PushError::Gone);
            }
        };
        for m in batch {
            if m.seq > up_to {
                break;
            }
            cursor = m.seq;
            if (m.sender_device_id != state.device || m.event.is_some()) && state.convs.get(&id).is_some_and(|v| v.visible(m.seq)) {
                push(state, protocol::encode_server(&protocol::server(server_frame::Kind::Message(message_frame(&m))))).await?;
            }
        }
    }
    if let Some(view) = state.convs.get_mut(&id) {
        view.pushed = view.pushed.max(cursor);
    }
    Ok(())
}

async fn handle_frame(myself: &ActorRef<SessionMsg>, state: &mut SessionState, kind: client_frame::Kind) -> Result<(), PushError> {
    let (request_ref, outcome) = match kind {
        client_frame::Kind::Hello(_) => (String::new(), Err(Reject::new(ErrorCode::AlreadyAuthenticated, "already authenticated"))),
        client_frame::Kind::Ping(p) => {
            let pong = protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: p.nonce }));
            return push(state, protocol::encode_server(&pong)).await;
        }
        client_frame::Kind::Bye(_) => {
            state.stopping = true;
            state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Unspecified, "bye", 0)));
            myself.stop(Some("bye".into()));
            return Ok(());
        }
        client_frame::Kind::OpenDirect(req) => (req.request_id.to_string(), open_direct(state, req).await),
        client_frame::Kind::Send(req) => {
            let r = req.client_msg_id.clone();
            (r, send(state, req).await)
        }
        client_frame::Kind::Ack(req) => (String::new(), move_cursor(state, &req.conversation_id, req.seq, false).await),
        client_frame::Kind::Read(req) => (String::new(), move_cursor(state, &req.conversation_id, req.seq, true).await),
        client_frame::Kind::Typing(req) => (String::new(), typing(state, req).await),
        client_frame::Kind::History(req) => (req.request_id.to_string(), history(state, req).await),
        client_frame::Kind::PresenceQuery(req) => (req.request_id.to_string(), presence_query(state, req).await),
        client_frame::Kind::CreateGroup(req) => (req.request_id.to_string(), create_group(state, req).await),
        client_frame::Kind::GroupChange(req) => (req.request_id.to_string(), group_change(state, req).await),
        client_frame::Kind::JoinGroup(req) => (req.request_id.to_string(), join_group(state, req).await),
        client_frame::Kind::DeleteMessage(req) => {
            (req.request_id.to_string(), edit(state, &req.conversation_id, req.request_id, ConversationOp::Delete(req.seq)).await)
        }
        client_frame::Kind::MessageInfo(req) => (req.request_id.to_string(), message_info(state, req).await),
        client_frame::Kind::GroupInfo(req) => (req.request_id.to_string(), group_info(state, req).await),
        client_frame::Kind::SetRetention(req) => {
            (req.request_id.to_string(), edit(state, &req.conversation_id, req.request_id, ConversationOp::Retention(req.seconds)).await)
        }
    };
    match outcome {
        Ok(Some(frame)) => push(state, protocol::encode_server(&frame)).await,
        Ok(None) => Ok(()),
        Err(reject) => {
            metrics::counter!("switchboard_request_errors_total").increment(1);
            push(state, protocol::encode_server(&protocol::error_frame(reject.code, reject.message, request_ref, false))).await
        }
    }
}

type Answer = Result<Option<pb::ServerFrame>, Reject>;

/// The view of a conversation this user is or was a member of, loading it if needed.
async fn view<'a>(state: &'a mut SessionState, raw_id: &[u8]) -> Result<&'a mut ConvView, Reject> {
    let id = parse_id("conversation_id", raw_id)?;
    if !state.convs.contains_key(&id) {
        let record =
            state.ctx.store.conversation(id).await?.ok_or_else(|| Reject::new(ErrorCode::UnknownConversation, "no conversation has this id"))?;
        let view = ConvView::new(record, state.user, 0, 0).ok_or_else(|| Reject::new(ErrorCode::NotAMember, "not a member of this conversation"))?;
        state.convs.insert(id, view);
    }
    let view = state.convs.get_mut(&id).ok_or_else(|| Reject::new(ErrorCode::Internal, "conversation view lost"))?;
    Ok(view)
}

/// The view of a conversation this user is a current member of.
async fn member_view<'a>(state: &'a mut SessionState, raw_id: &[u8]) -> Result<&'a mut ConvView, Reject> {
    let user = state.user;
    let view = view(state, raw_id).await?;
    if !view.record.is_member(user) {
        return Err(Reject::new(ErrorCode::NotAMember, "not a member of this conversation"));
    }
    Ok(view)
}

async fn open_direct(state: &mut SessionState, req: pb::OpenDirect) -> Answer {
    let peer = parse_id("peer_user_id", &req.peer_user_id)?;
    if state.ctx.store.user(peer).await?.is_none() {
        return Err(Reject::new(ErrorCode::UnknownUser, "no user has this id"));
    }
    let id = direct_conversation_id(state.user, peer);
    if !state.convs.contains_key(&id) {
        let mut members = vec![state.user, peer];
        members.sort();
        members.dedup();
        let record =
            ConversationRecord { conversation_id: id, kind: ConversationKind::Direct, members, created_ms: now_ms(), group: None, retention_secs: 0 };
        let record = state.ctx.store.create_conversation(record).await?;
        if let Some(view) = ConvView::new(record, state.user, 0, 0) {
            state.convs.insert(id, view);
        }
    }
    Ok(Some(protocol::server(server_frame::Kind::DirectOpened(pb::DirectOpened { request_id: req.request_id, conversation_id: id_bytes(id) }))))
}

async fn send(state: &mut SessionState, req: pb::Send) -> Answer {
    if req.client_msg_id.is_empty() || req.client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
        return Err(Reject::new(ErrorCode::InvalidArgument, "client_msg_id must be 1 to 64 bytes"));
    }
    if req.payload.len() > state.ctx.limits.max_payload {
        return Err(Reject::new(
            ErrorCode::PayloadTooLarge,
            format!("payload of {} bytes exceeds {}", req.payload.len(), state.ctx.limits.max_payload),
        ));
    }
    let id = member_view(state, &req.conversation_id).await?.record.conversation_id;
    metrics::counter!("switchboard_messages_in_total").increment(1);
    let kind = match pb::MessageKind::try_from(req.kind) {
        Ok(pb::MessageKind::Normal) => ContentKind::Normal,
        Ok(pb::MessageKind::Edit) => ContentKind::Edit,
        Ok(pb::MessageKind::Reaction) => ContentKind::Reaction,
        Err(_) => return Err(Reject::new(ErrorCode::InvalidArgument, "unknown message kind")),
    };
    let attachments = crate::media::attachments::declared(state.ctx.store.as_ref(), state.user, &req.attachments)
        .await
        .map_err(|e| Reject::new(e.code(), e.to_string()))?;
    let request = SendRequest {
        user: state.user,
        device: state.device,
        client_msg_id: req.client_msg_id,
        payload: req.payload,
        kind,
        reference_seq: req.reference_seq,
        attachments,
    };
    route(state, id, ConversationMsg::Send(Box::new(request))).await
}

async fn move_cursor(state: &mut SessionState, raw_id: &[u8], seq: u64, read: bool) -> Answer {
    let device = state.device;
    let user = state.user;
    let view = view(state, raw_id).await?;
    let id = view.record.conversation_id;
    // A device cannot acknowledge what it was never sent.
    let seq = seq.min(view.pushed);
    let moved_delivered = seq > view.delivered;
    let moved_read = read && seq > view.read;
    if !moved_delivered && !moved_read {
        return Ok(None);
    }
    view.delivered = view.delivered.max(seq);
    if read {
        view.read = view.read.max(seq);
    }
    let op = WriteOp::AdvanceCursor {
        user_id: user,
        device_id: device,
        conversation_id: id,
        delivered: seq,
        read: if read { seq } else { 0 },
        at_ms: now_ms(),
    };
    state.ctx.writer.write(
        op,
        Box::new(|r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cursor write failed");
            }
        }),
    );
    let kind = if read { pb::ReceiptKind::Read } else { pb::ReceiptKind::Delivered };
    if let Err(e) = state.ctx.router.send_to_conversation(id, ConversationMsg::CursorMoved { user, device, kind, seq }).await {
        // The cursor is stored; only the live receipt is lost, and it is not part of the
        // durable contract (the next cursor move carries the newer position).
        tracing::debug!(conversation = %id, error = %e, "receipt not relayed");
    }
    Ok(None)
}

async fn typing(state: &mut SessionState, req: pb::Typing) -> Answer {
    let (user, device) = (state.user, state.device);
    let view = member_view(state, &req.conversation_id).await?;
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Typing(pb::TypingEvent {
        conversation_id: req.conversation_id,
        user_id: id_bytes(user),
        device_id: id_bytes(device),
        active: req.active,
    })));
    // Ephemeral: relayed straight to the other members' devices, never stored, and it does
    // not wake a passivated conversation.
    let members = view.record.members.clone();
    for member in members.into_iter().filter(|m| *m != user) {
        state.ctx.router.deliver_to_user(member, None, || SessionMsg::Push(frame.clone()));
    }
    Ok(None)
}

/// Largest history page.
pub const MAX_HISTORY_PAGE: usize = 200;
/// History page size when the client asks for 0.
pub const DEFAULT_HISTORY_PAGE: usize = 50;

/// One page of history, newest first, seqs below `before` (0 = newest), limited to the
/// caller's visible `range` (from joining a group to leaving it). Shared by the socket
/// and the HTTP API so both apply the same rules. Returns the page and whether older
/// messages exist.
pub async fn history_page(
    store: &dyn Store,
    id: ConversationId,
    (first, last): (u64, u64),
    before: u64,
    limit: usize,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    let limit = if limit == 0 { DEFAULT_HISTORY_PAGE } else { limit.min(MAX_HISTORY_PAGE) };
    let before = if last == u64::MAX {
        before
    } else if before == 0 {
        last + 1
    } else {
        before.min(last + 1)
    };
    let mut messages = store.messages_before(id, before, limit + 1).await?;
    messages.retain(|m| m.seq >= first);
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    Ok((messages, has_more))
}

async fn history(state: &mut SessionState, req: pb::HistoryRequest) -> Answer {
    let v = view(state, &req.conversation_id).await?;
    let (id, range) = (v.record.conversation_id, v.range);
    let (messages, has_more) = history_page(state.ctx.store.as_ref(), id, range, req.before_seq, req.limit as usize).await?;
    Ok(Some(protocol::server(server_frame::Kind::History(pb::HistoryPage {
        request_id: req.request_id,
        conversation_id: id_bytes(id),
        messages: messages.iter().map(message_frame).collect(),
        has_more,
    }))))
}

async fn presence_query(state: &mut SessionState, req: pb::PresenceQuery) -> Answer {
    if req.user_ids.len() > 256 {
        return Err(Reject::new(ErrorCode::InvalidArgument, "at most 256 users per presence query"));
    }
    let users = req.user_ids.iter().map(|raw| parse_id("user_ids", raw)).collect::<Result<Vec<_>, _>>()?;
    // In a cluster with Redis, its view covers devices on nodes this one may not have
    // heard of yet; this node's own view (local and replicated directory) is always fresh
    // for what it knows. Either saying online is enough.
    let shared = state.ctx.router.cluster_presence(&users).await;
    let shared_at = |i: usize| shared.as_ref().and_then(|s| s.get(i)).copied().unwrap_or((false, None));
    if users.iter().enumerate().any(|(i, u)| !state.ctx.router.is_online(*u) && !shared_at(i).0) {
        // A last-seen time may still be in the writer's queue (the user just left).
        state.ctx.writer.barrier().await;
    }
    for (i, user) in users.into_iter().enumerate() {
        let (shared_online, shared_seen) = shared_at(i);
        let online = state.ctx.router.is_online(user) || shared_online;
        let last_seen_ms = if online {
            now_ms()
        } else {
            let stored = state.ctx.store.last_seen(user).await?.unwrap_or(0);
            stored.max(shared_seen.unwrap_or(0))
        };
        let frame = protocol::server(server_frame::Kind::Presence(pb::Presence {
            user_id: id_bytes(user),
            online,
            last_seen_ms,
            request_id: req.request_id,
        }));
        if push(state, protocol::encode_server(&frame)).await.is_err() {
            return Err(Reject::new(ErrorCode::SlowConsumer, "outbox full"));
        }
    }
    Ok(None)
}

/// Tells the online devices of every 1:1 peer that this user came online or went offline.
fn broadcast_presence(state: &SessionState, online: bool, last_seen_ms: u64) {
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Presence(pb::Presence {
        user_id: id_bytes(state.user),
        online,
        last_seen_ms: if online { now_ms() } else { last_seen_ms },
        request_id: 0,
    })));
    let mut peers: Vec<UserId> = state
        .convs
        .values()
        .filter(|v| v.record.kind == ConversationKind::Direct)
        .flat_map(|v| v.record.members.iter().copied())
        .filter(|m| *m != state.user)
        .collect();
    peers.sort();
    peers.dedup();
    for peer in peers {
        state.ctx.router.deliver_to_user(peer, None, || SessionMsg::Push(frame.clone()));
    }
}

async fn create_group(state: &mut SessionState, req: pb::CreateGroup) -> Answer {
    let subject = req.subject.trim().to_owned();
    if subject.is_empty() || subject.chars().count() > super::group::MAX_SUBJECT {
        return Err(Reject::new(ErrorCode::InvalidArgument, "subject must be 1 to 100 characters"));
    }
    let mut members = vec![state.user];
    for raw in &req.member_user_ids {
        members.push(parse_id("member_user_ids", raw)?);
    }
    members.sort();
    members.dedup();
    if members.len() > state.ctx.limits.max_group_members {
        return Err(Reject::new(ErrorCode::GroupFull, format!("the group is limited to {} members", state.ctx.limits.max_group_members)));
    }
    for member in &members {
        if state.ctx.store.user(*member).await?.is_none() {
            return Err(Reject::new(ErrorCode::UnknownUser, format!("no user {member}")));
        }
    }
    let id = ConversationId::random();
    let record = ConversationRecord {
        conversation_id: id,
        kind: ConversationKind::Group,
        members: members.clone(),
        created_ms: now_ms(),
        group: Some(GroupState { subject, admins: vec![state.user], joined: members.iter().map(|m| (*m, 1)).collect(), ..Default::default() }),
        retention_secs: 0,
    };
    state.ctx.store.create_conversation(record).await?;
    // The creation event (seq 1) is sequenced like every other change; its commit answers.
    route_group(state, id, req.request_id, GroupOp::Created).await
}

async fn group_change(state: &mut SessionState, req: pb::GroupChange) -> Answer {
    use pb::group_change::Change;
    let id = parse_id("conversation_id", &req.conversation_id)?;
    let user = |raw: &[u8]| parse_id("user_id", raw);
    let op = match req.change.ok_or_else(|| Reject::new(ErrorCode::InvalidArgument, "no change given"))? {
        Change::AddMembers(list) => {
            let mut users = Vec::with_capacity(list.user_ids.len());
            for raw in &list.user_ids {
                let u = user(raw)?;
                if state.ctx.store.user(u).await?.is_none() {
                    return Err(Reject::new(ErrorCode::UnknownUser, format!("no user {u}")));
                }
                users.push(u);
            }
            GroupOp::Add(users)
        }
        Change::RemoveMember(raw) => GroupOp::Remove(user(&raw)?),
        Change::Leave(_) => GroupOp::Leave,
        Change::Promote(raw) => GroupOp::Promote(user(&raw)?),
        Change::Demote(raw) => GroupOp::Demote(user(&raw)?),
        Change::SetSubject(s) => GroupOp::Subject(s),
        Change::SetDescription(d) => GroupOp::Description(d),
        Change::SetAdminsOnlySend(on) => GroupOp::AdminsOnlySend(on),
        Change::SetAdminsOnlyInfo(on) => GroupOp::AdminsOnlyInfo(on),
        Change::CreateInvite(_) => GroupOp::CreateInvite,
        Change::RevokeInvite(_) => GroupOp::RevokeInvite,
    };
    route_group(state, id, req.request_id, op).await
}

async fn join_group(state: &mut SessionState, req: pb::JoinGroup) -> Answer {
    let hash = crate::accounts::hash_secret(&req.invite_token);
    let id = state.ctx.store.conversation_by_invite(hash).await?.ok_or_else(|| Reject::new(ErrorCode::InvalidInvite, "invalid or revoked invite"))?;
    route_group(state, id, req.request_id, GroupOp::JoinByInvite(hash)).await
}

/// Delete for everyone or a retention change, sequenced by the conversation.
async fn edit(state: &mut SessionState, raw_id: &[u8], request_id: u64, op: ConversationOp) -> Answer {
    let id = member_view(state, raw_id).await?.record.conversation_id;
    let request = EditRequest { user: state.user, device: state.device, request_id, op };
    route(state, id, ConversationMsg::Edit(Box::new(request))).await
}

/// Hands a request to a conversation's sequencer, which answers the device itself; only a
/// routing failure is answered here.
async fn route(state: &SessionState, id: ConversationId, message: ConversationMsg) -> Answer {
    match state.ctx.router.send_to_conversation(id, message).await {
        Ok(()) => Ok(None),
        Err(RouteError::UnknownConversation) => Err(Reject::new(ErrorCode::UnknownConversation, "no conversation has this id")),
        Err(RouteError::Overloaded) => Err(Reject::new(ErrorCode::Unavailable, "conversation overloaded; retry")),
        Err(RouteError::Unavailable(e)) => {
            tracing::warn!(conversation = %id, error = %e, "conversation unavailable");
            Err(Reject::new(ErrorCode::Unavailable, "conversation unavailable; retry"))
        }
    }
}

/// Hands a change to the group's sequencer; its answer (GroupAnswer or Error) comes from
/// there once the event is stored.
async fn route_group(state: &mut SessionState, id: ConversationId, request_id: u64, op: GroupOp) -> Answer {
    let request = GroupRequest { user: state.user, device: state.device, request_id, op };
    route(state, id, ConversationMsg::Group(Box::new(request))).await
}

/// Per-member delivered/read times of one of the caller's own group messages.
async fn message_info(state: &mut SessionState, req: pb::MessageInfo) -> Answer {
    let user = state.user;
    let v = member_view(state, &req.conversation_id).await?;
    let (id, members) = (v.record.conversation_id, v.record.members.clone());
    if req.seq == 0 || !v.visible(req.seq) {
        return Err(Reject::new(ErrorCode::InvalidArgument, "no such message"));
    }
    let message = state.ctx.store.messages_after(id, req.seq - 1, 1).await?.into_iter().find(|m| m.seq == req.seq);
    match message {
        Some(m) if m.sender_user_id == user => {}
        Some(_) => return Err(Reject::new(ErrorCode::NotAdmin, "message info is for the sender only")),
        None => return Err(Reject::new(ErrorCode::InvalidArgument, "no such message")),
    }
    let mut entries = Vec::with_capacity(members.len());
    for member in members.into_iter().filter(|m| *m != user) {
        let (delivered, read) = state.ctx.store.receipt_times(id, member, req.seq).await?;
        entries.push(pb::MemberReceipt { user_id: id_bytes(member), delivered_at_ms: delivered.unwrap_or(0), read_at_ms: read.unwrap_or(0) });
    }
    Ok(Some(protocol::server(server_frame::Kind::MessageInfo(pb::MessageInfoAnswer {
        request_id: req.request_id,
        conversation_id: id_bytes(id),
        seq: req.seq,
        members: entries,
    }))))
}

/// The current state of a group the caller is a member of, read from the store.
async fn group_info(state: &mut SessionState, req: pb::GroupInfoRequest) -> Answer {
    let id = member_view(state, &req.conversation_id).await?.record.conversation_id;
    let record = state.ctx.store.conversation(id).await?.ok_or_else(|| Reject::new(ErrorCode::UnknownConversation, "no conversation has this id"))?;
    let group = record.group.as_ref().ok_or_else(|| Reject::new(ErrorCode::InvalidArgument, "not a group"))?;
    let last_seq = state.ctx.store.last_seq(id).await?;
    Ok(Some(protocol::server(server_frame::Kind::GroupInfo(pb::GroupInfo {
        request_id: req.request_id,
        conversation_id: id_bytes(id),
        subject: group.subject.clone(),
        description: group.description.clone(),
        member_user_ids: record.members.iter().map(|u| id_bytes(*u)).collect(),
        admin_user_ids: group.admins.iter().map(|u| id_bytes(*u)).collect(),
        admins_only_send: group.admins_only_send,
        admins_only_info: group.admins_only_info,
        retention_secs: record.retention_secs,
        invite_active: group.invite_hash.is_some(),
        last_seq,
    }))))
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for SessionMsg {}
