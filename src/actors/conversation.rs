//! The conversation actor: the single sequencer of one conversation's log, and its fan-out.
//!
//! A send is given the next seq, handed to the store writer, and only when the store has
//! committed it is the sender acknowledged and the message delivered to every other
//! connected device of every member. Sends are pipelined: the actor keeps sequencing
//! while earlier messages are being committed, and the store refuses an append whose
//! predecessor is missing, so a failed write can never leave a gap behind a later one:
//! on any failed or unexpected outcome the actor answers every pending sender with
//! UNAVAILABLE (nothing was acknowledged) and fails; its supervisor restarts it from the
//! store. Receipts and typing indicators are relayed, never sequenced.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::NodeContext;
use super::group::{self, GroupError, GroupOp};
use super::mailbox::MailboxGauge;
use super::session::{Delivery, SessionMsg};
use crate::protocol::{self, ErrorCode, id_bytes, pb, server_frame};
use crate::store::{
    ContentKind, ConversationId, ConversationRecord, DeviceId, MemberCursor, StoreError, StoredMessage, UserId, WriteOp, WriteOutcome, now_ms,
};

/// Messages of a conversation actor. Large variants are boxed so the channel slots (one
/// per queued message) stay small.
pub enum ConversationMsg {
    /// A device sends a message.
    Send(Box<SendRequest>),
    /// A device's delivered or read cursor moved: relay a receipt.
    CursorMoved {
        /// Whose cursor.
        user: UserId,
        /// Which device.
        device: DeviceId,
        /// Delivered or read.
        kind: pb::ReceiptKind,
        /// New position.
        seq: u64,
    },
    /// A group change (or the creation event of a new group).
    Group(Box<GroupRequest>),
    /// Delete for everyone, or a retention change (1:1 and groups).
    Edit(Box<EditRequest>),
    /// Fault injection for SREs and tests: the actor panics (and is restarted).
    Crash,
    /// Answers once everything queued before it has been handled (shutdown uses it so that
    /// committed sends are acknowledged before sessions close).
    Sync(ractor::RpcReplyPort<()>),
    /// Internal: the store answered for one of our appends.
    Persisted(u64, Result<WriteOutcome, StoreError>),
    /// Internal: idle check.
    Tick,
    /// Internal: send the coalesced group receipt counts that changed.
    FlushReceipts,
    /// The conversation's owner is now another node (membership changed, or this node is
    /// draining). Sent by the router after it closed the mailbox, so it queues behind every
    /// request already accepted: those are sequenced here, their commits acknowledged, and
    /// then the actor stops. The new owner reactivates from the store.
    Handoff,
}

/// One send, as received from a session.
pub struct SendRequest {
    /// Sending user.
    pub user: UserId,
    /// Sending device.
    pub device: DeviceId,
    /// Idempotency key.
    pub client_msg_id: String,
    /// Opaque content.
    pub payload: Bytes,
    /// Ordinary, edit or reaction.
    pub kind: ContentKind,
    /// Target of an edit or reaction.
    pub reference_seq: u64,
    /// Media the message declares (checked by `media::attachments::declared`).
    pub attachments: Vec<crate::ids::MediaId>,
}

/// A conversation-level change that is not about membership.
#[derive(Debug, Clone, Copy)]
pub enum ConversationOp {
    /// Delete the message at this seq for everyone.
    Delete(u64),
    /// Disappearing messages after this many seconds (0 = off).
    Retention(u32),
}

/// One conversation-level change, as received from a session.
pub struct EditRequest {
    /// Who asks.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Echoed in the answer.
    pub request_id: u64,
    /// What to change.
    pub op: ConversationOp,
}

/// Longest retention: one year.
pub const MAX_RETENTION_SECS: u32 = 365 * 24 * 3600;

/// One group change, as received from a session.
pub struct GroupRequest {
    /// Who asks.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Echoed in the answer.
    pub request_id: u64,
    /// What to change.
    pub op: GroupOp,
}

