//! Tests of the sequencer: examples of each rule, and a property test that drives it
//! against a model of the store contract (ARCHITECTURE.md, "Store contract") through any
//! interleaving of sends, retries, commits, failed commits and restarts.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::ids::ConversationId;
use crate::store::{ConversationKind, GroupState};

// ---- a model of the store contract -------------------------------------------------

#[derive(Default, Clone)]
struct ModelStore {
    log: BTreeMap<u64, StoredMessage>,
    dedup: HashMap<(UserId, String), (u64, u64)>,
}

impl ModelStore {
    fn last_seq(&self) -> u64 {
        self.log.keys().next_back().copied().unwrap_or(0)
    }

    /// One transaction, outcomes in order, each op seeing the ones before it.
    fn apply(&mut self, ops: &[WriteOp]) -> Vec<WriteOutcome> {
        ops.iter()
            .map(|op| {
                let m = match op {
                    WriteOp::Append(m) => m,
                    WriteOp::AppendEvent { message, .. } => message,
                    other => panic!("unexpected op {other:?}"),
                };
                let key = (m.sender_user_id, m.client_msg_id.clone());
                if let Some(&(seq, server_time_ms)) = self.dedup.get(&key) {
                    return WriteOutcome::Duplicate { seq, server_time_ms };
                }
                if m.seq != self.last_seq() + 1 {
                    return WriteOutcome::SeqConflict;
                }
                self.dedup.insert(key, (m.seq, m.server_time_ms));
                self.log.insert(m.seq, m.clone());
                WriteOutcome::Appended
            })
            .collect()
    }

    fn tail(&self, n: usize) -> (Vec<StoredMessage>, bool) {
        let tail: Vec<StoredMessage> = self.log.values().rev().take(n).cloned().collect();
        let complete = tail.len() == self.log.len();
        (tail, complete)
    }

    fn check_shape(&self) {
        for (i, (seq, m)) in self.log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "the log has a gap");
            assert_eq!(m.seq, *seq);
        }
    }
}

fn direct(a: UserId, b: UserId) -> ConversationRecord {
    ConversationRecord::direct(a, b, 1)
}

fn group_of(admin: UserId, others: &[UserId]) -> ConversationRecord {
    let mut members = vec![admin];
    members.extend_from_slice(others);
    members.sort();
    ConversationRecord {
        conversation_id: ConversationId::random(),
        kind: ConversationKind::Group,
        members: members.clone(),
        created_ms: 1,
        group: Some(Box::new(GroupState {
            subject: "g".into(),
            admins: vec![admin],
            joined: members.iter().map(|m| (*m, 1)).collect(),
            ..Default::default()
        })),
        retention_secs: 0,
    }
}

fn send(user: UserId, device: DeviceId, id: &str) -> SendRequest {
    SendRequest {
        user,
        device,
        client_msg_id: id.into(),
        payload: Bytes::from(format!("p-{id}")),
        kind: ContentKind::Normal,
        reference_seq: 0,
        attachments: Vec::new(),
    }
}

fn writes(out: &[Action]) -> Vec<(BatchId, Vec<WriteOp>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Write { batch, ops } => Some((*batch, ops.clone())),
            _ => None,
        })
        .collect()
}

fn acks(out: &[Action]) -> Vec<Ack> {
    let mut acks = Vec::new();
    for a in out {
        match a {
            Action::Ack(ack) => acks.push(ack.clone()),
            Action::Committed(messages) => acks.extend(messages.iter().flat_map(|m| m.acks.iter().cloned())),
            _ => {}
        }
    }
    acks
}

