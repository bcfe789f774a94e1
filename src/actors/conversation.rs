//! The conversation actor: the shell around one conversation's [`Sequencer`].
//!
//! It feeds the sequencer what arrives (sends, changes, cursor moves, store outcomes,
//! timers) with the current time, and carries its actions out: units of ops to the store
//! writer, SendAcks and deliveries to sessions through the router (one shared batch per
//! commit, encoded once), receipts, push notifications, target reads. Everything
//! sequenced in one wake-up goes to the writer as one unit: the shell flushes when its
//! mailbox is empty, so a burst of sends from many sessions becomes one batch.
//!
//! The decisions (seqs, idempotency, rules, what a failure means) are the sequencer's;
//! this file only does I/O. On [`Action::Fail`] the actor fails and its supervisor
//! restarts it from the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::NodeContext;
use super::mailbox::{Label, MailboxGauge};
use super::messages::{
    ConversationBatch, ConversationControl, ConversationInternal, ConversationMsg, ConversationRequest, Delivery, DeviceFrame, SessionRequest,
};
use super::push::PushRequest;
use crate::cores::sequencer::{Ack, Action, CommittedMessage, Sequencer, SequencerLimits, TargetInfo};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{self, id_bytes, pb, server_frame};
use crate::store::{ContentKind, ConversationRecord, StoreError, StoredMessage, now_ms};

/// The conversation actor.
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

/// Why an activation did not start (returned by `pre_start`; the supervisor tells them
/// apart by type, never by text).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// No conversation has this id.
    #[error("unknown conversation {0}")]
    Unknown(ConversationId),
    /// The store did not answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Stored messages read at activation: the sequencer's window of recent ids and targets.
const ACTIVATION_TAIL: usize = 32;

/// How often, at most, a group's changed receipt counts are sent to senders.
const RECEIPT_FLUSH: Duration = Duration::from_millis(250);

/// State of one activation.
pub struct ConversationState {
    ctx: NodeContext,
    id: ConversationId,
    core: Sequencer,
    gauge: Arc<MailboxGauge>,
    last_activity: Instant,
    members_in_label: usize,
    /// Reused between wake-ups.
    actions: Vec<Action>,
}

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
        let record = ctx.store.conversation(id).await.map_err(ActivationError::from)?.ok_or(ActivationError::Unknown(id))?;
        let last_seq = ctx.store.last_seq(id).await.map_err(ActivationError::from)?;
        let tail = if last_seq > 0 { ctx.store.messages_before(id, 0, ACTIVATION_TAIL).await.map_err(ActivationError::from)? } else { Vec::new() };
        let complete = tail.len() < ACTIVATION_TAIL;
        let cursors = if record.group.is_some() { ctx.store.member_cursors(id).await.map_err(ActivationError::from)? } else { Vec::new() };
        let limits = SequencerLimits {
            max_group_members: ctx.limits.max_group_members,
            max_batch: ctx.limits.max_write_batch,
            recent_messages: ACTIVATION_TAIL,
        };
        let members_in_label = record.members.len();
        let gauge = ctx.stats.register(myself.get_id(), label(&record), ctx.limits.conversation_mailbox);
        let core = Sequencer::new(record, last_seq, tail, complete, cursors, limits);
        tracing::debug!(conversation = %id, last_seq, "conversation activated");
        metrics::gauge!("switchboard_conversations_active").increment(1.0);
        Ok(ConversationState { ctx, id, core, gauge, last_activity: Instant::now(), members_in_label, actions: Vec::new() })
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.close();
        state.ctx.stats.deregister(myself.get_id());
        state.ctx.router.forget_conversation(state.id, myself.get_id());
        metrics::gauge!("switchboard_conversations_active").decrement(1.0);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.received(&msg);
        let started = Instant::now();
        let mut out = std::mem::take(&mut state.actions);
        let now = now_ms();
        match msg {
            ConversationMsg::Request(request) => {
                state.last_activity = Instant::now();
                match request {
                    ConversationRequest::Sends(sends) => {
                        for send in sends {
                            state.core.send(send, now, &mut out);
                        }
                    }
                    ConversationRequest::Cursor(receipt) => state.core.cursor(receipt, &mut out),
                    ConversationRequest::Group(request) => state.core.group(*request, now, &mut out),
                    ConversationRequest::Edit(request) => state.core.edit(*request, now, &mut out),
                }
            }
            ConversationMsg::Control(control) => match control {
                ConversationControl::Crash => panic!("crash requested for conversation {}", state.id),
                ConversationControl::Sync(reply) => {
                    // Everything handled so far reaches the writer before the answer.
                    state.core.flush(&mut out);
                    let _ = reply.send(());
                }
                ConversationControl::Handoff => {
                    state.gauge.close();
                    tracing::debug!(conversation = %state.id, "conversation handing off");
                    state.core.flush(&mut out);
                    state.core.hand_off(&mut out);
                }
            },
            ConversationMsg::Internal(internal) => match internal {
                ConversationInternal::Persisted(batch, result) => state.core.persisted(batch, result.map_err(|e| e.to_string()), &mut out),
                ConversationInternal::Target(seq, Ok(found)) => state.core.target_loaded(seq, found, now, &mut out),
                ConversationInternal::Target(seq, Err(e)) => state.core.target_failed(seq, e.to_string(), &mut out),
                ConversationInternal::FlushReceipts => state.core.flush_receipts(&mut out),
                ConversationInternal::Tick => {
                    // Sent by the supervisor's sweep, every half idle time.
                    let idle = state.ctx.limits.conversation_idle;
                    if state.core.is_idle() && state.last_activity.elapsed() >= idle && state.gauge.try_close_idle() {
                        tracing::debug!(conversation = %state.id, "conversation passivated");
                        myself.stop(Some("idle".into()));
                    }
                }
            },
        }
        // Group commit across senders: what this wake-up sequenced waits while more
        // requests are queued, and goes to the writer as one unit when the mailbox is empty.
        if state.core.unsent() > 0 && state.gauge.depth() == 0 {
            state.core.flush(&mut out);
        }
        let result = carry_out(&myself, state, &mut out);
        out.clear();
        if state.core.is_idle() {
            // Most conversations sit idle between rare messages (a 1:1 chat) and stay
            // active for `conversation_idle`: they keep no room for a pipeline that is empty
            // (a few hundred bytes each; reallocated by the next send).
            state.core.shrink_idle();
            out = Vec::new();
        }
        state.actions = out;
        state.gauge.add_busy(started);
        result
    }
}

