//! The requests a device sends, one function each, and the batching of what a socket read
//! brought: the sends of one read go to each conversation as one message, the cursor
//! moves of one read are merged per conversation (latest wins) into one store write and
//! one receipt. Anything else is answered in order, after what came before it was handed
//! on.
//!
//! Permission to send or change a conversation is the sequencer's decision (it holds the
//! membership as of the log's tail, the same truth delivery uses); the session only
//! checks what it can check alone (ids, sizes, and the privacy rules between its user and
//! another: blocks, group-add settings, read receipts, presence, decided by
//! `cores::privacy`) and routes.

use std::collections::HashMap;

use ractor::ActorRef;

use super::{SessionState, Stop, push};
use crate::actors::messages::{ConversationRequest, SessionMsg, SessionRequest};
use crate::cores::group::{GroupOp, MAX_SUBJECT};
use crate::cores::privacy::{self, Audience};
use crate::cores::requests::{ConversationOp, CursorMove, EditRequest, GroupRequest, SendRequest};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{self, ErrorCode, MAX_CLIENT_MSG_ID_BYTES, RequestError, client_frame, id_bytes, parse_id, pb, server_frame};
use crate::store::{ContentKind, ConversationKind, ConversationRecord, Cursor, GroupState, StoreError, WriteOp, direct_conversation_id, now_ms};

/// What a request handler returns: the answer frame, if any, or the refusal.
pub(super) type Answer = Result<Option<pb::ServerFrame>, RequestError>;

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store read failed for a request");
        RequestError::Unavailable("store unavailable".into())
    }
}

/// What one batch of frames hands on at its end (or before a frame that must follow it).
#[derive(Default)]
struct Outgoing {
    /// Sends per conversation, in the order they were read.
    sends: Vec<(ConversationId, Vec<SendRequest>)>,
    /// Cursor moves per conversation: (highest acked, highest read).
    cursors: HashMap<ConversationId, (u64, u64)>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.cursors.is_empty()
    }
}

/// Handles the frames of one socket read, in order.
pub async fn handle_frames(myself: &ActorRef<SessionMsg>, state: &mut SessionState, frames: Vec<client_frame::Kind>) -> Result<(), Stop> {
    frames_in().increment(frames.len() as u64);
    let mut out = Outgoing::default();
    for kind in frames {
        match kind {
            client_frame::Kind::Send(req) => match check_send(state, req).await {
                Ok((id, send)) => match out.sends.iter_mut().find(|(c, _)| *c == id) {
                    Some((_, list)) => list.push(send),
                    None => out.sends.push((id, vec![send])),
                },
                Err((request_ref, e)) => reject(state, e, request_ref).await?,
            },
            client_frame::Kind::Ack(req) => cursor(state, &mut out, &req.conversation_id, req.seq, false).await?,
            client_frame::Kind::Read(req) => cursor(state, &mut out, &req.conversation_id, req.seq, true).await?,
            client_frame::Kind::Ping(p) => {
                let pong = protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: p.nonce }));
                push(state, protocol::encode_server(&pong)).await?;
            }
            client_frame::Kind::Bye(_) => {
                // Frames after Bye are ignored (docs/protocol.md): hand on what came
                // before it, then close.
                flush(state, &mut out).await?;
                state.stopping = true;
                state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Unspecified, "bye", 0)));
                myself.stop(Some("bye".into()));
                return Ok(());
            }
            other => {
                // Ordered after everything read before it.
                if !out.is_empty() {
                    flush(state, &mut out).await?;
                }
                request(state, other).await?;
            }
        }
    }
    flush(state, &mut out).await
}