fn rejects(out: &[Action]) -> Vec<RequestError> {
    out.iter()
        .filter_map(|a| match a {
            Action::Reject { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// Commits every write in `out` against `store` and feeds the outcomes back.
fn commit_all(seq: &mut Sequencer, store: &mut ModelStore, out: Vec<Action>) -> Vec<Action> {
    let mut pending: std::collections::VecDeque<Action> = out.into();
    let mut seen = Vec::new();
    while let Some(action) = pending.pop_front() {
        if let Action::Write { batch, ops } = &action {
            let outcomes = store.apply(ops);
            let mut next = Vec::new();
            seq.persisted(*batch, Ok(outcomes), &mut next);
            pending.extend(next);
        }
        seen.push(action);
    }
    seen
}

// ---- examples ----------------------------------------------------------------------

#[test]
fn a_send_is_acknowledged_only_after_its_commit() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "m1"), 1_000, &mut out);
    assert!(out.is_empty(), "nothing leaves before the flush");
    s.flush(&mut out);
    let w = writes(&out);
    assert_eq!(w.len(), 1);
    assert!(acks(&out).is_empty(), "no ack before the commit");
    let mut store = ModelStore::default();
    let outcomes = store.apply(&w[0].1);
    let mut out = Vec::new();
    s.persisted(w[0].0, Ok(outcomes), &mut out);
    let a1 = acks(&out);
    assert_eq!(a1.len(), 1);
    assert_eq!((a1[0].seq, a1[0].duplicate, a1[0].device), (1, false, da));
    let Some(Action::Committed(m)) = out.iter().find(|a| matches!(a, Action::Committed(_))) else { panic!("no delivery") };
    assert_eq!(m[0].except, Some(da));
    assert_eq!(&m[0].message.payload[..], b"p-m1");
}

#[test]
fn everything_sequenced_in_one_wake_up_is_one_write() {
    let (a, b) = (UserId::random(), UserId::random());
    let mut s = Sequencer::new(direct(a, b), 7, Vec::new(), false, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    for i in 0..10 {
        s.send(send(if i % 2 == 0 { a } else { b }, DeviceId::random(), &format!("m{i}")), 1_000 + i, &mut out);
    }
    s.flush(&mut out);
    let w = writes(&out);
    assert_eq!(w.len(), 1);
    let seqs: Vec<u64> = w[0]
        .1
        .iter()
        .map(|op| match op {
            WriteOp::Append(m) => m.seq,
            _ => 0,
        })
        .collect();
    assert_eq!(seqs, (8..18).collect::<Vec<_>>());
}

#[test]
fn a_retry_is_answered_from_the_window_or_waits_for_the_first_copy() {
    let (a, b, d1, d2) = (UserId::random(), UserId::random(), DeviceId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut store = ModelStore::default();
    let mut out = Vec::new();
    s.send(send(a, d1, "x"), 10, &mut out);
    // The same id from another device while the first copy is pending: it waits for it.
    s.send(send(a, d2, "x"), 11, &mut out);
    s.flush(&mut out);
    let seen = commit_all(&mut s, &mut store, out);
    let got = acks(&seen);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|a| a.seq == 1));
    assert_eq!(got.iter().filter(|a| a.duplicate).count(), 1);
    // After the commit, from the window, at once.
    let mut out = Vec::new();
    s.send(send(a, d1, "x"), 12, &mut out);
    assert_eq!(acks(&out), vec![Ack { user: a, device: d1, client_msg_id: "x".into(), seq: 1, time_ms: 10, duplicate: true }]);
    assert!(writes(&out).is_empty());
    assert_eq!(store.last_seq(), 1);
}

#[test]
fn an_idle_sequencer_keeps_no_room_for_its_pipeline_and_still_answers_retries() {
    let (a, b, d) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut store = ModelStore::default();
    let mut out = Vec::new();
    for i in 0..5 {
        s.send(send(a, d, &format!("m{i}")), 10 + i, &mut out);
    }
    s.flush(&mut out);
    s.shrink_idle();
    assert!(s.in_flight.capacity() > 0, "not idle: nothing is given back");
    commit_all(&mut s, &mut store, out);
    assert!(s.is_idle());
    s.shrink_idle();
    assert_eq!((s.unsent.capacity(), s.in_flight.capacity(), s.parked.capacity(), s.pending_ids.capacity()), (0, 0, 0, 0));
    // What a later request needs is kept: a retry is still answered from the window.
    let mut out = Vec::new();
    s.send(send(a, d, "m3"), 20, &mut out);
    assert_eq!(acks(&out), vec![Ack { user: a, device: d, client_msg_id: "m3".into(), seq: 4, time_ms: 13, duplicate: true }]);
    s.send(send(a, d, "m5"), 21, &mut out);
    s.flush(&mut out);
    let seen = commit_all(&mut s, &mut store, out);
    assert_eq!(acks(&seen).last().map(|a| a.seq), Some(6));
}

#[test]
fn a_window_miss_is_answered_by_the_store_and_what_followed_is_renumbered() {
    let (a, b, da, db) = (UserId::random(), UserId::random(), DeviceId::random(), DeviceId::random());
    let mut store = ModelStore::default();
    // An earlier activation stored "old" at seq 1 and its ack was lost.
    let record = direct(a, b);
    let mut first = Sequencer::new(record.clone(), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    first.send(send(a, da, "old"), 5, &mut out);
    first.flush(&mut out);
    for (_, ops) in writes(&out) {
        store.apply(&ops);
    }
    // A new activation that did not read it (the tail is empty: the window misses).
    let mut s = Sequencer::new(record, store.last_seq(), Vec::new(), false, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(b, db, "n1"), 10, &mut out);
    s.send(send(a, da, "old"), 11, &mut out);
    s.send(send(b, db, "n2"), 12, &mut out);
    s.flush(&mut out);
    // A second batch in flight behind it.
    s.send(send(a, da, "n3"), 13, &mut out);
    s.flush(&mut out);
    let seen = commit_all(&mut s, &mut store, out);
    store.check_shape();
    let got = acks(&seen);
    let by_id: HashMap<&str, &Ack> = got.iter().map(|a| (a.client_msg_id.as_str(), a)).collect();
    assert_eq!((by_id["old"].seq, by_id["old"].duplicate), (1, true));
    assert_eq!(by_id["n1"].seq, 2);
    assert_eq!(by_id["n2"].seq, 3, "renumbered behind the duplicate");
    assert_eq!(by_id["n3"].seq, 4, "the voided batch was sequenced again");
    assert_eq!(store.last_seq(), 4);
    assert!(s.is_idle());
}

#[test]
fn a_failed_commit_refuses_everything_pending_and_asks_to_fail() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "1"), 1, &mut out);
    s.flush(&mut out);
    s.send(send(a, da, "2"), 2, &mut out);
    s.flush(&mut out);
    s.send(send(a, da, "3"), 3, &mut out);
    let w = writes(&out);
    let mut out = Vec::new();
    s.persisted(w[0].0, Err("disk on fire".into()), &mut out);
    assert!(acks(&out).is_empty());
    assert_eq!(rejects(&out).len(), 3);
    assert!(rejects(&out).iter().all(|e| e.code() == crate::protocol::ErrorCode::Unavailable));
    assert!(matches!(out.last(), Some(Action::Fail(SequencerFailure::Store(_)))));
    // Once failed, new requests are refused until the restart.
    let mut out = Vec::new();
    s.send(send(a, da, "4"), 4, &mut out);
    assert_eq!(rejects(&out).len(), 1);
}

