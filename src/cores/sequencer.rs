//! The sequencer of one conversation, as a pure state machine: requests and store outcomes
//! go in, [`Action`]s come out. No store handle, router, clock or runtime inside: the
//! conversation actor (its shell) feeds it, passes the time in, and carries the actions
//! out. So its guarantees are tested directly (unit and property tests below):
//!
//! - **acknowledged means durable**: an [`Ack`] of a new message only comes out of
//!   [`Sequencer::persisted`] for an op the store reported `Appended`;
//! - **contiguous seqs**: seqs are handed out one by one from the store's last seq, and the
//!   store refuses an append whose predecessor is missing, so a failed write can never
//!   leave a gap behind a later one;
//! - **one seq per client id**: a retry is answered with its original seq, from the
//!   window of recent ids ([`super::recent_ids`]) or, when the window misses, from the
//!   store's dedup key (`Duplicate`), after which everything sequenced behind it is
//!   renumbered (nothing of it was acknowledged or delivered yet).
//!
//! Sends are pipelined: everything sequenced in one wake-up of the actor goes to the
//! writer as one [`Action::Write`] ([`Sequencer::flush`]), and later wake-ups keep
//! sequencing while earlier batches are being committed. Any outcome the sequencer cannot
//! explain (a store error, another sequencer's append) answers every pending request with
//! UNAVAILABLE (none was acknowledged) and asks the shell to fail ([`Action::Fail`]): its
//! supervisor restarts it from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::group;
use super::receipts::{GroupReceipts, Summary};
use super::recent_ids::{self, RecentIds, Remembered};
use super::requests::{ConversationOp, CursorMove, EditRequest, GroupRequest, MAX_RETENTION_SECS, SendRequest};
use crate::ids::{DeviceId, UserId};
use crate::protocol::{RequestError, pb};
use crate::store::{ContentKind, ConversationRecord, MemberCursor, StoredMessage, WriteOp, WriteOutcome};

/// Identifies one [`Action::Write`] so that its outcome can be matched.
pub type BatchId = u64;

/// Limits of one sequencer.
#[derive(Debug, Clone, Copy)]
pub struct SequencerLimits {
    /// Largest group, in members.
    pub max_group_members: usize,
    /// Most ops in one [`Action::Write`].
    pub max_batch: usize,
    /// Committed messages whose metadata is kept to check edits, reactions and deletes
    /// without a store read.
    pub recent_messages: usize,
}

impl Default for SequencerLimits {
    fn default() -> Self {
        Self { max_group_members: 1024, max_batch: 512, recent_messages: 32 }
    }
}

/// What the rules for edits, reactions and deletes need to know of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetInfo {
    /// Its seq.
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// Ordinary, edit or reaction.
    pub kind: ContentKind,
    /// A server event (membership, settings, deletion).
    pub is_event: bool,
    /// Deleted for everyone.
    pub deleted: bool,
    /// Server time, ms since the epoch.
    pub time_ms: u64,
    /// For edits and reactions: their target.
    pub reference_seq: u64,
}

impl TargetInfo {
    /// The metadata of a stored message.
    pub fn of(m: &StoredMessage) -> Self {
        Self {
            seq: m.seq,
            sender: m.sender_user_id,
            kind: m.kind,
            is_event: m.event.is_some(),
            deleted: m.deleted,
            time_ms: m.server_time_ms,
            reference_seq: m.reference_seq,
        }
    }
}

/// A SendAck to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The sending user.
    pub user: UserId,
    /// The device to tell.
    pub device: DeviceId,
    /// Echo of the client's idempotency key.
    pub client_msg_id: String,
    /// The seq the message is stored at.
    pub seq: u64,
    /// Its server time, ms.
    pub time_ms: u64,
    /// True if the message had been stored before (this was a retry).
    pub duplicate: bool,
}

/// The answer to the device that asked for a change (group, delete, retention), once its
/// event is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAnswer {
    /// Who asked.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Their request id.
    pub request_id: u64,
    /// A new invite token, for the admin who created it.
    pub invite_token: Option<String>,
}

/// One message made durable by a commit, with who gets it.
#[derive(Debug, Clone)]
pub struct CommittedMessage {
    /// The stored message.
    pub message: StoredMessage,
    /// Members when it was sequenced: they, and only they, get it live.
    pub recipients: Arc<Vec<UserId>>,
    /// The device that sent it (it gets an ack instead); None for events, which every
    /// device gets, the acting one included.
    pub except: Option<DeviceId>,
    /// Acks for the sending device and any device that sent the same id meanwhile.
    pub acks: Vec<Ack>,
    /// For events: the answer to the device that asked.
    pub answer: Option<EventAnswer>,
    /// For events: the conversation's record as of this event.
    pub record: Option<Arc<ConversationRecord>>,
}