/// Sends the batched sends to their conversations and writes the merged cursor moves.
async fn flush(state: &mut SessionState, out: &mut Outgoing) -> Result<(), Stop> {
    for (id, sends) in std::mem::take(&mut out.sends) {
        let refs: Vec<String> = sends.iter().map(|s| s.client_msg_id.clone()).collect();
        if let Err(e) = state.ctx.router.send_to_conversation(id, ConversationRequest::Sends(sends)).await {
            if !matches!(e, crate::actors::router::RouteError::UnknownConversation) {
                tracing::debug!(conversation = %id, error = %e, "sends not routed");
            }
            let error = RequestError::from(e);
            for r in refs {
                reject(state, error.clone(), r).await?;
            }
        }
    }
    if out.cursors.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::with_capacity(out.cursors.len());
    let mut moved = Vec::with_capacity(out.cursors.len());
    let at_ms = now_ms();
    for (id, (acked, read)) in std::mem::take(&mut out.cursors) {
        let Some(before) = state.core.view(id).map(|v| (v.delivered, v.read)) else { continue };
        state.core.cursor(id, acked, false);
        if read > 0 {
            state.core.cursor(id, read, true);
        }
        let Some(view) = state.core.view(id) else { continue };
        let (delivered, read) = (view.delivered, view.read);
        if (delivered, read) == before {
            continue;
        }
        ops.push(WriteOp::AdvanceCursor { user_id: state.user, device_id: state.device, conversation_id: id, delivered, read, at_ms });
        moved.push((id, before, delivered, read, view.record.group.is_some(), view.record.members.clone()));
    }
    if ops.is_empty() {
        return Ok(());
    }
    // Queued at the writer before any receipt leaves: whoever sees a receipt and then
    // reads receipt times (message info) waits for this write with a barrier.
    state.ctx.writer.write_detached(ops, "cursor moves");
    for (id, before, delivered, read, group, members) in moved {
        let moves = [
            (read > before.1).then_some((pb::ReceiptKind::Read, read)),
            (delivered > before.0 && delivered > read).then_some((pb::ReceiptKind::Delivered, delivered)),
        ];
        for (kind, seq) in moves.into_iter().flatten() {
            let receipt = CursorMove { user: state.user, device: state.device, kind, seq };
            if group {
                // Groups coalesce receipt counts in the conversation.
                if let Err(e) = state.ctx.router.send_to_conversation(id, ConversationRequest::Cursor(receipt)).await {
                    // The cursor is stored; only the live receipt is lost, and it is not
                    // part of the durable contract (the next move carries the newer one).
                    tracing::debug!(conversation = %id, error = %e, "receipt not relayed");
                }
            } else {
                // 1:1: relayed straight to every device of both members but this one —
                // to the peer only when the privacy rules let it through (no block; read
                // receipts on for both, for a read).
                let frame = receipt_frame(id, &receipt);
                let peer = members.iter().copied().find(|m| *m != state.user);
                let blocked = peer.is_some_and(|p| state.privacy.blocked_with(p));
                let to_peer = match (peer, kind) {
                    (None, _) => false,
                    (Some(p), pb::ReceiptKind::Read) => peer_sees_read(state, p).await,
                    (Some(_), _) => !blocked,
                };
                let to: &[UserId] = if to_peer { &members } else { std::slice::from_ref(&state.user) };
                state.ctx.router.deliver_to_users(to, Some(state.device), || SessionRequest::Push(frame.clone()));
                if let (Some(peer), pb::ReceiptKind::Read, false, false) = (peer, kind, to_peer, blocked)
                    && seq > before.0
                {
                    // A read the peer may not see still tells them what it implies, the
                    // delivery — only when this move did deliver something new (the merged
                    // move carries no Delivered then); a Delivered repeated at read time
                    // would tell the peer when the message was read.
                    let delivered = receipt_frame(id, &CursorMove { kind: pb::ReceiptKind::Delivered, ..receipt });
                    state.ctx.router.deliver_to_user(peer, None, || SessionRequest::Push(delivered.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Whether a read receipt of this user reaches `peer` (1:1): fails closed when the peer's
/// settings cannot be read.
async fn peer_sees_read(state: &mut SessionState, peer: UserId) -> bool {
    match crate::privacy::read_receipts_flow(&mut state.privacy, state.ctx.store.as_ref(), peer).await {
        Ok(flow) => flow,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "privacy settings unreadable; read receipt kept back");
            false
        }
    }
}

fn receipt_frame(id: ConversationId, r: &CursorMove) -> bytes::Bytes {
    protocol::encode_server(&protocol::server(server_frame::Kind::Receipt(pb::Receipt {
        conversation_id: id_bytes(id),
        user_id: id_bytes(r.user),
        device_id: id_bytes(r.device),
        kind: r.kind as i32,
        up_to_seq: r.seq,
        server_time_ms: now_ms(),
    })))
}

async fn reject(state: &mut SessionState, error: RequestError, request_ref: String) -> Result<(), Stop> {
    request_errors().increment(1);
    push(state, protocol::encode_server(&error.frame(request_ref))).await
}

/// Checks what a send can be checked for here; the conversation decides the rest. Declared
/// attachments are checked against the store (the one hook of media into the message
/// path, `media::attachments`); a send without any costs no lookup.
async fn check_send(state: &SessionState, req: pb::Send) -> Result<(ConversationId, SendRequest), (String, RequestError)> {
    let request_ref = req.client_msg_id.clone();
    let fail = |e: RequestError| (request_ref.clone(), e);
    if req.client_msg_id.is_empty() || req.client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
        return Err(fail(RequestError::invalid("client_msg_id must be 1 to 64 bytes")));
    }
    let max = state.ctx.limits.max_payload;
    if req.payload.len() > max {
        return Err(fail(RequestError::PayloadTooLarge { len: req.payload.len(), max }));
    }
    let id: ConversationId = parse_id("conversation_id", &req.conversation_id).map_err(|e| fail(e.into()))?;
    if state.privacy.closes(id) {
        // A 1:1 across a block (its id is known without the view: it is derived from the
        // two users).
        return Err(fail(RequestError::Blocked("no messages between these users".into())));
    }
    let kind = match pb::MessageKind::try_from(req.kind) {
        Ok(pb::MessageKind::Normal) => ContentKind::Normal,
        Ok(pb::MessageKind::Edit) => ContentKind::Edit,
        Ok(pb::MessageKind::Reaction) => ContentKind::Reaction,
        Err(_) => return Err(fail(RequestError::invalid("unknown message kind"))),
    };
    let attachments =
        crate::media::attachments::declared(state.ctx.store.as_ref(), state.user, &req.attachments).await.map_err(|e| fail(e.into()))?;
    messages_in().increment(1);
    let send = SendRequest {
        user: state.user,
        device: state.device,
        client_msg_id: req.client_msg_id,
        payload: req.payload,
        kind,
        reference_seq: req.reference_seq,
        attachments,
    };
    Ok((id, send))
}

/// Merges an Ack or Read into the batch (latest wins).
async fn cursor(state: &mut SessionState, out: &mut Outgoing, raw_id: &[u8], seq: u64, read: bool) -> Result<(), Stop> {
    let id: ConversationId = match parse_id("conversation_id", raw_id) {
        Ok(id) => id,
        Err(e) => return reject(state, e.into(), String::new()).await,
    };
    if state.core.view(id).is_none() {
        // Acknowledging a conversation this connection has not seen: load its view.
        if let Err(e) = view(state, id).await {
            return reject(state, e, String::new()).await;
        }
    }
    let entry = out.cursors.entry(id).or_default();
    entry.0 = entry.0.max(seq);
    if read {
        entry.1 = entry.1.max(seq);
    }
    Ok(())
}

/// A request answered in order, on its own.
async fn request(state: &mut SessionState, kind: client_frame::Kind) -> Result<(), Stop> {
    let (request_ref, outcome) = match kind {
        client_frame::Kind::Hello(_) => (String::new(), Err(RequestError::AlreadyAuthenticated)),
        client_frame::Kind::OpenDirect(req) => (req.request_id.to_string(), open_direct(state, req).await),
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
        client_frame::Kind::UploadKeys(req) => (req.request_id.to_string(), super::keys::upload(state, req).await),
        client_frame::Kind::QueryDevices(req) => (req.request_id.to_string(), super::keys::query(state, req).await),
        client_frame::Kind::ClaimKeys(req) => (req.request_id.to_string(), super::keys::claim(state, req).await),
        client_frame::Kind::SendToDevice(req) => (req.client_id.clone(), super::to_device::send(state, req).await),
        client_frame::Kind::AckDeviceLists(req) => (String::new(), super::to_device::ack_lists(state, req).await),
        client_frame::Kind::AckToDevice(req) => return super::to_device::ack(state, req).await,
        client_frame::Kind::ApprovePairing(req) => (req.request_id.to_string(), approve_pairing(state, req).await),
        client_frame::Kind::Inbox(req) => (req.request_id.to_string(), super::inbox::page(state, req).await),
        client_frame::Kind::UpdateChat(req) => (req.request_id.to_string(), super::inbox::update(state, req).await),
        // Batched by the caller.
        client_frame::Kind::Send(_)
        | client_frame::Kind::Ack(_)
        | client_frame::Kind::Read(_)
        | client_frame::Kind::Ping(_)
        | client_frame::Kind::Bye(_) => {
            return Ok(());
        }
    };
    match outcome {
        Ok(Some(frame)) => push(state, protocol::encode_server(&frame)).await,
        Ok(None) => Ok(()),
        Err(e) => reject(state, e, request_ref).await,
    }
}

/// The view of a conversation this user is or was a member of, loading it if needed.
async fn view(state: &mut SessionState, id: ConversationId) -> Result<&crate::cores::delivery::ConvView, RequestError> {
    if state.core.view(id).is_none() {
        let record = state.ctx.store.conversation_shared(id).await?.ok_or(RequestError::UnknownConversation)?;
        let cursor = Cursor::default();
        if !state.core.add_view(record, cursor) {
            return Err(RequestError::NotAMember);
        }
    }
    state.core.view(id).ok_or(RequestError::NotAMember)
}

/// The view of a conversation this user is a current member of.
async fn member_view<'a>(state: &'a mut SessionState, raw_id: &[u8]) -> Result<&'a crate::cores::delivery::ConvView, RequestError> {
    let user = state.user;
    let id = parse_id("conversation_id", raw_id)?;
    let view = view(state, id).await?;
    if !view.record.is_member(user) {
        return Err(RequestError::NotAMember);
    }
    Ok(view)
}

async fn open_direct(state: &mut SessionState, req: pb::OpenDirect) -> Answer {
    let peer: UserId = parse_id("peer_user_id", &req.peer_user_id)?;
    if state.privacy.blocked_with(peer) {
        return Err(RequestError::Blocked(format!("no 1:1 conversation with user {peer}")));
    }
    let id = direct_conversation_id(state.user, peer);
    if state.core.view(id).is_none() {
        // A deleted account is no one to talk to.
        if state.ctx.store.user(peer).await?.is_none_or(|u| u.is_deleted()) {
            return Err(RequestError::UnknownUser(peer.to_string()));
        }
        let record = state.ctx.store.create_conversation(ConversationRecord::direct(state.user, peer, now_ms())).await?;
        state.core.add_view(std::sync::Arc::new(record), Cursor::default());
    }
    Ok(Some(protocol::server(server_frame::Kind::DirectOpened(pb::DirectOpened { request_id: req.request_id, conversation_id: id_bytes(id) }))))
}

async fn typing(state: &mut SessionState, req: pb::Typing) -> Answer {
    let (user, device) = (state.user, state.device);
    let v = member_view(state, &req.conversation_id).await?;
    let (members, id) = (v.record.members.clone(), v.record.conversation_id);
    if state.privacy.closes(id) {
        // Not across a block, and without telling the sender (typing is best effort).
        return Ok(None);
    }
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Typing(pb::TypingEvent {
        conversation_id: req.conversation_id,
        user_id: id_bytes(user),
        device_id: id_bytes(device),
        active: req.active,
    })));
    // Ephemeral: relayed straight to the other members' devices, never stored, and it does
    // not wake a passivated conversation.
    let others: Vec<UserId> = members.into_iter().filter(|m| *m != user).collect();
    state.ctx.router.deliver_to_users(&others, None, || SessionRequest::Push(frame.clone()));
    Ok(None)
}