#[test]
fn a_batch_with_too_few_outcomes_fails_loudly() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "1"), 1, &mut out);
    s.send(send(a, da, "2"), 1, &mut out);
    s.flush(&mut out);
    let w = writes(&out);
    let mut out = Vec::new();
    s.persisted(w[0].0, Ok(vec![WriteOutcome::Appended]), &mut out);
    assert!(acks(&out).is_empty(), "no ack when the outcomes cannot be matched to the ops");
    assert_eq!(rejects(&out).len(), 2);
    assert!(matches!(out.last(), Some(Action::Fail(SequencerFailure::Contract(_)))));
}

#[test]
fn another_sequencers_append_fences_this_one_out() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "1"), 1, &mut out);
    s.flush(&mut out);
    let w = writes(&out);
    let mut out = Vec::new();
    s.persisted(w[0].0, Ok(vec![WriteOutcome::SeqConflict]), &mut out);
    assert!(matches!(out.last(), Some(Action::Fail(SequencerFailure::Conflict(1)))));
}

#[test]
fn edits_reactions_and_deletes_follow_the_rules() {
    let (a, b, da, db) = (UserId::random(), UserId::random(), DeviceId::random(), DeviceId::random());
    let mut store = ModelStore::default();
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "m"), 1, &mut out);
    s.flush(&mut out);
    commit_all(&mut s, &mut store, out);
    let edit = |user, device, id: &str, kind, target| SendRequest {
        user,
        device,
        client_msg_id: id.into(),
        payload: Bytes::from_static(b"e"),
        kind,
        reference_seq: target,
        attachments: Vec::new(),
    };
    let mut out = Vec::new();
    s.send(edit(b, db, "e1", ContentKind::Edit, 1), 2, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::invalid("only the sender of a message may edit it")]);
    let mut out = Vec::new();
    s.send(edit(b, db, "r1", ContentKind::Reaction, 1), 2, &mut out);
    s.send(edit(a, da, "r2", ContentKind::Reaction, 5), 2, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::invalid("reference_seq must name an earlier message")]);
    s.flush(&mut out);
    commit_all(&mut s, &mut store, out);
    // A reaction to a reaction is refused.
    let mut out = Vec::new();
    s.send(edit(a, da, "r3", ContentKind::Reaction, 2), 3, &mut out);
    assert_eq!(rejects(&out).len(), 1);
    // b may not delete a's message in a 1:1; a may.
    let mut out = Vec::new();
    s.edit(EditRequest { user: b, device: db, request_id: 7, op: ConversationOp::Delete(1) }, 4, &mut out);
    assert_eq!(rejects(&out)[0].code(), crate::protocol::ErrorCode::NotAdmin);
    let mut out = Vec::new();
    s.edit(EditRequest { user: a, device: da, request_id: 8, op: ConversationOp::Delete(1) }, 4, &mut out);
    assert!(rejects(&out).is_empty());
    // Judged in log order: right after the delete, reacting to it is refused.
    s.send(edit(b, db, "r4", ContentKind::Reaction, 1), 5, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::invalid("that message was deleted")]);
    s.flush(&mut out);
    let seen = commit_all(&mut s, &mut store, out);
    let answered = seen.iter().any(|a| matches!(a, Action::Committed(m) if m.iter().any(|c| c.answer.as_ref().is_some_and(|x| x.request_id == 8))));
    assert!(answered);
    // Deleting an event is refused.
    let mut out = Vec::new();
    s.edit(EditRequest { user: a, device: da, request_id: 9, op: ConversationOp::Delete(3) }, 6, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::invalid("that message cannot be deleted")]);
}