/// Why the sequencer asks its actor to fail (and be restarted from the store).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequencerFailure {
    /// The store failed a batch: its ops may or may not be stored; the next activation
    /// reads the truth.
    #[error("store write failed: {0}")]
    Store(String),
    /// The store refused an append at this seq: another sequencer appended (it is fenced
    /// out), or an earlier write of ours did not land.
    #[error("sequence conflict at seq {0}")]
    Conflict(u64),
    /// A retry of a stored message was found behind an event, which cannot be renumbered
    /// in place (its record names its seq).
    #[error("duplicate found ahead of a group event at seq {0}")]
    EventBehindDuplicate(u64),
    /// The store answered something the contract rules out.
    #[error("store broke the contract: {0}")]
    Contract(String),
}

/// What the shell must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Hand these ops to the store writer as one unit; feed the outcome back through
    /// [`Sequencer::persisted`] with the same batch id.
    Write {
        /// Batch id.
        batch: BatchId,
        /// The ops, in seq order.
        ops: Vec<WriteOp>,
    },
    /// Messages a commit made durable: acknowledge and deliver them.
    Committed(Vec<CommittedMessage>),
    /// A retry answered at once from the window of recent ids.
    Ack(Ack),
    /// Refuse a request.
    Reject {
        /// Who asked.
        user: UserId,
        /// From which device.
        device: DeviceId,
        /// Why.
        error: RequestError,
        /// The request's reference to echo.
        request_ref: String,
    },
    /// Relay a receipt to the devices of every member (`only` = None, 1:1) or of one
    /// member only (groups: the mover's own other devices), except the moving device.
    Receipt {
        /// The cursor move.
        receipt: CursorMove,
        /// Whose devices get it.
        only: Option<UserId>,
    },
    /// Group receipt counts that changed, one per sender.
    ReceiptSummaries(Vec<Summary>),
    /// Call [`Sequencer::flush_receipts`] after the coalescing delay.
    ScheduleReceiptFlush,
    /// Read the stored message at `seq` and call [`Sequencer::target_loaded`]; requests
    /// wait meanwhile, in order.
    LoadTarget {
        /// The seq to read.
        seq: u64,
    },
    /// Stop with an error: the supervisor restarts the conversation from the store.
    Fail(SequencerFailure),
    /// A hand-off was asked and nothing is pending any more: stop.
    HandedOff,
}

/// A pending log entry: sequenced, not yet known to be stored.
#[derive(Debug)]
struct Entry {
    message: StoredMessage,
    recipients: Arc<Vec<UserId>>,
    /// Devices that sent the same client id while this one was pending.
    waiters: Vec<(UserId, DeviceId)>,
    event: Option<Box<EventPart>>,
}

/// What an event's op and answer need besides its log entry.
#[derive(Debug)]
struct EventPart {
    answer: EventAnswer,
    record: ConversationRecord,
    joined: Vec<UserId>,
    tombstone: Option<u64>,
}

impl Entry {
    fn op(&self) -> WriteOp {
        match &self.event {
            None => WriteOp::Append(self.message.clone()),
            Some(e) => WriteOp::AppendEvent {
                message: self.message.clone(),
                record: Box::new(e.record.clone()),
                joined: e.joined.clone(),
                tombstone: e.tombstone,
            },
        }
    }

    fn request_ref(&self) -> String {
        match &self.event {
            None => self.message.client_msg_id.clone(),
            Some(e) => e.answer.request_id.to_string(),
        }
    }
}

#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    entries: Vec<Entry>,
    /// Renumbered away after a duplicate ahead of it: its ops can only be refused; its
    /// entries were sequenced again.
    void: bool,
}

/// A request waiting for a target to be read from the store.
#[derive(Debug)]
enum Parked {
    Send(SendRequest),
    Edit(EditRequest),
    Group(GroupRequest),
}

enum Lookup {
    /// Committed (or read from the store).
    Known(TargetInfo),
    /// Sequenced, not yet committed.
    Pending(TargetInfo),
    /// No such message (never was, or expired and purged).
    Missing,
    /// Older than what is kept in memory: read it.
    Unknown,
}