/// The sequencer actor.
pub struct Conversation;

/// Activation arguments.
pub struct ConversationArgs {
    /// Which conversation.
    pub id: ConversationId,
    /// Node services.
    pub ctx: NodeContext,
    /// An earlier activation failed: its appends may still be queued at the writer.
    pub after_failure: bool,
}

struct Pending {
    message: StoredMessage,
    /// Devices that sent the same client_msg_id while the first copy was being committed.
    extra_waiters: Vec<(UserId, DeviceId)>,
    /// Members when it was sequenced: they, and only they, get it live.
    recipients: Arc<Vec<UserId>>,
    /// Set for group events.
    event: Option<EventInfo>,
}

/// What a group event's commit must answer.
struct EventInfo {
    request_id: u64,
    invite_token: Option<String>,
}

/// Idempotency keys remembered per active conversation (older retries ask the store).
const RECENT_IDS: usize = 256;

/// A bounded memory of recent idempotency keys, so a retry rarely needs a store read.
struct RecentIds {
    map: HashMap<(UserId, String), (u64, u64)>,
    order: VecDeque<(UserId, String)>,
    capacity: usize,
}

impl RecentIds {
    fn insert(&mut self, key: (UserId, String), value: (u64, u64)) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

/// State of one activation.
pub struct ConversationState {
    ctx: NodeContext,
    record: ConversationRecord,
    next_seq: u64,
    last_time_ms: u64,
    pending: HashMap<u64, Pending>,
    pending_ids: HashMap<(UserId, String), u64>,
    recent: RecentIds,
    /// Current members, shared with pending messages as their recipient snapshot.
    members: Arc<Vec<UserId>>,
    /// Groups: each member's furthest delivered/read position (any device).
    member_cursors: HashMap<UserId, MemberCursor>,
    /// Groups: each sender's latest message, and the counts last reported for it.
    latest_by_sender: HashMap<UserId, (u64, u32, u32)>,
    /// A receipt flush is scheduled.
    receipts_dirty: bool,
    last_activity: Instant,
    gauge: Arc<MailboxGauge>,
    /// A handoff was asked: stop as soon as nothing is pending.
    handing_off: bool,
}

impl ConversationState {
    /// The mailbox others use to reach this activation.
    pub fn gauge(&self) -> &Arc<MailboxGauge> {
        &self.gauge
    }
}

/// Error returned by `pre_start` when the conversation does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown conversation {0}")]
pub struct UnknownConversation(pub ConversationId);

impl Actor for Conversation {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        let ConversationArgs { id, ctx, after_failure } = args;
        if after_failure {
            // Appends of the failed activation may still be queued at the writer: wait for
            // them so the seq we resume from is the real last one. (A passivated activation
            // stops only with nothing pending, so a plain reactivation needs no barrier.)
            ctx.writer.barrier().await;
        }
        let record = ctx.store.conversation(id).await?.ok_or(UnknownConversation(id))?;
        let last_seq = ctx.store.last_seq(id).await?;
        let last_time_ms =
            if last_seq > 0 { ctx.store.messages_after(id, last_seq - 1, 1).await?.first().map(|m| m.server_time_ms).unwrap_or(0) } else { 0 };
        let label = tree_label(&record);
        let member_cursors = if record.group.is_some() { ctx.store.member_cursors(id).await?.into_iter().collect() } else { HashMap::new() };
        let gauge = ctx.stats.register(myself.get_id(), label, ctx.limits.conversation_mailbox);
        let idle = ctx.limits.conversation_idle;
        schedule_tick(&myself, idle);
        tracing::debug!(conversation = %id, last_seq, "conversation activated");
        metrics::gauge!("switchboard_conversations_active").increment(1.0);
        Ok(ConversationState {
            ctx,
            members: Arc::new(record.members.clone()),
            member_cursors,
            latest_by_sender: HashMap::new(),
            receipts_dirty: false,
            record,
            next_seq: last_seq + 1,
            last_time_ms,
            pending: HashMap::new(),
            pending_ids: HashMap::new(),
            recent: RecentIds { map: HashMap::new(), order: VecDeque::new(), capacity: RECENT_IDS },
            last_activity: Instant::now(),
            gauge,
            handing_off: false,
        })
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.close();
        state.ctx.stats.deregister(myself.get_id());
        state.ctx.router.forget_conversation(state.record.conversation_id, myself.get_id());
        metrics::gauge!("switchboard_conversations_active").decrement(1.0);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationMsg::Send(request) => {
                state.gauge.taken();
                state.last_activity = Instant::now();
                handle_send(&myself, state, *request).await?;
            }
            ConversationMsg::Group(request) => {
                state.gauge.taken();
                state.last_activity = Instant::now();
                handle_group(&myself, state, *request);
            }
            ConversationMsg::Edit(request) => {
                state.gauge.taken();
                state.last_activity = Instant::now();
                handle_edit(&myself, state, *request).await;
            }
            ConversationMsg::CursorMoved { user, device, kind, seq } => {
                state.gauge.taken();
                if state.record.group.is_some() {
                    group_cursor_moved(&myself, state, user, device, kind, seq);
                } else {
                    relay_receipt(state, user, device, kind, seq, None);
                }
            }
            ConversationMsg::FlushReceipts => flush_receipts(state),
            ConversationMsg::Crash => {
                // Sent uncounted by the admin API, so no `taken()` here.
                panic!("crash requested for conversation {}", state.record.conversation_id);
            }
            ConversationMsg::Persisted(seq, outcome) => {
                handle_persisted(state, seq, outcome)?;
                finish_handoff(&myself, state);
            }
            ConversationMsg::Handoff => {
                state.gauge.close();
                if !state.handing_off {
                    tracing::debug!(conversation = %state.record.conversation_id, pending = state.pending.len(), "conversation handing off");
                }
                state.handing_off = true;
                if state.gauge.depth() > 0 {
                    // A sender passed the mailbox's closed check just before the close
                    // and its request is queued behind this Handoff: look again after it.
                    let _ = myself.cast(ConversationMsg::Handoff);
                } else {
                    finish_handoff(&myself, state);
                }
            }
            ConversationMsg::Sync(reply) => {
                let _ = reply.send(());
            }
            ConversationMsg::Tick => {
                let idle = state.ctx.limits.conversation_idle;
                if state.pending.is_empty() && state.last_activity.elapsed() >= idle && state.gauge.try_close_idle() {
                    tracing::debug!(conversation = %state.record.conversation_id, "conversation passivated");
                    myself.stop(Some("idle".into()));
                } else {
                    schedule_tick(&myself, idle);
                }
            }
        }
        Ok(())
    }
}