#[test]
fn expiry_is_a_rule_not_an_effect_of_the_sweep() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut record = direct(a, b);
    record.retention_secs = 2;
    let mut store = ModelStore::default();
    let mut s = Sequencer::new(record, 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.send(send(a, da, "m"), 10_000, &mut out);
    s.flush(&mut out);
    commit_all(&mut s, &mut store, out);
    let mut out = Vec::new();
    s.edit(EditRequest { user: a, device: da, request_id: 1, op: ConversationOp::Delete(1) }, 12_000, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::invalid("that message has expired")]);
    // Its id is no longer a duplicate once it expired: the window forgets it (the store's
    // key expires with the message too).
    let mut out = Vec::new();
    s.send(send(a, da, "m"), 12_000, &mut out);
    assert!(acks(&out).is_empty());
    assert_eq!(s.unsent(), 1);
}

#[test]
fn an_old_target_is_read_once_and_requests_wait_in_order() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let limits = SequencerLimits { recent_messages: 2, ..SequencerLimits::default() };
    let mut s = Sequencer::new(direct(a, b), 100, Vec::new(), false, Vec::new(), limits);
    let mut out = Vec::new();
    let mut reaction = send(a, da, "r");
    reaction.kind = ContentKind::Reaction;
    reaction.reference_seq = 40;
    s.send(reaction, 1, &mut out);
    s.send(send(a, da, "after"), 2, &mut out);
    assert!(matches!(out.as_slice(), [Action::LoadTarget { seq: 40 }]));
    assert_eq!(s.unsent(), 0, "the later send waits behind the read");
    let target = TargetInfo { seq: 40, sender: b, kind: ContentKind::Normal, is_event: false, deleted: false, time_ms: 0, reference_seq: 0 };
    let mut out = Vec::new();
    s.target_loaded(40, Some(target), 3, &mut out);
    s.flush(&mut out);
    let w = writes(&out);
    let ids: Vec<String> = w[0]
        .1
        .iter()
        .map(|op| match op {
            WriteOp::Append(m) => format!("{}@{}", m.client_msg_id, m.seq),
            _ => String::new(),
        })
        .collect();
    assert_eq!(ids, vec!["r@101", "after@102"]);
}