/// The sequencer state of one activation.
#[derive(Debug)]
pub struct Sequencer {
    record: ConversationRecord,
    members: Arc<Vec<UserId>>,
    limits: SequencerLimits,
    next_seq: u64,
    last_time_ms: u64,
    unsent: Vec<Entry>,
    in_flight: VecDeque<InFlight>,
    next_batch: BatchId,
    /// (sender, client id key) → seq of the pending entry.
    pending_ids: HashMap<(UserId, u128), u64>,
    recent: RecentIds,
    /// Metadata of the latest committed messages, ascending seq, and the lowest seq from
    /// which every existing message is in it.
    targets: VecDeque<TargetInfo>,
    covered_from: u64,
    /// Older targets read from the store on demand (a few; None: no such message).
    loaded: VecDeque<(u64, Option<TargetInfo>)>,
    receipts: Option<GroupReceipts>,
    parked: VecDeque<Parked>,
    awaiting_target: Option<u64>,
    handing_off: bool,
    failed: bool,
}

/// Targets read from the store kept in memory.
const LOADED_TARGETS: usize = 8;

impl Sequencer {
    /// An activation resuming after `last_seq`. `tail` is the newest stored messages
    /// (any order; at most `limits.recent_messages` are kept), `complete` says it holds
    /// every stored message; `member_cursors` seed group receipt counts.
    pub fn new(
        record: ConversationRecord,
        last_seq: u64,
        tail: Vec<StoredMessage>,
        complete: bool,
        member_cursors: Vec<(UserId, MemberCursor)>,
        limits: SequencerLimits,
    ) -> Self {
        let mut tail = tail;
        tail.sort_by_key(|m| m.seq);
        let last_time_ms = tail.last().map(|m| m.server_time_ms).unwrap_or(0);
        let covered_from = if complete { 1 } else { tail.first().map(|m| m.seq).unwrap_or(last_seq + 1) };
        let mut recent = RecentIds::default();
        for m in tail.iter().filter(|m| m.event.is_none()) {
            recent.insert(m.sender_user_id, &m.client_msg_id, Remembered { seq: m.seq, time_ms: m.server_time_ms });
        }
        let keep = tail.len().saturating_sub(limits.recent_messages.max(1));
        let covered_from = if keep > 0 { tail[keep].seq } else { covered_from };
        let targets = tail[keep..].iter().map(TargetInfo::of).collect();
        let receipts = record.group.is_some().then(|| GroupReceipts::new(member_cursors));
        Self {
            members: Arc::new(record.members.clone()),
            record,
            limits,
            next_seq: last_seq + 1,
            last_time_ms,
            unsent: Vec::new(),
            in_flight: VecDeque::new(),
            next_batch: 1,
            pending_ids: HashMap::new(),
            recent,
            targets,
            covered_from,
            loaded: VecDeque::new(),
            receipts,
            parked: VecDeque::new(),
            awaiting_target: None,
            handing_off: false,
            failed: false,
        }
    }

    /// The conversation as of the latest sequenced event.
    pub fn record(&self) -> &ConversationRecord {
        &self.record
    }

    /// The next seq to be handed out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// True if nothing is pending: nothing unsent, in flight or waiting for a target.
    pub fn is_idle(&self) -> bool {
        self.unsent.is_empty() && self.in_flight.is_empty() && self.parked.is_empty() && self.awaiting_target.is_none()
    }

    /// With nothing pending ([`Self::is_idle`]), gives back the room of the pipeline's
    /// queues (in flight, pending client ids, parked), which keep their capacity after a
    /// burst. Kept: the state a later request needs (recent ids, targets).
    pub fn shrink_idle(&mut self) {
        if !self.is_idle() {
            return;
        }
        self.unsent = Vec::new();
        self.in_flight = VecDeque::new();
        self.parked = VecDeque::new();
        if self.pending_ids.is_empty() {
            self.pending_ids = HashMap::new();
        }
    }

    /// Entries sequenced and not yet handed to the writer.
    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    /// A device sends a message.
    pub fn send(&mut self, request: SendRequest, now_ms: u64, out: &mut Vec<Action>) {
        if self.refuse_if_failed(request.user, request.device, &request.client_msg_id, out) {
            return;
        }
        if self.awaiting_target.is_some() {
            self.parked.push_back(Parked::Send(request));
            return;
        }
        self.try_send(request, now_ms, out);
        self.flush_if_full(out);
    }

    /// A group change (or the creation event of a new group).
    pub fn group(&mut self, request: GroupRequest, now_ms: u64, out: &mut Vec<Action>) {
        if self.refuse_if_failed(request.user, request.device, &request.request_id.to_string(), out) {
            return;
        }
        if self.awaiting_target.is_some() {
            self.parked.push_back(Parked::Group(request));
            return;
        }
        self.try_group(request, now_ms, out);
        self.flush_if_full(out);
    }