/// Stops a handing-off conversation once nothing it accepted is left: no append waiting
/// for the store, no request in its mailbox.
fn finish_handoff(myself: &ActorRef<ConversationMsg>, state: &ConversationState) {
    if state.handing_off && state.pending.is_empty() && state.gauge.depth() == 0 {
        myself.stop(Some("handoff".into()));
    }
}

/// How the admin tree names a conversation actor: groups with their member count.
fn tree_label(record: &ConversationRecord) -> String {
    match &record.group {
        Some(_) => format!("group {} members={}", record.conversation_id, record.members.len()),
        None => format!("conversation {}", record.conversation_id),
    }
}

fn schedule_tick(myself: &ActorRef<ConversationMsg>, idle: Duration) {
    // Tick at a fraction of the idle time so passivation happens within 1.5 × idle.
    myself.send_after(idle / 2, || ConversationMsg::Tick);
}

async fn handle_send(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState, request: SendRequest) -> Result<(), ActorProcessingErr> {
    let SendRequest { user, device, client_msg_id, payload, kind, reference_seq, attachments } = request;
    if kind != ContentKind::Normal && (reference_seq == 0 || reference_seq >= state.next_seq) {
        reply_error(state, user, device, ErrorCode::InvalidArgument, "reference_seq must name an earlier message", &client_msg_id);
        return Ok(());
    }
    if kind == ContentKind::Edit && !edits_own_message(state, user, reference_seq).await {
        reply_error(state, user, device, ErrorCode::InvalidArgument, "only the sender of a message may edit it", &client_msg_id);
        return Ok(());
    }
    if !state.record.is_member(user) {
        reply_error(state, user, device, ErrorCode::NotAMember, "not a member of this conversation", &client_msg_id);
        return Ok(());
    }
    if state.record.group.as_ref().is_some_and(|g| g.admins_only_send) && !state.record.is_admin(user) {
        reply_error(state, user, device, ErrorCode::SendRestricted, "only admins may send in this group", &client_msg_id);
        return Ok(());
    }
    let key = (user, client_msg_id);
    if let Some(&(seq, time)) = state.recent.map.get(&key) {
        send_ack(state, user, device, &key.1, seq, time, true);
        return Ok(());
    }
    if let Some(seq) = state.pending_ids.get(&key) {
        if let Some(p) = state.pending.get_mut(seq) {
            p.extra_waiters.push((user, device));
        }
        return Ok(());
    }
    let id = state.record.conversation_id;
    match state.ctx.store.find_by_client_id(id, user, &key.1).await {
        Ok(Some((seq, time))) => {
            send_ack(state, user, device, &key.1, seq, time, true);
            state.recent.insert(key, (seq, time));
            return Ok(());
        }
        Ok(None) => {}
        Err(e) => {
            // Nothing was sequenced: refuse this one send, keep the conversation running.
            tracing::warn!(conversation = %id, error = %e, "dedup lookup failed");
            reply_error(state, user, device, ErrorCode::Unavailable, "message not stored; retry", &key.1);
            return Ok(());
        }
    }
    let (seq, time) = next_position(state);
    let message = StoredMessage {
        conversation_id: id,
        seq,
        sender_user_id: user,
        sender_device_id: device,
        client_msg_id: key.1.clone(),
        server_time_ms: time,
        payload,
        event: None,
        kind,
        reference_seq,
        deleted: false,
        attachments,
    };
    state.pending_ids.insert(key, seq);
    let recipients = state.members.clone();
    state.pending.insert(seq, Pending { message: message.clone(), extra_waiters: Vec::new(), recipients, event: None });
    persist(myself, state, seq, WriteOp::Append(message));
    Ok(())
}

