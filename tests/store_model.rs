//! Model-based test of the store contract: random sequences of operations, restarts
//! (closing and reopening the database) included, run against the embedded store and a
//! plain in-memory model of the contract; every result must match.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use switchboard::store::{
    ConversationKind, ConversationRecord, Cursor, EmbeddedStore, Store, StoredMessage, WriteOp, WriteOutcome,
};
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    /// Append with seq = model's last + delta (delta 0 = taken, 1 = next, 2 = gap).
    Append { conv: u8, sender: u8, client: u8, delta: u8 },
    Cursor { device: u8, conv: u8, delivered: u8, read: u8 },
    CreateConversation { conv: u8, a: u8, b: u8 },
    After { conv: u8, after: u8, limit: u8 },
    Before { conv: u8, before: u8, limit: u8 },
    Find { conv: u8, sender: u8, client: u8 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..3, 0u8..6, prop_oneof![1 => Just(0u8), 8 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(conv, sender, client, delta)| Op::Append { conv, sender, client, delta }),
        2 => (0u8..3, 0u8..3, 0u8..20, 0u8..20).prop_map(|(device, conv, delivered, read)| Op::Cursor { device, conv, delivered, read }),
        1 => (0u8..3, 0u8..4, 0u8..4).prop_map(|(conv, a, b)| Op::CreateConversation { conv, a, b }),
        2 => (0u8..3, 0u8..20, 0u8..8).prop_map(|(conv, after, limit)| Op::After { conv, after, limit }),
        2 => (0u8..3, 0u8..20, 0u8..8).prop_map(|(conv, before, limit)| Op::Before { conv, before, limit }),
        2 => (0u8..3, 0u8..3, 0u8..6).prop_map(|(conv, sender, client)| Op::Find { conv, sender, client }),
        1 => Just(Op::Reopen),
    ]
}

fn id(kind: u8, n: u8) -> Uuid {
    Uuid::from_u128(((kind as u128) << 64) | n as u128 + 1)
}

#[derive(Default)]
struct Model {
    messages: BTreeMap<(Uuid, u64), StoredMessage>,
    dedup: BTreeMap<(Uuid, Uuid, String), (u64, u64)>,
    cursors: BTreeMap<(Uuid, Uuid), Cursor>,
    conversations: BTreeMap<Uuid, ConversationRecord>,
    by_user: BTreeSet<(Uuid, Uuid)>,
}

impl Model {
    fn last_seq(&self, conv: Uuid) -> u64 {
        self.messages.range((conv, 0)..=(conv, u64::MAX)).next_back().map(|(k, _)| k.1).unwrap_or(0)
    }