async fn history(state: &mut SessionState, req: pb::HistoryRequest) -> Answer {
    let id = parse_id("conversation_id", &req.conversation_id)?;
    let v = view(state, id).await?;
    let (range, record) = (v.range, v.record.clone());
    let store = state.ctx.store.clone();
    // Cursor moves (read times, ✓✓) may still be deferred at the writer: read after them.
    state.ctx.writer.barrier().await;
    let range = crate::history::without_cleared(store.as_ref(), state.user, &record, range).await?;
    let (messages, has_more) = crate::history::history_page(store.as_ref(), &record, range, req.before_seq, req.limit as usize, now_ms()).await?;
    let flow = crate::history::TickFlow::of(&mut state.privacy, store.as_ref(), &record, state.user).await?;
    let ticks = crate::history::ticks(store.as_ref(), &record, state.user, &messages, flow).await?;
    Ok(Some(protocol::server(server_frame::Kind::History(pb::HistoryPage {
        request_id: req.request_id,
        conversation_id: id_bytes(id),
        messages: messages.iter().map(|m| crate::actors::conversation::message_frame_with_ticks(m, ticks.get(&m.seq).copied())).collect(),
        has_more,
    }))))
}

async fn presence_query(state: &mut SessionState, req: pb::PresenceQuery) -> Answer {
    if req.user_ids.len() > 256 {
        return Err(RequestError::invalid("at most 256 users per presence query"));
    }
    let users = req.user_ids.iter().map(|raw| parse_id("user_ids", raw)).collect::<Result<Vec<UserId>, _>>()?;
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
        let last_seen_ms = if online { now_ms() } else { state.ctx.store.last_seen(user).await?.unwrap_or(0).max(shared_seen.unwrap_or(0)) };
        // What this caller may see of it, on every path (local, directory, Redis): the
        // user's settings, their contacts, blocks either way.
        let view = state.privacy.presence_of(state.ctx.store.as_ref(), state.user, user).await?;
        let (online, last_seen_ms) = privacy::shown_presence(view, online, last_seen_ms);
        let frame = protocol::server(server_frame::Kind::Presence(pb::Presence {
            user_id: id_bytes(user),
            online,
            last_seen_ms,
            request_id: req.request_id,
        }));
        if push(state, protocol::encode_server(&frame)).await.is_err() {
            return Err(RequestError::SlowConsumer);
        }
    }
    Ok(None)
}