/// True if the message at `target` exists, is an ordinary message and was sent by `user`.
async fn edits_own_message(state: &ConversationState, user: UserId, target: u64) -> bool {
    if let Some(p) = state.pending.get(&target) {
        return p.message.sender_user_id == user && p.event.is_none();
    }
    match state.ctx.store.messages_after(state.record.conversation_id, target - 1, 1).await {
        Ok(found) => found.first().is_some_and(|m| m.seq == target && m.sender_user_id == user && m.event.is_none() && !m.deleted),
        Err(e) => {
            tracing::warn!(error = %e, "edit target lookup failed");
            false
        }
    }
}

/// The next seq and its time. Times never go backwards within a conversation, even if
/// the wall clock does.
fn next_position(state: &mut ConversationState) -> (u64, u64) {
    let seq = state.next_seq;
    state.next_seq += 1;
    let time = now_ms().max(state.last_time_ms);
    state.last_time_ms = time;
    (seq, time)
}

fn persist(myself: &ActorRef<ConversationMsg>, state: &ConversationState, seq: u64, op: WriteOp) {
    let me = myself.clone();
    state.ctx.writer.write(
        op,
        Box::new(move |outcome| {
            // If we are gone (restarted), the sender gets no ack and retries; the store's
            // dedup key then answers with the original seq.
            let _ = me.cast(ConversationMsg::Persisted(seq, outcome));
        }),
    );
}