#[test]
fn group_changes_are_judged_in_log_order() {
    let (admin, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let (dadmin, db) = (DeviceId::random(), DeviceId::random());
    let mut store = ModelStore::default();
    let mut s = Sequencer::new(group_of(admin, &[b, c]), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    s.group(GroupRequest { user: admin, device: dadmin, request_id: 1, op: group::GroupOp::Created }, 1, &mut out);
    s.group(GroupRequest { user: admin, device: dadmin, request_id: 2, op: group::GroupOp::Remove(b) }, 2, &mut out);
    // b's send right after its removal was sequenced: refused, although nothing is stored yet.
    s.send(send(b, db, "late"), 3, &mut out);
    assert_eq!(rejects(&out), vec![RequestError::NotAMember]);
    s.flush(&mut out);
    let seen = commit_all(&mut s, &mut store, out);
    let committed: Vec<&CommittedMessage> = seen
        .iter()
        .filter_map(|a| match a {
            Action::Committed(m) => Some(m.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(committed.len(), 2);
    assert!(committed[1].recipients.contains(&b), "the removed member gets the event that removes them");
    assert!(!s.record().is_member(b));
}

#[test]
fn a_hand_off_waits_for_what_is_in_flight() {
    let (a, b, da) = (UserId::random(), UserId::random(), DeviceId::random());
    let mut s = Sequencer::new(direct(a, b), 0, Vec::new(), true, Vec::new(), SequencerLimits::default());
    let mut store = ModelStore::default();
    let mut out = Vec::new();
    s.send(send(a, da, "1"), 1, &mut out);
    s.flush(&mut out);
    let mut more = Vec::new();
    s.hand_off(&mut more);
    assert!(more.is_empty());
    let seen = commit_all(&mut s, &mut store, out);
    assert!(matches!(seen.last(), Some(Action::HandedOff)));
}

#[test]
fn group_receipts_are_coalesced() {
    let (admin, b) = (UserId::random(), UserId::random());
    let mut s = Sequencer::new(group_of(admin, &[b]), 3, Vec::new(), false, Vec::new(), SequencerLimits::default());
    let mut out = Vec::new();
    let mv = CursorMove { user: b, device: DeviceId::random(), kind: pb::ReceiptKind::Read, seq: 3 };
    s.cursor(mv, &mut out);
    s.cursor(mv, &mut out);
    assert_eq!(out.iter().filter(|a| matches!(a, Action::ScheduleReceiptFlush)).count(), 1);
    assert!(out.iter().all(|a| !matches!(a, Action::Receipt { only: None, .. })), "groups relay only to the mover's own devices");
}

// ---- the property ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// A device sends client id `id` (ids repeat: retries).
    Send { device: u8, id: u8 },
    /// The actor's mailbox is empty: flush.
    Flush,
    /// The writer commits the oldest batch it holds.
    Commit,
    /// The writer's batch fails; `landed` says whether it was stored anyway.
    CommitFails { landed: bool },
    /// The actor crashes; the writer still commits what it holds (the restart waits for
    /// it), then a new activation starts from the store with `tail` recent messages.
    Restart { tail: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..3, 0u8..10).prop_map(|(device, id)| Step::Send { device, id }),
        2 => Just(Step::Flush),
        3 => Just(Step::Commit),
        1 => any::<bool>().prop_map(|landed| Step::CommitFails { landed }),
        1 => (0u8..4).prop_map(|tail| Step::Restart { tail }),
    ]
}

struct World {
    users: [UserId; 2],
    devices: [DeviceId; 3],
    record: ConversationRecord,
    store: ModelStore,
    seq: Sequencer,
    /// Writes handed to the writer, oldest first.
    writer: std::collections::VecDeque<(BatchId, Vec<WriteOp>)>,
    /// Every ack given: (user, client id) → seq.
    acked: HashMap<(UserId, String), u64>,
    /// Deliveries per seq (the committed messages), across activations.
    delivered: BTreeMap<u64, (UserId, String)>,
    /// Client ids sent at least once, per device.
    sent: std::collections::BTreeSet<(usize, u8)>,
    /// Times the sequencer asked to fail.
    fails: usize,
    clock: u64,
}

impl World {
    fn new() -> Self {
        let users = [UserId::random(), UserId::random()];
        let record = direct(users[0], users[1]);
        let seq = Sequencer::new(record.clone(), 0, Vec::new(), true, Vec::new(), SequencerLimits { max_batch: 4, ..SequencerLimits::default() });
        Self {
            users,
            devices: [DeviceId::random(), DeviceId::random(), DeviceId::random()],
            record,
            store: ModelStore::default(),
            seq,
            writer: Default::default(),
            acked: HashMap::new(),
            delivered: BTreeMap::new(),
            sent: Default::default(),
            fails: 0,
            clock: 1_000,
        }
    }

    fn user_of(&self, device: usize) -> UserId {
        // Devices 0 and 1 belong to user 0 (multi-device), device 2 to user 1.
        if device < 2 { self.users[0] } else { self.users[1] }
    }

    fn take(&mut self, out: Vec<Action>) -> bool {
        let mut failed = false;
        for action in out {
            match action {
                Action::Write { batch, ops } => self.writer.push_back((batch, ops)),
                Action::Ack(ack) => self.check_ack(&ack),
                Action::Committed(messages) => {
                    for m in messages {
                        // Delivered only what is stored, exactly as stored.
                        assert_eq!(self.store.log.get(&m.message.seq), Some(&m.message), "delivered something not stored");
                        let key = (m.message.sender_user_id, m.message.client_msg_id.clone());
                        if let Some(prev) = self.delivered.insert(m.message.seq, key.clone()) {
                            assert_eq!(prev, key, "two messages delivered at one seq");
                        }
                        for ack in &m.acks {
                            self.check_ack(ack);
                        }
                    }
                }
                Action::Fail(_) => {
                    self.fails += 1;
                    failed = true;
                }
                Action::Reject { error, .. } => assert_eq!(error.code(), crate::protocol::ErrorCode::Unavailable),
                _ => {}
            }
        }
        failed
    }

    /// An ack names a stored message with the same sender and id, and one seq per id.
    fn check_ack(&mut self, ack: &Ack) {
        let stored = self.store.log.get(&ack.seq).expect("acknowledged a seq that is not stored");
        assert_eq!((stored.sender_user_id, stored.client_msg_id.as_str()), (ack.user, ack.client_msg_id.as_str()));
        if let Some(prev) = self.acked.insert((ack.user, ack.client_msg_id.clone()), ack.seq) {
            assert_eq!(prev, ack.seq, "one client id acknowledged at two seqs");
        }
    }

    fn restart(&mut self, tail: usize) {
        // The writer commits what it holds; the old activation never hears of it.
        while let Some((_, ops)) = self.writer.pop_front() {
            self.store.apply(&ops);
        }
        let (tail, complete) = self.store.tail(tail);
        self.seq = Sequencer::new(
            self.record.clone(),
            self.store.last_seq(),
            tail,
            complete,
            Vec::new(),
            SequencerLimits { max_batch: 4, ..SequencerLimits::default() },
        );
    }

    fn run(&mut self, step: Step) {
        self.clock += 1;
        let mut out = Vec::new();
        match step {
            Step::Send { device, id } => {
                let d = device as usize;
                self.sent.insert((d, id));
                let request = SendRequest {
                    user: self.user_of(d),
                    device: self.devices[d],
                    client_msg_id: format!("u{}-{id}", if d < 2 { 0 } else { 1 }),
                    payload: Bytes::from_static(b"x"),
                    kind: ContentKind::Normal,
                    reference_seq: 0,
                    attachments: Vec::new(),
                };
                self.seq.send(request, self.clock, &mut out);
            }
            Step::Flush => self.seq.flush(&mut out),
            Step::Commit => {
                if let Some((batch, ops)) = self.writer.pop_front() {
                    let outcomes = self.store.apply(&ops);
                    self.seq.persisted(batch, Ok(outcomes), &mut out);
                }
            }
            Step::CommitFails { landed } => {
                if let Some((batch, ops)) = self.writer.pop_front() {
                    if landed {
                        self.store.apply(&ops);
                    }
                    self.seq.persisted(batch, Err("timeout".into()), &mut out);
                }
            }
            Step::Restart { tail } => return self.restart(tail as usize),
        }
        if self.take(out) {
            self.restart(2);
        }
        // As the actor does after every wake-up: an idle pipeline gives back its room.
        self.seq.shrink_idle();
        self.store.check_shape();
    }

    /// Lets everything settle: flush, commit, until idle.
    fn drain(&mut self) {
        for _ in 0..100 {
            let mut out = Vec::new();
            self.seq.flush(&mut out);
            let failed = self.take(out);
            if failed {
                self.restart(2);
            }
            let Some((batch, ops)) = self.writer.pop_front() else {
                if self.seq.is_idle() {
                    return;
                }
                continue;
            };
            let outcomes = self.store.apply(&ops);
            let mut out = Vec::new();
            self.seq.persisted(batch, Ok(outcomes), &mut out);
            if self.take(out) {
                self.restart(2);
            }
        }
        panic!("the sequencer did not settle");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any interleaving of sends (with retries from several devices), flushes, commits,
    /// failed commits (stored or not) and restarts: every ack names a durable message with
    /// its sender and id, one seq per client id, the log has no gap and no client id
    /// twice, and deliveries carry exactly what is stored.
    #[test]
    fn acks_are_durable_and_seqs_contiguous_under_any_interleaving(steps in proptest::collection::vec(step(), 1..80)) {
        let mut world = World::new();
        for s in steps {
            world.run(s);
        }
        world.drain();
        world.store.check_shape();
        // Liveness, once the store behaves: every client retries what it sent; each retry
        // is answered with its original seq (from the window or the store) and nothing
        // needs a restart to get there.
        let fails = world.fails;
        for (device, id) in world.sent.clone() {
            world.run(Step::Send { device: device as u8, id });
        }
        world.drain();
        prop_assert_eq!(world.fails, fails, "a retry made the sequencer fail");
        for (device, id) in world.sent.clone() {
            let key = (world.user_of(device), format!("u{}-{id}", if device < 2 { 0 } else { 1 }));
            prop_assert!(world.acked.contains_key(&key), "{:?} never acknowledged", key);
        }
        let mut ids = std::collections::HashSet::new();
        for m in world.store.log.values() {
            prop_assert!(ids.insert((m.sender_user_id, m.client_msg_id.clone())), "a client id stored twice");
        }
    }
}