async fn create_group(state: &mut SessionState, req: pb::CreateGroup) -> Answer {
    let subject = req.subject.trim().to_owned();
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT {
        return Err(RequestError::invalid("subject must be 1 to 100 characters"));
    }
    let mut members = vec![state.user];
    for raw in &req.member_user_ids {
        members.push(parse_id("member_user_ids", raw)?);
    }
    members.sort();
    members.dedup();
    if members.len() > state.ctx.limits.max_group_members {
        return Err(RequestError::GroupFull(state.ctx.limits.max_group_members));
    }
    for member in &members {
        if state.ctx.store.user(*member).await?.is_none() {
            return Err(RequestError::UnknownUser(member.to_string()));
        }
        if *member != state.user {
            may_add(state, *member).await?;
        }
    }
    let id = ConversationId::random();
    let record = ConversationRecord {
        conversation_id: id,
        kind: ConversationKind::Group,
        members: members.clone(),
        created_ms: now_ms(),
        group: Some(Box::new(GroupState {
            subject,
            admins: vec![state.user],
            joined: members.iter().map(|m| (*m, 1)).collect(),
            ..Default::default()
        })),
        retention_secs: 0,
    };
    state.ctx.store.create_conversation(record).await?;
    // The creation event (seq 1) is sequenced like every other change; its commit answers.
    route_group(state, id, req.request_id, GroupOp::Created).await
}