/// Sequences a group change: the rules decide, the record changes at once (later sends are
/// judged against it, in log order), and the event is appended with the new record.
fn handle_group(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState, request: GroupRequest) {
    let GroupRequest { user, device, request_id, op } = request;
    let applied = match group::apply(&state.record, user, op, state.next_seq, state.ctx.limits.max_group_members) {
        Ok(applied) => applied,
        Err(e) => {
            let code = match e {
                GroupError::NotAGroup | GroupError::Invalid(_) => ErrorCode::InvalidArgument,
                GroupError::NotAMember(_) => ErrorCode::NotAMember,
                GroupError::NotAdmin => ErrorCode::NotAdmin,
                GroupError::Full(_) => ErrorCode::GroupFull,
                GroupError::InvalidInvite => ErrorCode::InvalidInvite,
            };
            reply_error(state, user, device, code, &e.to_string(), &request_id.to_string());
            return;
        }
    };
    let mut recipients: Vec<UserId> = applied.record.members.clone();
    recipients.extend(applied.removed.iter().copied());
    let event = Event { request_id, invite_token: applied.invite_token, joined: applied.joined, tombstone: None };
    sequence_event(myself, state, user, device, applied.event, applied.record, recipients, event);
}

/// What an event's sequencing needs besides the event itself.
struct Event {
    request_id: u64,
    invite_token: Option<String>,
    joined: Vec<UserId>,
    tombstone: Option<u64>,
}

/// Appends a server event with the conversation's new record. The record changes at once
/// (later requests are judged against it, in log order); `recipients` get the event live.
#[allow(clippy::too_many_arguments)]
fn sequence_event(
    myself: &ActorRef<ConversationMsg>,
    state: &mut ConversationState,
    user: UserId,
    device: DeviceId,
    event: pb::ConversationEvent,
    record: ConversationRecord,
    recipients: Vec<UserId>,
    info: Event,
) {
    let (seq, time) = next_position(state);
    let message = StoredMessage {
        conversation_id: state.record.conversation_id,
        seq,
        sender_user_id: user,
        sender_device_id: device,
        client_msg_id: format!("event-{seq}"),
        server_time_ms: time,
        payload: Bytes::new(),
        event: Some(group::encode_event(&event)),
        kind: ContentKind::Normal,
        reference_seq: 0,
        deleted: false,
        attachments: Vec::new(),
    };
    state.members = Arc::new(record.members.clone());
    state.gauge.set_label(tree_label(&record));
    state.record = record.clone();
    state.pending.insert(
        seq,
        Pending {
            message: message.clone(),
            extra_waiters: Vec::new(),
            recipients: Arc::new(recipients),
            event: Some(EventInfo { request_id: info.request_id, invite_token: info.invite_token }),
        },
    );
    let op = WriteOp::AppendEvent { message, record: Box::new(record), joined: info.joined, tombstone: info.tombstone };
    persist(myself, state, seq, op);
}