/// Does what the sequencer decided.
fn carry_out(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState, actions: &mut Vec<Action>) -> Result<(), ActorProcessingErr> {
    for action in actions.drain(..) {
        match action {
            Action::Write { batch, ops } => {
                let me = myself.clone();
                state.ctx.writer.write(
                    ops,
                    Box::new(move |result| {
                        // If we are gone (restarted), the senders get no ack and retry; the
                        // store's dedup key then answers with the original seq.
                        let _ = me.cast(ConversationMsg::Internal(ConversationInternal::Persisted(batch, result)));
                    }),
                );
            }
            Action::Committed(messages) => deliver_committed(state, messages),
            Action::Ack(ack) => {
                let batch = ConversationBatch { conversation_id: state.id, deliveries: Vec::new(), frames: vec![ack_frame(state.id, &ack)] };
                state.ctx.router.deliver_to_device(ack.user, ack.device, SessionRequest::Conversation(Arc::new(batch)));
            }
            Action::Reject { user, device, error, request_ref } => {
                let frame = protocol::encode_server(&error.frame(request_ref));
                state.ctx.router.deliver_to_device(user, device, SessionRequest::Push(frame));
            }
            Action::Receipt { receipt, only } => {
                let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Receipt(pb::Receipt {
                    conversation_id: id_bytes(state.id),
                    user_id: id_bytes(receipt.user),
                    device_id: id_bytes(receipt.device),
                    kind: receipt.kind as i32,
                    up_to_seq: receipt.seq,
                    server_time_ms: now_ms(),
                })));
                let make = || SessionRequest::Push(frame.clone());
                match only {
                    Some(user) => state.ctx.router.deliver_to_user(user, Some(receipt.device), make),
                    None => state.ctx.router.deliver_to_users(&state.core.record().members, Some(receipt.device), make),
                }
            }
            Action::ReceiptSummaries(summaries) => {
                for s in summaries {
                    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::ReceiptSummary(pb::ReceiptSummary {
                        conversation_id: id_bytes(state.id),
                        seq: s.seq,
                        delivered: s.delivered,
                        read: s.read,
                        members: s.members,
                    })));
                    state.ctx.router.deliver_to_user(s.sender, None, || SessionRequest::Push(frame.clone()));
                }
            }
            Action::ScheduleReceiptFlush => {
                myself.send_after(RECEIPT_FLUSH, || ConversationMsg::Internal(ConversationInternal::FlushReceipts));
            }
            Action::LoadTarget { seq } => {
                let (store, me, id) = (state.ctx.store.clone(), myself.clone(), state.id);
                tokio::spawn(async move {
                    let found =
                        store.messages_after(id, seq.saturating_sub(1), 1).await.map(|m| m.first().filter(|m| m.seq == seq).map(TargetInfo::of));
                    let _ = me.cast(ConversationMsg::Internal(ConversationInternal::Target(seq, found)));
                });
            }
            Action::Fail(failure) => {
                tracing::warn!(conversation = %state.id, error = %failure, "sequencer failed; restarting from the store");
                return Err(Box::new(failure));
            }
            Action::HandedOff => {
                if state.gauge.depth() > 0 {
                    // A sender passed the mailbox's closed check just before the close and
                    // its request is queued behind: look again after it.
                    let _ = myself.cast(ConversationMsg::Control(ConversationControl::Handoff));
                } else {
                    myself.stop(Some("handoff".into()));
                }
            }
        }
    }
    let members = state.core.record().members.len();
    if members != state.members_in_label {
        state.members_in_label = members;
        state.gauge.set_label(label(state.core.record()));
    }
    Ok(())
}