    /// Delete for everyone, or a retention change.
    pub fn edit(&mut self, request: EditRequest, now_ms: u64, out: &mut Vec<Action>) {
        if self.refuse_if_failed(request.user, request.device, &request.request_id.to_string(), out) {
            return;
        }
        if self.awaiting_target.is_some() {
            self.parked.push_back(Parked::Edit(request));
            return;
        }
        self.try_edit(request, now_ms, out);
        self.flush_if_full(out);
    }

    /// A device's cursor moved: relay the receipt (and, in groups, update the counts).
    pub fn cursor(&mut self, receipt: CursorMove, out: &mut Vec<Action>) {
        match self.receipts.as_mut() {
            Some(receipts) => {
                if receipts.cursor_moved(receipt.user, receipt.kind, receipt.seq) {
                    out.push(Action::ScheduleReceiptFlush);
                }
                out.push(Action::Receipt { receipt, only: Some(receipt.user) });
            }
            None => out.push(Action::Receipt { receipt, only: None }),
        }
    }

    /// The coalescing delay passed: the group receipt counts that changed.
    pub fn flush_receipts(&mut self, out: &mut Vec<Action>) {
        if let Some(receipts) = self.receipts.as_mut() {
            let summaries = receipts.flush(&self.members);
            if !summaries.is_empty() {
                out.push(Action::ReceiptSummaries(summaries));
            }
        }
    }