/// Delete for everyone and retention changes.
async fn handle_edit(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState, request: EditRequest) {
    let EditRequest { user, device, request_id, op } = request;
    let rid = request_id.to_string();
    if !state.record.is_member(user) {
        return reply_error(state, user, device, ErrorCode::NotAMember, "not a member of this conversation", &rid);
    }
    let is_admin = state.record.is_admin(user);
    match op {
        ConversationOp::Delete(target) => {
            if target == 0 || target >= state.next_seq || state.pending.contains_key(&target) {
                return reply_error(state, user, device, ErrorCode::InvalidArgument, "no such message (yet)", &rid);
            }
            let found = match state.ctx.store.messages_after(state.record.conversation_id, target - 1, 1).await {
                Ok(found) => found.into_iter().next().filter(|m| m.seq == target),
                Err(e) => {
                    tracing::warn!(error = %e, "delete lookup failed");
                    return reply_error(state, user, device, ErrorCode::Unavailable, "store unavailable; retry", &rid);
                }
            };
            let Some(target_message) = found else {
                return reply_error(state, user, device, ErrorCode::InvalidArgument, "no such message (expired?)", &rid);
            };
            if target_message.event.is_some() || target_message.deleted {
                return reply_error(state, user, device, ErrorCode::InvalidArgument, "that message cannot be deleted", &rid);
            }
            if target_message.sender_user_id != user && !is_admin {
                return reply_error(state, user, device, ErrorCode::NotAdmin, "only the sender or a group admin may delete it", &rid);
            }
            let event = pb::ConversationEvent { kind: Some(pb::conversation_event::Kind::MessageDeleted(target)) };
            let record = state.record.clone();
            let recipients = record.members.clone();
            let info = Event { request_id, invite_token: None, joined: Vec::new(), tombstone: Some(target) };
            sequence_event(myself, state, user, device, event, record, recipients, info);
        }
        ConversationOp::Retention(seconds) => {
            if seconds > MAX_RETENTION_SECS {
                return reply_error(state, user, device, ErrorCode::InvalidArgument, "retention is at most one year", &rid);
            }
            if state.record.group.as_ref().is_some_and(|g| g.admins_only_info) && !is_admin {
                return reply_error(state, user, device, ErrorCode::NotAdmin, "only group admins may change this", &rid);
            }
            let mut record = state.record.clone();
            record.retention_secs = seconds;
            let event = pb::ConversationEvent { kind: Some(pb::conversation_event::Kind::RetentionChanged(seconds)) };
            let recipients = record.members.clone();
            let info = Event { request_id, invite_token: None, joined: Vec::new(), tombstone: None };
            sequence_event(myself, state, user, device, event, record, recipients, info);
        }
    }
}

fn handle_persisted(state: &mut ConversationState, seq: u64, outcome: Result<WriteOutcome, StoreError>) -> Result<(), ActorProcessingErr> {
    let Some(pending) = state.pending.remove(&seq) else { return Ok(()) };
    let m = pending.message;
    state.pending_ids.remove(&(m.sender_user_id, m.client_msg_id.clone()));
    if let Some(event) = &pending.event {
        return match outcome {
            Ok(WriteOutcome::Appended) => {
                let answer = protocol::server(server_frame::Kind::GroupAnswer(pb::GroupAnswer {
                    request_id: event.request_id,
                    conversation_id: id_bytes(m.conversation_id),
                    seq: m.seq,
                    invite_token: event.invite_token.clone().unwrap_or_default(),
                }));
                state.ctx.router.deliver_to_device(m.sender_user_id, m.sender_device_id, SessionMsg::Push(protocol::encode_server(&answer)));
                fan_out(state, &m, &pending.recipients, None);
                Ok(())
            }
            other => {
                reply_error(
                    state,
                    m.sender_user_id,
                    m.sender_device_id,
                    ErrorCode::Unavailable,
                    "change not stored; retry",
                    &event.request_id.to_string(),
                );
                fail_pending(state);
                Err(format!("group event at seq {seq} not stored: {other:?}").into())
            }
        };
    }
    match outcome {
        Ok(WriteOutcome::Appended) => {
            metrics::counter!("switchboard_messages_stored_total").increment(1);
            send_ack(state, m.sender_user_id, m.sender_device_id, &m.client_msg_id, m.seq, m.server_time_ms, false);
            for (u, d) in &pending.extra_waiters {
                send_ack(state, *u, *d, &m.client_msg_id, m.seq, m.server_time_ms, true);
            }
            state.recent.insert((m.sender_user_id, m.client_msg_id.clone()), (m.seq, m.server_time_ms));
            fan_out(state, &m, &pending.recipients, Some(m.sender_device_id));
            if state.record.group.is_some() {
                state.latest_by_sender.insert(m.sender_user_id, (m.seq, 0, 0));
            }
            let stored =
                super::push::PushMsg::Stored { conversation_id: m.conversation_id, sender: m.sender_user_id, members: pending.recipients.clone() };
            if state.ctx.push.send(stored).is_err() {
                metrics::counter!("switchboard_push_dropped_total").increment(1);
            }
            Ok(())
        }
        Ok(WriteOutcome::Duplicate { seq: original, server_time_ms }) => {
            // Stored by an earlier activation whose ack was lost: answer with the original,
            // then resynchronise, since our seq is now unused.
            send_ack(state, m.sender_user_id, m.sender_device_id, &m.client_msg_id, original, server_time_ms, true);
            fail_pending(state);
            Err(format!("sequence desync at seq {seq}: duplicate of {original}").into())
        }
        Ok(other) => {
            reply_error(state, m.sender_user_id, m.sender_device_id, ErrorCode::Unavailable, "message not stored; retry", &m.client_msg_id);
            fail_pending(state);
            Err(format!("sequence desync at seq {seq}: {other:?}").into())
        }
        Err(e) => {
            reply_error(state, m.sender_user_id, m.sender_device_id, ErrorCode::Unavailable, "message not stored; retry", &m.client_msg_id);
            for (u, d) in &pending.extra_waiters {
                reply_error(state, *u, *d, ErrorCode::Unavailable, "message not stored; retry", &m.client_msg_id);
            }
            fail_pending(state);
            Err(format!("store write failed at seq {seq}: {e}").into())
        }
    }
}