async fn group_change(state: &mut SessionState, req: pb::GroupChange) -> Answer {
    use pb::group_change::Change;
    let id = parse_id("conversation_id", &req.conversation_id)?;
    let user = |raw: &[u8]| parse_id::<UserId>("user_id", raw);
    let op = match req.change.ok_or_else(|| RequestError::invalid("no change given"))? {
        Change::AddMembers(list) => {
            let mut users = Vec::with_capacity(list.user_ids.len());
            for raw in &list.user_ids {
                let u = user(raw)?;
                if state.ctx.store.user(u).await?.is_none() {
                    return Err(RequestError::UnknownUser(u.to_string()));
                }
                users.push(u);
            }
            // The privacy rules are asked only for an admin of this group (the sequencer
            // refuses anyone else): not a probe of who blocked or excludes whom.
            let me = state.user;
            let admin = member_view(state, &req.conversation_id)
                .await
                .ok()
                .and_then(|v| v.record.group.as_ref().map(|g| g.admins.contains(&me)))
                .unwrap_or(false);
            if admin {
                for u in users.iter().filter(|u| **u != state.user) {
                    may_add(state, *u).await?;
                }
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

/// Whether the caller may add `target` to a group: not across a block, and within the
/// target's "who may add me to groups" setting (docs/protocol.md §"Privacy").
async fn may_add(state: &SessionState, target: UserId) -> Result<(), RequestError> {
    if state.privacy.blocked_with(target) {
        return Err(RequestError::Blocked(format!("cannot add user {target} to a group")));
    }
    let store = state.ctx.store.as_ref();
    if store.user(target).await?.is_none_or(|u| u.is_deleted()) {
        return Err(RequestError::UnknownUser(target.to_string()));
    }
    let settings = store.privacy(target).await?;
    let contact = settings.groups == Audience::Contacts && !store.known_contacts(target, vec![state.privacy.phone.clone()]).await?.is_empty();
    if privacy::may_add_to_group(&settings, privacy::Relation { contact, blocked: false }) {
        Ok(())
    } else {
        Err(RequestError::NotAllowed(target.to_string()))
    }
}

/// ApprovePairing → PairingApproved: this (primary) device links the new device that
/// shows the code (`crate::pairing`).
async fn approve_pairing(state: &mut SessionState, req: pb::ApprovePairing) -> Answer {
    use crate::accounts::AccountError;
    let store = state.ctx.store.as_ref();
    let me = store.device(state.device).await?.ok_or(RequestError::NotPrimary)?;
    let device_name = crate::pairing::approve(store, crate::accounts::MAX_DEVICES, &me, &req.code).await.map_err(|e| match e {
        AccountError::NotPrimary => RequestError::NotPrimary,
        AccountError::TooManyDevices(max) => RequestError::TooManyDevices(max),
        AccountError::PairingAlreadyApproved => RequestError::PairingAlreadyApproved,
        AccountError::UnknownPairing => RequestError::UnknownPairing,
        other => RequestError::Unavailable(other.to_string()),
    })?;
    Ok(Some(protocol::server(server_frame::Kind::PairingApproved(pb::PairingApproved { request_id: req.request_id, device_name }))))
}

async fn join_group(state: &mut SessionState, req: pb::JoinGroup) -> Answer {
    let hash = crate::accounts::hash_secret(&req.invite_token);
    let id = state.ctx.store.conversation_by_invite(hash).await?.ok_or(RequestError::InvalidInvite)?;
    route_group(state, id, req.request_id, GroupOp::JoinByInvite(hash)).await
}

/// Delete for everyone or a retention change, sequenced by the conversation.
async fn edit(state: &mut SessionState, raw_id: &[u8], request_id: u64, op: ConversationOp) -> Answer {
    let id = parse_id("conversation_id", raw_id)?;
    if state.privacy.closes(id) {
        return Err(RequestError::Blocked("no changes to a 1:1 conversation across a block".into()));
    }
    let request = EditRequest { user: state.user, device: state.device, request_id, op };
    state.ctx.router.send_to_conversation(id, ConversationRequest::Edit(Box::new(request))).await?;
    Ok(None)
}

/// Hands a change to the group's sequencer; its answer (GroupAnswer or Error) comes from
/// there once the event is stored.
async fn route_group(state: &mut SessionState, id: ConversationId, request_id: u64, op: GroupOp) -> Answer {
    let request = GroupRequest { user: state.user, device: state.device, request_id, op };
    state.ctx.router.send_to_conversation(id, ConversationRequest::Group(Box::new(request))).await?;
    Ok(None)
}

/// Per-member delivered/read times of one of the caller's own group messages.
async fn message_info(state: &mut SessionState, req: pb::MessageInfo) -> Answer {
    let user = state.user;
    let v = member_view(state, &req.conversation_id).await?;
    let (id, members, visible) = (v.record.conversation_id, v.record.members.clone(), v.visible(req.seq));
    let record = v.record.clone();
    if req.seq == 0 || !visible {
        return Err(RequestError::invalid("no such message"));
    }
    // Cursor moves (read times, ✓✓) may still be deferred at the writer: read after them.
    state.ctx.writer.barrier().await;
    let message = state.ctx.store.messages_after(id, req.seq - 1, 1).await?.into_iter().find(|m| m.seq == req.seq);
    match message {
        Some(m) if m.event.is_none() && record.expired(m.server_time_ms, now_ms()) => return Err(RequestError::invalid("no such message (expired)")),
        Some(m) if m.sender_user_id == user => {}
        Some(_) => return Err(RequestError::NotAdmin("message info is for the sender only".into())),
        None => return Err(RequestError::invalid("no such message")),
    }
    let mut entries = Vec::with_capacity(members.len());
    let direct = record.kind == ConversationKind::Direct;
    for member in members.into_iter().filter(|m| *m != user) {
        let (delivered, mut read) = state.ctx.store.receipt_times(id, member, req.seq).await?;
        let mut delivered = delivered;
        if direct {
            if state.privacy.blocked_with(member) {
                // Across a block, no receipt of any kind.
                delivered = None;
            }
            if !crate::privacy::read_receipts_flow(&mut state.privacy, state.ctx.store.as_ref(), member).await? {
                // Read receipts are off on one side (or a block): the read time is not told.
                read = None;
            }
        }
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
    let id = parse_id("conversation_id", &req.conversation_id)?;
    let record = state.ctx.store.conversation(id).await?.ok_or(RequestError::UnknownConversation)?;
    // The store's record is the truth (the sequencer's latest committed event): a member
    // re-added a moment ago is a member here too.
    if !record.is_member(state.user) {
        return Err(RequestError::NotAMember);
    }
    let group = record.group.as_ref().ok_or_else(|| RequestError::invalid("not a group"))?;
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

fn frames_in() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_frames_in_total"))
}

fn messages_in() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_messages_in_total"))
}

fn request_errors() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_request_errors_total"))
}