    /// Hands everything sequenced since the last flush to the writer as one batch.
    pub fn flush(&mut self, out: &mut Vec<Action>) {
        if self.unsent.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.unsent);
        let batch = self.next_batch;
        self.next_batch += 1;
        let ops = entries.iter().map(Entry::op).collect();
        self.in_flight.push_back(InFlight { batch, entries, void: false });
        out.push(Action::Write { batch, ops });
    }

    fn flush_if_full(&mut self, out: &mut Vec<Action>) {
        if self.unsent.len() >= self.limits.max_batch.max(1) {
            self.flush(out);
        }
    }

    /// The conversation must move to another node: stop once nothing is pending.
    pub fn hand_off(&mut self, out: &mut Vec<Action>) {
        self.handing_off = true;
        self.check_handed_off(out);
    }

    fn check_handed_off(&mut self, out: &mut Vec<Action>) {
        if self.handing_off && self.is_idle() {
            out.push(Action::HandedOff);
        }
    }

    /// The store's answer for a batch: `Ok` with one outcome per op, in order, or `Err`
    /// if the batch failed as a whole.
    pub fn persisted(&mut self, batch: BatchId, result: Result<Vec<WriteOutcome>, String>, out: &mut Vec<Action>) {
        let Some(front) = self.in_flight.pop_front() else {
            return self.fail(SequencerFailure::Contract(format!("outcome of batch {batch} with nothing in flight")), out);
        };
        if front.batch != batch {
            self.in_flight.push_front(front);
            return self.fail(SequencerFailure::Contract(format!("outcome of batch {batch} out of order")), out);
        }
        if front.void {
            // Its entries were renumbered after a duplicate ahead of them: the store can
            // only have refused its ops.
            if let Ok(outcomes) = &result
                && outcomes.iter().any(|o| matches!(o, WriteOutcome::Appended))
            {
                return self.fail(SequencerFailure::Contract(format!("batch {batch} appended behind a gap")), out);
            }
            self.check_handed_off(out);
            return;
        }
        let outcomes = match result {
            Ok(outcomes) if outcomes.len() == front.entries.len() => outcomes,
            Ok(outcomes) => {
                let reason = format!("{} outcomes for {} ops", outcomes.len(), front.entries.len());
                self.in_flight.push_front(front);
                return self.fail(SequencerFailure::Contract(reason), out);
            }
            Err(e) => {
                self.in_flight.push_front(front);
                return self.fail(SequencerFailure::Store(e), out);
            }
        };
        let mut committed = Vec::new();
        let mut rewind_from: Option<u64> = None;
        let mut requeue = Vec::new();
        let mut entries = front.entries.into_iter();
        let mut fatal = None;
        for outcome in outcomes {
            let Some(entry) = entries.next() else { break };
            match (outcome, rewind_from) {
                (WriteOutcome::Appended, None) => committed.push(self.commit(entry)),
                (WriteOutcome::Duplicate { seq, server_time_ms }, _) if entry.event.is_none() => {
                    // Stored by an earlier attempt whose ack was lost: answer with the
                    // original; everything behind it was refused and is renumbered.
                    rewind_from.get_or_insert(entry.message.seq);
                    self.answer_duplicate(entry, seq, server_time_ms, out);
                }
                (WriteOutcome::SeqConflict, Some(_)) => requeue.push(entry),
                (WriteOutcome::SeqConflict, None) => {
                    fatal = Some((SequencerFailure::Conflict(entry.message.seq), entry));
                    break;
                }
                (other, _) => {
                    fatal = Some((SequencerFailure::Contract(format!("{other:?} for seq {}", entry.message.seq)), entry));
                    break;
                }
            }
        }
        if !committed.is_empty() {
            out.push(Action::Committed(committed));
        }
        if let Some((failure, entry)) = fatal {
            // What was committed above is acknowledged; the rest is refused.
            self.unsent.splice(0..0, std::iter::once(entry).chain(entries));
            return self.fail(failure, out);
        }
        if let Some(from) = rewind_from {
            requeue.extend(entries);
            if let Err(failure) = self.renumber(from, requeue) {
                return self.fail(failure, out);
            }
            self.flush(out);
        }
        self.check_handed_off(out);
    }

    /// A target read from the store (None: no such message): requests parked behind the
    /// read are handled in order.
    pub fn target_loaded(&mut self, seq: u64, found: Option<TargetInfo>, now_ms: u64, out: &mut Vec<Action>) {
        if self.awaiting_target != Some(seq) {
            return;
        }
        self.awaiting_target = None;
        if self.loaded.len() >= LOADED_TARGETS {
            self.loaded.pop_front();
        }
        self.loaded.push_back((seq, found.filter(|t| t.seq == seq)));
        while self.awaiting_target.is_none()
            && let Some(parked) = self.parked.pop_front()
        {
            match parked {
                Parked::Send(r) => self.try_send(r, now_ms, out),
                Parked::Edit(r) => self.try_edit(r, now_ms, out),
                Parked::Group(r) => self.try_group(r, now_ms, out),
            }
        }
        self.flush_if_full(out);
    }

    /// The target read failed: everything waiting is refused (retry), and the shell
    /// restarts the conversation.
    pub fn target_failed(&mut self, seq: u64, reason: String, out: &mut Vec<Action>) {
        if self.awaiting_target == Some(seq) {
            self.fail(SequencerFailure::Store(reason), out);
        }
    }

    // ---- requests ------------------------------------------------------------------

    fn refuse_if_failed(&self, user: UserId, device: DeviceId, request_ref: &str, out: &mut Vec<Action>) -> bool {
        if self.failed {
            out.push(reject(user, device, RequestError::Unavailable("conversation restarting".into()), request_ref));
        }
        self.failed
    }

    fn try_send(&mut self, request: SendRequest, now_ms: u64, out: &mut Vec<Action>) {
        let (user, device) = (request.user, request.device);
        if !self.record.is_member(user) {
            return out.push(reject(user, device, RequestError::NotAMember, &request.client_msg_id));
        }
        if self.record.group.as_ref().is_some_and(|g| g.admins_only_send) && !self.record.is_admin(user) {
            return out.push(reject(user, device, RequestError::SendRestricted, &request.client_msg_id));
        }
        if let Some(r) = self.recent.get(user, &request.client_msg_id)
            && !self.expired(r.time_ms, now_ms)
        {
            return out.push(Action::Ack(Ack {
                user,
                device,
                client_msg_id: request.client_msg_id,
                seq: r.seq,
                time_ms: r.time_ms,
                duplicate: true,
            }));
        }
        let key = (user, recent_ids::key_of(&request.client_msg_id));
        if let Some(seq) = self.pending_ids.get(&key).copied()
            && let Some(entry) = self.pending_entry_mut(seq)
        {
            entry.waiters.push((user, device));
            return;
        }
        if request.kind != ContentKind::Normal {
            let target = match self.lookup(request.reference_seq) {
                Lookup::Unknown => {
                    let seq = request.reference_seq;
                    self.parked.push_front(Parked::Send(request));
                    self.awaiting_target = Some(seq);
                    return out.push(Action::LoadTarget { seq });
                }
                Lookup::Missing => None,
                Lookup::Known(t) | Lookup::Pending(t) => Some(t),
            };
            if let Err(error) = self.check_reference(user, request.kind, target, now_ms) {
                return out.push(reject(user, device, error, &request.client_msg_id));
            }
        }
        let (seq, time_ms) = self.next_position(now_ms);
        let message = StoredMessage {
            conversation_id: self.record.conversation_id,
            seq,
            sender_user_id: user,
            sender_device_id: device,
            client_msg_id: request.client_msg_id,
            server_time_ms: time_ms,
            payload: request.payload,
            event: None,
            kind: request.kind,
            reference_seq: request.reference_seq,
            deleted: false,
            attachments: request.attachments,
        };
        self.pending_ids.insert(key, seq);
        self.unsent.push(Entry { message, recipients: self.members.clone(), waiters: Vec::new(), event: None });
    }

    /// The rules for edits and reactions (docs/protocol.md, "Edits and reactions"): the
    /// target is an ordinary message, not an event, not deleted, not expired; an edit is
    /// made by the target's sender.
    fn check_reference(&self, user: UserId, kind: ContentKind, target: Option<TargetInfo>, now_ms: u64) -> Result<(), RequestError> {
        let Some(t) = target else {
            return Err(RequestError::invalid("reference_seq must name an earlier message"));
        };
        if t.is_event || t.kind != ContentKind::Normal {
            return Err(RequestError::invalid("only an ordinary message can be edited or reacted to"));
        }
        if t.deleted {
            return Err(RequestError::invalid("that message was deleted"));
        }
        if self.expired(t.time_ms, now_ms) {
            return Err(RequestError::invalid("that message has expired"));
        }
        if kind == ContentKind::Edit && t.sender != user {
            return Err(RequestError::invalid("only the sender of a message may edit it"));
        }
        Ok(())
    }

    fn try_group(&mut self, request: GroupRequest, now_ms: u64, out: &mut Vec<Action>) {
        let GroupRequest { user, device, request_id, op } = request;
        let applied = match group::apply(&self.record, user, op, self.next_seq, self.limits.max_group_members) {
            Ok(applied) => applied,
            Err(e) => return out.push(reject(user, device, e.into(), &request_id.to_string())),
        };
        let mut recipients = applied.record.members.clone();
        recipients.extend(applied.removed.iter().copied());
        let answer = EventAnswer { user, device, request_id, invite_token: applied.invite_token };
        self.sequence_event(applied.event, applied.record, recipients, answer, applied.joined, None, now_ms);
    }

    fn try_edit(&mut self, request: EditRequest, now_ms: u64, out: &mut Vec<Action>) {
        let EditRequest { user, device, request_id, op } = request;
        let rid = request_id.to_string();
        if !self.record.is_member(user) {
            return out.push(reject(user, device, RequestError::NotAMember, &rid));
        }
        let is_admin = self.record.is_admin(user);
        let answer = EventAnswer { user, device, request_id, invite_token: None };
        match op {
            ConversationOp::Delete(target) => {
                let info = match self.lookup(target) {
                    Lookup::Unknown => {
                        self.parked.push_front(Parked::Edit(request));
                        self.awaiting_target = Some(target);
                        return out.push(Action::LoadTarget { seq: target });
                    }
                    Lookup::Missing | Lookup::Pending(_) => {
                        return out.push(reject(user, device, RequestError::invalid("no such message (yet)"), &rid));
                    }
                    Lookup::Known(info) => info,
                };
                if info.is_event || info.deleted {
                    return out.push(reject(user, device, RequestError::invalid("that message cannot be deleted"), &rid));
                }
                if self.expired(info.time_ms, now_ms) {
                    return out.push(reject(user, device, RequestError::invalid("that message has expired"), &rid));
                }
                if info.sender != user && !is_admin {
                    return out.push(reject(user, device, RequestError::NotAdmin("only the sender or a group admin may delete it".into()), &rid));
                }
                // Judged in log order: later requests see it deleted (and what refers to
                // it: its edits and reactions go with it).
                self.mark_deleted(target);
                let event = pb::ConversationEvent { kind: Some(pb::conversation_event::Kind::MessageDeleted(target)) };
                let record = self.record.clone();
                let recipients = record.members.clone();
                self.sequence_event(event, record, recipients, answer, Vec::new(), Some(target), now_ms);
            }
            ConversationOp::Retention(seconds) => {
                if seconds > MAX_RETENTION_SECS {
                    return out.push(reject(user, device, RequestError::invalid("retention is at most one year"), &rid));
                }
                if self.record.group.as_ref().is_some_and(|g| g.admins_only_info) && !is_admin {
                    return out.push(reject(user, device, RequestError::NotAdmin("only group admins may change this".into()), &rid));
                }
                let mut record = self.record.clone();
                record.retention_secs = seconds;
                let event = pb::ConversationEvent { kind: Some(pb::conversation_event::Kind::RetentionChanged(seconds)) };
                let recipients = record.members.clone();
                self.sequence_event(event, record, recipients, answer, Vec::new(), None, now_ms);
            }
        }
    }

    /// Appends a server event with the conversation's new record. The record changes at
    /// once: later requests are judged against it, in log order.
    #[allow(clippy::too_many_arguments)]
    fn sequence_event(
        &mut self,
        event: pb::ConversationEvent,
        record: ConversationRecord,
        recipients: Vec<UserId>,
        answer: EventAnswer,
        joined: Vec<UserId>,
        tombstone: Option<u64>,
        now_ms: u64,
    ) {
        let (seq, time_ms) = self.next_position(now_ms);
        let message = StoredMessage {
            conversation_id: self.record.conversation_id,
            seq,
            sender_user_id: answer.user,
            sender_device_id: answer.device,
            client_msg_id: format!("event-{seq}"),
            server_time_ms: time_ms,
            payload: bytes::Bytes::new(),
            event: Some(group::encode_event(&event)),
            kind: ContentKind::Normal,
            reference_seq: 0,
            deleted: false,
            attachments: Vec::new(),
        };
        self.members = Arc::new(record.members.clone());
        self.record = record.clone();
        let event = EventPart { answer, record, joined, tombstone };
        self.unsent.push(Entry { message, recipients: Arc::new(recipients), waiters: Vec::new(), event: Some(Box::new(event)) });
    }

    // ---- commits -------------------------------------------------------------------

    fn commit(&mut self, entry: Entry) -> CommittedMessage {
        let m = &entry.message;
        self.pending_ids.remove(&(m.sender_user_id, recent_ids::key_of(&m.client_msg_id)));
        self.remember_target(TargetInfo::of(m));
        match entry.event {
            None => {
                self.recent.insert(m.sender_user_id, &m.client_msg_id, Remembered { seq: m.seq, time_ms: m.server_time_ms });
                if let Some(receipts) = self.receipts.as_mut() {
                    receipts.committed(m.sender_user_id, m.seq);
                }
                let acks = std::iter::once((m.sender_user_id, m.sender_device_id, false))
                    .chain(entry.waiters.iter().map(|(u, d)| (*u, *d, true)))
                    .map(|(user, device, duplicate)| Ack {
                        user,
                        device,
                        client_msg_id: m.client_msg_id.clone(),
                        seq: m.seq,
                        time_ms: m.server_time_ms,
                        duplicate,
                    })
                    .collect();
                let except = Some(m.sender_device_id);
                CommittedMessage { message: entry.message, recipients: entry.recipients, except, acks, answer: None, record: None }
            }
            Some(event) => {
                let EventPart { answer, record, .. } = *event;
                CommittedMessage {
                    message: entry.message,
                    recipients: entry.recipients,
                    except: None,
                    acks: Vec::new(),
                    answer: Some(answer),
                    record: Some(Arc::new(record)),
                }
            }
        }
    }

    fn answer_duplicate(&mut self, entry: Entry, seq: u64, time_ms: u64, out: &mut Vec<Action>) {
        let m = &entry.message;
        self.pending_ids.remove(&(m.sender_user_id, recent_ids::key_of(&m.client_msg_id)));
        self.recent.insert(m.sender_user_id, &m.client_msg_id, Remembered { seq, time_ms });
        for (user, device) in std::iter::once((m.sender_user_id, m.sender_device_id)).chain(entry.waiters.iter().copied()) {
            out.push(Action::Ack(Ack { user, device, client_msg_id: m.client_msg_id.clone(), seq, time_ms, duplicate: true }));
        }
    }

    /// Sequences again, from `from`, everything pending behind a duplicate: the entries
    /// the store refused in its batch (`requeue`), every batch still in flight (voided:
    /// the store can only refuse them), and what is unsent. Times are kept (they never go
    /// backwards).
    fn renumber(&mut self, from: u64, requeue: Vec<Entry>) -> Result<(), SequencerFailure> {
        let mut entries = requeue;
        for f in self.in_flight.iter_mut() {
            f.void = true;
            entries.append(&mut f.entries);
        }
        entries.append(&mut self.unsent);
        if let Some(e) = entries.iter().find(|e| e.event.is_some()) {
            let seq = e.message.seq;
            self.unsent = entries;
            return Err(SequencerFailure::EventBehindDuplicate(seq));
        }
        self.next_seq = from;
        for mut e in entries {
            e.message.seq = self.next_seq;
            self.next_seq += 1;
            self.pending_ids.insert((e.message.sender_user_id, recent_ids::key_of(&e.message.client_msg_id)), e.message.seq);
            self.unsent.push(e);
        }
        Ok(())
    }

    /// Refuses everything pending with UNAVAILABLE (nothing of it was acknowledged, and
    /// the store refuses appends behind the gap, so retries are safe) and asks to fail.
    fn fail(&mut self, failure: SequencerFailure, out: &mut Vec<Action>) {
        self.failed = true;
        let error = RequestError::Unavailable(match failure {
            SequencerFailure::Store(_) => "message not stored".into(),
            _ => "conversation restarting".into(),
        });
        let mut pending: Vec<Entry> = std::mem::take(&mut self.unsent);
        for f in self.in_flight.drain(..) {
            if !f.void {
                pending.extend(f.entries);
            }
        }
        for e in pending {
            let request_ref = e.request_ref();
            for (user, device) in std::iter::once((e.message.sender_user_id, e.message.sender_device_id)).chain(e.waiters.iter().copied()) {
                out.push(reject(user, device, error.clone(), &request_ref));
            }
        }
        for p in std::mem::take(&mut self.parked) {
            let (user, device, request_ref) = match p {
                Parked::Send(r) => (r.user, r.device, r.client_msg_id),
                Parked::Edit(r) => (r.user, r.device, r.request_id.to_string()),
                Parked::Group(r) => (r.user, r.device, r.request_id.to_string()),
            };
            out.push(reject(user, device, error.clone(), &request_ref));
        }
        self.pending_ids.clear();
        self.awaiting_target = None;
        out.push(Action::Fail(failure));
    }

    // ---- bookkeeping ---------------------------------------------------------------

    /// The next seq and its time. Times never go backwards within a conversation, even if
    /// the wall clock does.
    fn next_position(&mut self, now_ms: u64) -> (u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let time = now_ms.max(self.last_time_ms);
        self.last_time_ms = time;
        (seq, time)
    }

    /// "Expired" is a rule every check applies, not an effect of the purge sweep: a
    /// message is expired once its time plus the conversation's retention has passed.
    fn expired(&self, time_ms: u64, now_ms: u64) -> bool {
        self.record.expired(time_ms, now_ms)
    }

    fn pending_entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        if let Some(e) = self.unsent.iter_mut().find(|e| e.message.seq == seq) {
            return Some(e);
        }
        self.in_flight.iter_mut().filter(|f| !f.void).flat_map(|f| f.entries.iter_mut()).find(|e| e.message.seq == seq)
    }

    fn pending_entry(&self, seq: u64) -> Option<&Entry> {
        self.unsent
            .iter()
            .find(|e| e.message.seq == seq)
            .or_else(|| self.in_flight.iter().filter(|f| !f.void).flat_map(|f| f.entries.iter()).find(|e| e.message.seq == seq))
    }

    fn lookup(&self, seq: u64) -> Lookup {
        if seq == 0 || seq >= self.next_seq {
            return Lookup::Missing;
        }
        if let Some(e) = self.pending_entry(seq) {
            return Lookup::Pending(TargetInfo::of(&e.message));
        }
        if let Some(t) = self.targets.iter().rev().find(|t| t.seq == seq) {
            return Lookup::Known(*t);
        }
        if let Some((_, found)) = self.loaded.iter().find(|(s, _)| *s == seq) {
            return found.map_or(Lookup::Missing, Lookup::Known);
        }
        if seq >= self.covered_from { Lookup::Missing } else { Lookup::Unknown }
    }

    fn remember_target(&mut self, info: TargetInfo) {
        if self.targets.len() >= self.limits.recent_messages.max(1)
            && let Some(old) = self.targets.pop_front()
        {
            self.covered_from = self.covered_from.max(old.seq + 1);
        }
        self.targets.push_back(info);
    }

    /// Marks a message deleted, and the edits and reactions that refer to it.
    fn mark_deleted(&mut self, target: u64) {
        for t in self.targets.iter_mut().chain(self.loaded.iter_mut().filter_map(|(_, t)| t.as_mut())) {
            if t.seq == target || (t.reference_seq == target && t.kind != ContentKind::Normal) {
                t.deleted = true;
            }
        }
    }
}

fn reject(user: UserId, device: DeviceId, error: RequestError, request_ref: &str) -> Action {
    Action::Reject { user, device, error, request_ref: request_ref.to_owned() }
}

impl From<group::GroupError> for RequestError {
    fn from(e: group::GroupError) -> Self {
        use group::GroupError;
        match e {
            GroupError::NotAGroup => RequestError::invalid("not a group"),
            GroupError::Invalid(m) => RequestError::invalid(m),
            GroupError::NotAMember(_) => RequestError::NotAMember,
            GroupError::NotAdmin => RequestError::NotAdmin("only group admins may do this".into()),
            GroupError::Full(n) => RequestError::GroupFull(n),
            GroupError::InvalidInvite => RequestError::InvalidInvite,
        }
    }
}

#[cfg(test)]
#[path = "sequencer_tests.rs"]
mod tests;