/// Answers every send still waiting with UNAVAILABLE: none of them was acknowledged, and the
/// store will refuse them (their predecessor is missing), so the client's retry is safe.
fn fail_pending(state: &mut ConversationState) {
    let pending: Vec<Pending> = state.pending.drain().map(|(_, p)| p).collect();
    state.pending_ids.clear();
    for p in pending {
        let m = &p.message;
        reply_error(state, m.sender_user_id, m.sender_device_id, ErrorCode::Unavailable, "message not stored; retry", &m.client_msg_id);
        for (u, d) in &p.extra_waiters {
            reply_error(state, *u, *d, ErrorCode::Unavailable, "message not stored; retry", &m.client_msg_id);
        }
    }
}

/// Delivers to every connected device of `recipients` except `except` (the sending device
/// has its ack; events go to every device, the acting one included).
fn fan_out(state: &ConversationState, m: &StoredMessage, recipients: &[UserId], except: Option<DeviceId>) {
    // Encoded once; every device gets the same bytes.
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Message(message_frame(m))));
    let delivery =
        Arc::new(Delivery { conversation_id: m.conversation_id, seq: m.seq, sender_device: m.sender_device_id, is_event: m.event.is_some(), frame });
    state.ctx.router.deliver_to_users(recipients, except, || SessionMsg::Deliver(delivery.clone()));
    metrics::counter!("switchboard_messages_out_total").increment(recipients.len() as u64);
}

/// The wire form of a stored message.
pub fn message_frame(m: &StoredMessage) -> pb::Message {
    pb::Message {
        conversation_id: id_bytes(m.conversation_id),
        seq: m.seq,
        sender_user_id: id_bytes(m.sender_user_id),
        sender_device_id: id_bytes(m.sender_device_id),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms: m.server_time_ms,
        payload: m.payload.clone(),
        event: m.event.as_ref().and_then(|bytes| {
            use prost::Message as _;
            pb::ConversationEvent::decode(bytes.as_ref()).ok()
        }),
        kind: match m.kind {
            ContentKind::Normal => pb::MessageKind::Normal,
            ContentKind::Edit => pb::MessageKind::Edit,
            ContentKind::Reaction => pb::MessageKind::Reaction,
        } as i32,
        reference_seq: m.reference_seq,
        deleted: m.deleted,
    }
}