    fn apply(&mut self, op: &WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Append(m) => {
                let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.clone());
                if let Some(&(seq, server_time_ms)) = self.dedup.get(&key) {
                    return WriteOutcome::Duplicate { seq, server_time_ms };
                }
                if m.seq == 0 || self.messages.contains_key(&(m.conversation_id, m.seq)) || (m.seq > 1 && !self.messages.contains_key(&(m.conversation_id, m.seq - 1))) {
                    return WriteOutcome::SeqConflict;
                }
                self.messages.insert((m.conversation_id, m.seq), m.clone());
                self.dedup.insert(key, (m.seq, m.server_time_ms));
                WriteOutcome::Appended
            }
            WriteOp::AdvanceCursor { device_id, conversation_id, delivered, read, .. } => {
                let c = self.cursors.entry((*device_id, *conversation_id)).or_default();
                c.delivered = c.delivered.max(*delivered);
                c.read = c.read.max(*read);
                WriteOutcome::CursorAdvanced(*c)
            }
            WriteOp::LastSeen { .. } => WriteOutcome::Recorded,
            WriteOp::AppendEvent { .. } => unreachable!("the model test does not generate group events"),
        }
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path()).unwrap();
    let mut model = Model::default();
    let mut clock = 1_000u64;
    for op in ops {
        match op {
            Op::Append { conv, sender, client, delta } => {
                let conversation_id = id(1, conv);
                clock += 1;
                let seq = (model.last_seq(conversation_id) + delta as u64).max(if delta == 0 { 0 } else { 1 });
                let m = StoredMessage {
                    conversation_id,
                    seq,
                    sender_user_id: id(2, sender),
                    sender_device_id: id(3, sender),
                    client_msg_id: format!("c{client}"),
                    server_time_ms: clock,
                    payload: Bytes::from(format!("p{clock}")),
                    event: None,
                    kind: Default::default(),
                    reference_seq: 0,
                    deleted: false,
                };
                // Batches of two, so outcomes within one transaction are compared too.
                let ops = vec![WriteOp::Append(m.clone()), WriteOp::AdvanceCursor { user_id: id(2, sender), device_id: id(3, sender), conversation_id, delivered: seq, read: 0, at_ms: clock }];
                let expected: Vec<WriteOutcome> = ops.iter().map(|o| model.apply(o)).collect();
                assert_eq!(store.apply(ops).await.unwrap(), expected);
            }
            Op::Cursor { device, conv, delivered, read } => {
                let op = WriteOp::AdvanceCursor { user_id: id(2, device), device_id: id(3, device), conversation_id: id(1, conv), delivered: delivered as u64, read: read as u64, at_ms: 0 };
                let expected = model.apply(&op);
                assert_eq!(store.apply(vec![op]).await.unwrap(), vec![expected]);
            }
            Op::CreateConversation { conv, a, b } => {
                let mut members = vec![id(2, a), id(2, b)];
                members.sort();
                members.dedup();
                let record = ConversationRecord { conversation_id: id(1, conv), kind: ConversationKind::Direct, members, created_ms: clock, group: None, retention_secs: 0 };
                let expected = model.conversations.entry(record.conversation_id).or_insert_with(|| record.clone()).clone();
                if expected == record {
                    for m in &record.members {
                        model.by_user.insert((*m, record.conversation_id));
                    }
                }
                assert_eq!(store.create_conversation(record).await.unwrap(), expected);
                for user in 0..4 {
                    let u = id(2, user);
                    let expected: Vec<Uuid> = model.by_user.range((u, Uuid::nil())..=(u, Uuid::max())).map(|(_, c)| *c).collect();
                    assert_eq!(store.conversations_of(u).await.unwrap(), expected);
                }
            }
            Op::After { conv, after, limit } => {
                let c = id(1, conv);
                let expected: Vec<StoredMessage> =
                    model.messages.range((c, after as u64 + 1)..=(c, u64::MAX)).take(limit as usize).map(|(_, m)| m.clone()).collect();
                assert_eq!(store.messages_after(c, after as u64, limit as usize).await.unwrap(), expected);
            }
            Op::Before { conv, before, limit } => {
                let c = id(1, conv);
                let upper = if before == 0 { u64::MAX } else { before as u64 };
                let expected: Vec<StoredMessage> =
                    model.messages.range((c, 0)..(c, upper)).rev().take(limit as usize).map(|(_, m)| m.clone()).collect();
                let expected = if before == 0 {
                    model.messages.range((c, 0)..=(c, u64::MAX)).rev().take(limit as usize).map(|(_, m)| m.clone()).collect()
                } else {
                    expected
                };
                assert_eq!(store.messages_before(c, before as u64, limit as usize).await.unwrap(), expected);
                assert_eq!(store.last_seq(c).await.unwrap(), model.last_seq(c));
            }
            Op::Find { conv, sender, client } => {
                let key = (id(1, conv), id(2, sender), format!("c{client}"));
                assert_eq!(store.find_by_client_id(key.0, key.1, &key.2).await.unwrap(), model.dedup.get(&key).copied());
            }
            Op::Reopen => {
                drop(store);
                store = EmbeddedStore::open(dir.path()).unwrap();
                for device in 0..3 {
                    let d = id(3, device);
                    let expected: Vec<(Uuid, Cursor)> =
                        model.cursors.iter().filter(|((dev, _), cur)| *dev == d && **cur != Cursor::default()).map(|((_, c), cur)| (*c, *cur)).collect();
                    assert_eq!(store.cursors_of(d).await.unwrap(), expected);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn embedded_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