/// Acks and deliveries of one commit: one batch per run of messages with the same
/// recipients (groups change them with membership events), shared by every device.
fn deliver_committed(state: &mut ConversationState, messages: Vec<CommittedMessage>) {
    let stored = messages.iter().filter(|m| m.message.event.is_none()).count();
    messages_stored().increment(stored as u64);
    let mut start = 0;
    while start < messages.len() {
        let recipients = messages[start].recipients.clone();
        let end = messages[start..].iter().position(|m| !Arc::ptr_eq(&m.recipients, &recipients)).map_or(messages.len(), |n| start + n);
        let run = &messages[start..end];
        let mut batch = ConversationBatch { conversation_id: state.id, deliveries: Vec::with_capacity(run.len()), frames: Vec::new() };
        for m in run {
            for ack in &m.acks {
                batch.frames.push(ack_frame(state.id, ack));
            }
            if let Some(answer) = &m.answer {
                let frame = protocol::encode_server(&protocol::server(server_frame::Kind::GroupAnswer(pb::GroupAnswer {
                    request_id: answer.request_id,
                    conversation_id: id_bytes(state.id),
                    seq: m.message.seq,
                    invite_token: answer.invite_token.clone().unwrap_or_default(),
                })));
                batch.frames.push(DeviceFrame { user: answer.user, device: answer.device, seq: m.message.seq, frame });
            }
            batch.deliveries.push(Delivery {
                seq: m.message.seq,
                sender_device: m.message.sender_device_id,
                event_record: m.record.clone(),
                frame: protocol::encode_server(&protocol::server(server_frame::Kind::Message(message_frame(&m.message)))),
            });
        }
        let mut users: Vec<UserId> = recipients.as_ref().clone();
        for user in batch.frame_users() {
            if !users.contains(&user) {
                users.push(user);
            }
        }
        messages_out().increment((recipients.len() * run.len()) as u64);
        let batch = Arc::new(batch);
        state.ctx.router.deliver_to_users(&users, None, || SessionRequest::Conversation(batch.clone()));
        // Push: one notification request per run, for the members' offline devices.
        if let Some(last) = run.iter().rev().find(|m| m.message.event.is_none()) {
            let count = run.iter().filter(|m| m.message.event.is_none()).count() as u32;
            let request = PushRequest::Stored {
                conversation_id: state.id,
                sender: last.message.sender_user_id,
                members: recipients.clone(),
                count,
                up_to_seq: last.message.seq,
            };
            if state.ctx.push.send(request).is_err() {
                metrics::counter!("switchboard_push_dropped_total").increment(1);
            }
        }
        start = end;
    }
}

fn ack_frame(id: ConversationId, ack: &Ack) -> DeviceFrame {
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::SendAck(pb::SendAck {
        client_msg_id: ack.client_msg_id.clone(),
        conversation_id: id_bytes(id),
        seq: ack.seq,
        server_time_ms: ack.time_ms,
        duplicate: ack.duplicate,
    })));
    DeviceFrame { user: ack.user, device: ack.device, seq: if ack.duplicate { 0 } else { ack.seq }, frame }
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
        delivered_to: 0,
        read_by: 0,
    }
}

/// The `Message` of a stored message with the tick state of the reader's own message
/// (history and catch-up pages): (delivered to, read by) other members.
pub fn message_frame_with_ticks(m: &StoredMessage, ticks: Option<(u32, u32)>) -> pb::Message {
    let mut frame = message_frame(m);
    if let Some((delivered, read)) = ticks {
        frame.delivered_to = delivered;
        frame.read_by = read;
    }
    frame
}

/// An encoded `ServerFrame::Message` of a stored message.
pub fn encoded_message(m: &StoredMessage) -> Bytes {
    protocol::encode_server(&protocol::server(server_frame::Kind::Message(message_frame(m))))
}

/// How the admin tree names a conversation actor: groups with their member count.
fn label(record: &ConversationRecord) -> Label {
    match &record.group {
        Some(_) => Label::Group(record.conversation_id, record.members.len()),
        None => Label::Conversation(record.conversation_id),
    }
}

/// Counters bumped per message, resolved once (the `counter!` macro's registry lookup
/// showed in profiles).
fn messages_stored() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_messages_stored_total"))
}

fn messages_out() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_messages_out_total"))
}