#[allow(clippy::too_many_arguments)]
fn send_ack(state: &ConversationState, user: UserId, device: DeviceId, client_msg_id: &str, seq: u64, time: u64, duplicate: bool) {
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::SendAck(pb::SendAck {
        client_msg_id: client_msg_id.to_owned(),
        conversation_id: id_bytes(state.record.conversation_id),
        seq,
        server_time_ms: time,
        duplicate,
    })));
    state.ctx.router.deliver_to_device(user, device, SessionMsg::Acked { conversation_id: state.record.conversation_id, seq, frame });
}

fn reply_error(state: &ConversationState, user: UserId, device: DeviceId, code: ErrorCode, message: &str, request_ref: &str) {
    let frame = protocol::encode_server(&protocol::error_frame(code, message, request_ref, false));
    state.ctx.router.deliver_to_device(user, device, SessionMsg::Push(frame));
}

/// How often, at most, a group's changed receipt counts are sent to senders.
const RECEIPT_FLUSH: Duration = Duration::from_millis(250);

/// A group member's device moved its cursor: the member's own other devices get the
/// receipt (read state syncs across devices); senders get coalesced counts instead of one
/// frame per member and device, which in a 1024-member group would be a storm.
fn group_cursor_moved(
    myself: &ActorRef<ConversationMsg>,
    state: &mut ConversationState,
    user: UserId,
    device: DeviceId,
    kind: pb::ReceiptKind,
    seq: u64,
) {
    relay_receipt(state, user, device, kind, seq, Some(user));
    let cursor = state.member_cursors.entry(user).or_default();
    match kind {
        pb::ReceiptKind::Read => {
            cursor.read = cursor.read.max(seq);
            cursor.delivered = cursor.delivered.max(seq);
        }
        _ => cursor.delivered = cursor.delivered.max(seq),
    }
    if !state.receipts_dirty {
        state.receipts_dirty = true;
        myself.send_after(RECEIPT_FLUSH, || ConversationMsg::FlushReceipts);
    }
}

fn flush_receipts(state: &mut ConversationState) {
    state.receipts_dirty = false;
    let members = state.members.clone();
    let mut updates = Vec::new();
    for (sender, (seq, last_delivered, last_read)) in state.latest_by_sender.iter_mut() {
        let (mut delivered, mut read) = (0u32, 0u32);
        for member in members.iter().filter(|m| *m != sender) {
            if let Some(c) = state.member_cursors.get(member) {
                delivered += u32::from(c.delivered >= *seq);
                read += u32::from(c.read >= *seq);
            }
        }
        if (delivered, read) != (*last_delivered, *last_read) {
            *last_delivered = delivered;
            *last_read = read;
            updates.push((*sender, *seq, delivered, read));
        }
    }
    let others = members.len().saturating_sub(1) as u32;
    for (sender, seq, delivered, read) in updates {
        let frame = protocol::encode_server(&protocol::server(server_frame::Kind::ReceiptSummary(pb::ReceiptSummary {
            conversation_id: id_bytes(state.record.conversation_id),
            seq,
            delivered,
            read,
            members: others,
        })));
        state.ctx.router.deliver_to_user(sender, None, || SessionMsg::Push(frame.clone()));
    }
}

/// Relays a device's receipt to every member's devices (1:1), or only to `only`'s (groups).
fn relay_receipt(state: &ConversationState, user: UserId, device: DeviceId, kind: pb::ReceiptKind, seq: u64, only: Option<UserId>) {
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Receipt(pb::Receipt {
        conversation_id: id_bytes(state.record.conversation_id),
        user_id: id_bytes(user),
        device_id: id_bytes(device),
        kind: kind as i32,
        up_to_seq: seq,
        server_time_ms: now_ms(),
    })));
    for member in state.members.iter().filter(|m| only.is_none_or(|o| o == **m)) {
        state.ctx.router.deliver_to_user(*member, Some(device), || SessionMsg::Push(frame.clone()));
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for ConversationMsg {}
