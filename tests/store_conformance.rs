//! The store contract's conformance suite: every scenario below is written once and run
//! against every backend (embedded always; PostgreSQL always, on a private server started
//! by the test; ScyllaDB when `SCYLLA_URI=scylla://host1,host2/<keyspace prefix>` is set:
//! each test then migrates a keyspace of its own, `<prefix>_<random>`, with replication
//! `SCYLLA_REPLICATION` (default SimpleStrategy, 1 replica), and otherwise returns at once
//! after printing that it was skipped). A backend passes when it gives the same answers as the contract in
//! `src/store/mod.rs` and ARCHITECTURE.md ("Store contract"), including across restarts.
//!
//! The last part is model-based: random sequences of operations, restarts included, run
//! against the backend and a plain in-memory model of the contract; every result must match.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use switchboard::cores::privacy::{Audience, OnlineAudience};
use switchboard::cores::status::LIFETIME_MS;
use switchboard::ids::{ConversationId, DeviceId, Id, MediaId, StatusId, UserId};
use switchboard::store::{
    ChatState, ChatUpdate, ClaimedKey, CodeCheck, ContentKind, ConversationKind, ConversationRecord, Cursor, DeviceKeys, DeviceRecord, GroupState,
    InboxError, KeysStored, MediaKind, MediaPart, MediaRecord, MemberCursor, OneTimeKey, PairingApproval, PairingClaim, PairingRecord, PendingCode,
    PrivacySettings, Profile, ProfilePhoto, PushToken, QueueBounds, Record, Section, StatusAudience, StatusPost, StatusPut, StatusView, Store,
    StoreError, StoreSpec, StoredMessage, Taken, ToDeviceEntry, ToDeviceSend, ToDeviceStored, ToDeviceTarget, UserRecord, WriteOp, WriteOutcome,
    now_ms,
};
use switchboard::testkit::PrivatePostgres;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Backends

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Postgres,
    Scylla,
}

/// One backend instance for one test: a temp dir for the embedded store, or a private
/// PostgreSQL server.
struct Fixture {
    backend: Backend,
    dir: tempfile::TempDir,
    pg: Option<PrivatePostgres>,
    url: String,
}

impl Fixture {
    /// None when the backend cannot run here (ScyllaDB without `SCYLLA_URI`).
    async fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pg, url) = match backend {
            Backend::Scylla => {
                let Ok(base) = std::env::var("SCYLLA_URI") else {
                    eprintln!("SKIPPED: ScyllaDB conformance needs SCYLLA_URI=scylla://host/keyspace_prefix");
                    return None;
                };
                let url = format!("{base}_{}", uid::<Uuid>().simple());
                let Ok(switchboard::store::StoreSpec::Scylla { options }) = StoreSpec::parse(&url) else {
                    panic!("SCYLLA_URI {base:?} is not scylla://host/keyspace_prefix")
                };
                let replication =
                    std::env::var("SCYLLA_REPLICATION").unwrap_or_else(|_| "{'class': 'SimpleStrategy', 'replication_factor': 1}".into());
                switchboard::store::ScyllaStore::migrate(&options, &replication).await.expect("migrate scylla keyspace");
                (None, url)
            }
            Backend::Embedded => (None, format!("embedded:{}", dir.path().join("data").display())),
            Backend::Postgres => {
                let pg = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap().expect("private postgres");
                let url = pg.create_database("conformance").await.expect("create database");
                (Some(pg), url)
            }
        };
        Some(Self { backend, dir, pg, url })
    }

    async fn open(&self) -> Arc<dyn Store> {
        StoreSpec::parse(&self.url).expect("spec").open().await.expect("open store")
    }

    /// Closes `store` and opens the backend again; PostgreSQL is also crashed and restarted
    /// (immediate shutdown), so only what was committed can come back.
    async fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        store.flush().await.expect("flush");
        drop(store);
        if let Some(pg) = self.pg.as_mut() {
            pg.restart().expect("postgres restart");
        }
        let _ = &self.dir;
        self.open().await
    }
}

/// Runs each listed `async fn name(f: Fixture)` once per backend, as `embedded::name`,
/// `postgres::name` and `scylla::name`.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Backend::Embedded).await.unwrap()).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Backend::Postgres).await.unwrap()).await })*
        }
        mod scylla {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(f) = super::Fixture::new(super::Backend::Scylla).await {
                    super::$name(f).await
                }
            })*
        }
    };
}

every_backend!(
    codes_users_and_devices,
    one_time_codes_are_used_once,
    conversations_and_group_events,
    appends_are_fenced_and_idempotent,
    cursors_receipts_and_presence,
    push_tokens,
    contacts_and_phone_lookups,
    privacy_settings_and_blocks,
    pairings_are_approved_once_and_claimed_once,
    expired_messages_are_purged_but_the_fence_holds,
    racing_sequencers_store_each_seq_once,
    writes_survive_a_restart,
    imports_are_idempotent_and_counted,
    media_records_change_by_compare_and_set,
    attachments_reference_media_until_the_message_goes,
    model_based_sequences_with_restarts,
    key_directory_keys_claims_and_revocation,
    concurrent_claims_hand_each_key_out_once,
    to_device_queues_hold_until_acknowledged,
    racing_to_device_sends_take_each_position_once,
    a_sender_gets_a_share_of_a_device_queue,
    device_list_notices_until_acknowledged,
    rate_buckets_are_shared_and_atomic,
    an_expired_message_frees_its_client_id,
    a_delete_for_everyone_blanks_its_edits_and_reactions,
    chat_states_and_the_pin_limit,
    numbers_move_and_deleted_accounts_keep_nothing_of_theirs,
    status_posts_live_24_hours_and_are_purged,
);

// ---------------------------------------------------------------------------------------
// Builders

fn uid<T: Id>() -> T {
    T::from_uuid(Uuid::new_v4())
}

fn user(phone: &str) -> UserRecord {
    UserRecord { user_id: uid(), phone: phone.to_owned(), created_ms: 1_000 }
}

fn device(user_id: UserId, created_ms: u64) -> DeviceRecord {
    DeviceRecord {
        device_id: uid(),
        user_id,
        name: format!("device {created_ms}"),
        primary: false,
        token_hash: *uid::<Uuid>().as_bytes().repeat(2).first_chunk::<32>().unwrap(),
        created_ms,
        revoked_ms: None,
    }
}

fn message(conversation_id: ConversationId, seq: u64, sender: UserId, client: &str, time: u64) -> StoredMessage {
    StoredMessage {
        conversation_id,
        seq,
        sender_user_id: sender,
        sender_device_id: DeviceId::from_u128(sender.as_u128() ^ 1),
        client_msg_id: client.to_owned(),
        server_time_ms: time,
        payload: Bytes::from(format!("payload of {client}")),
        event: None,
        kind: ContentKind::Normal,
        reference_seq: 0,
        deleted: false,
        attachments: Vec::new(),
    }
}

fn media(owner: UserId, length: u64) -> MediaRecord {
    MediaRecord {
        media_id: uid(),
        owner,
        kind: MediaKind::Attachment,
        length,
        offset: 0,
        parts: Vec::new(),
        hash_state: Vec::new(),
        declared_sha256: None,
        digest: None,
        metadata: "filename eC5iaW4=".into(),
        created_ms: 1_000,
        unreferenced_since_ms: None,
        version: 1,
    }
}

fn direct(a: UserId, b: UserId) -> ConversationRecord {
    let mut members = vec![a, b];
    members.sort();
    ConversationRecord {
        conversation_id: switchboard::store::direct_conversation_id(a, b),
        kind: ConversationKind::Direct,
        members,
        created_ms: 5,
        group: None,
        retention_secs: 0,
    }
}

fn cursor(user_id: UserId, device_id: DeviceId, conversation_id: ConversationId, delivered: u64, read: u64, at_ms: u64) -> WriteOp {
    WriteOp::AdvanceCursor { user_id, device_id, conversation_id, delivered, read, at_ms }
}

// ---------------------------------------------------------------------------------------
// Scenarios

async fn codes_users_and_devices(f: Fixture) {
    let store = f.open().await;
    let phone = format!("+1555{}", rand_digits());
    assert_eq!(store.pending_code(&phone).await.unwrap(), None);
    let code = PendingCode { code_hash: [7; 32], expires_ms: 99, attempts: 0 };
    store.put_pending_code(&phone, code.clone()).await.unwrap();
    assert_eq!(store.pending_code(&phone).await.unwrap(), Some(code));
    let replaced = PendingCode { code_hash: [8; 32], expires_ms: 100, attempts: 2 };
    store.put_pending_code(&phone, replaced.clone()).await.unwrap();
    assert_eq!(store.pending_code(&phone).await.unwrap(), Some(replaced));
    store.delete_pending_code(&phone).await.unwrap();
    store.delete_pending_code(&phone).await.unwrap();
    assert_eq!(store.pending_code(&phone).await.unwrap(), None);

    // One user per phone, whoever asks first.
    let first = user(&phone);
    let (got, created) = store.get_or_create_user(&phone, first.clone()).await.unwrap();
    assert!(created);
    assert_eq!(got, first);
    let (again, created) = store.get_or_create_user(&phone, user(&phone)).await.unwrap();
    assert!(!created);
    assert_eq!(again, first);
    assert_eq!(store.user(first.user_id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.user(uid()).await.unwrap(), None);

    // Bulk creation skips phones that exist, and creates each account's device.
    let fresh: Vec<(UserRecord, DeviceRecord)> = (0..3)
        .map(|i| {
            let u = user(&format!("{phone}{i}"));
            let mut d = device(u.user_id, 10);
            d.primary = true;
            (u, d)
        })
        .collect();
    let mut batch = fresh.clone();
    batch.push((user(&phone), device(uid(), 10)));
    assert_eq!(store.create_accounts(batch).await.unwrap(), 3);
    assert_eq!(store.create_accounts(fresh.clone()).await.unwrap(), 0, "creating again is a no-op");
    for (u, d) in &fresh {
        assert_eq!(store.user(u.user_id).await.unwrap().as_ref(), Some(u));
        assert_eq!(store.devices_of(u.user_id).await.unwrap(), vec![d.clone()]);
        assert_eq!(store.device_by_token(d.token_hash).await.unwrap().as_ref(), Some(d));
    }

    // Devices: the live-device limit, lookup by token, revocation.
    let owner = first.user_id;
    let d1 = device(owner, 30);
    let d2 = device(owner, 20);
    store.add_device(d1.clone(), 2).await.unwrap();
    store.add_device(d2.clone(), 2).await.unwrap();
    assert!(matches!(store.add_device(device(owner, 40), 2).await, Err(StoreError::TooManyDevices { max: 2 })));
    store.add_device(d1.clone(), 2).await.expect("retrying a link that committed succeeds, even at the limit");
    assert_eq!(store.devices_of(owner).await.unwrap(), vec![d2.clone(), d1.clone()], "oldest first");
    assert_eq!(store.device(d1.device_id).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.device_by_token(d1.token_hash).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.device_by_token([0; 32]).await.unwrap(), None);
    assert!(!store.revoke_device(uid(), d1.device_id, 50).await.unwrap(), "not the owner");
    assert!(store.revoke_device(owner, d1.device_id, 50).await.unwrap());
    assert!(store.revoke_device(owner, d1.device_id, 60).await.unwrap(), "revoking again is fine");
    let revoked = store.device_by_token(d1.token_hash).await.unwrap().expect("revoked devices are still found");
    assert_eq!(revoked.revoked_ms, Some(50), "the first revocation time is kept");
    // A revoked device frees its slot.
    let d3 = device(owner, 70);
    store.add_device(d3.clone(), 2).await.unwrap();
    assert_eq!(store.devices_of(owner).await.unwrap().len(), 3);
}

/// A one-time code is accepted once even when verifications race; wrong guesses each count
/// (also in parallel), and the code is gone after too many or once expired.
async fn one_time_codes_are_used_once(f: Fixture) {
    let store = f.open().await;
    let now = switchboard::store::now_ms();
    let phone = format!("+1555{}", rand_digits());
    let code = PendingCode { code_hash: [1; 32], expires_ms: now + 600_000, attempts: 0 };
    store.put_pending_code(&phone, code.clone()).await.unwrap();
    let racers: Vec<_> = (0..8).map(|_| store.use_pending_code(&phone, [1; 32], now, 5)).collect();
    let results: Vec<CodeCheck> = futures_util::future::join_all(racers).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| **r == CodeCheck::Accepted).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| *r != CodeCheck::Wrong), "{results:?}");
    assert_eq!(store.pending_code(&phone).await.unwrap(), None, "used up");

    // Five wrong guesses at once: every one counts, and the fifth deletes the code.
    store.put_pending_code(&phone, code.clone()).await.unwrap();
    let guesses: Vec<_> = (0..4).map(|i| store.use_pending_code(&phone, [10 + i; 32], now, 5)).collect();
    let results: Vec<CodeCheck> = futures_util::future::join_all(guesses).await.into_iter().map(Result::unwrap).collect();
    assert!(results.iter().all(|r| *r == CodeCheck::Wrong), "{results:?}");
    assert_eq!(store.pending_code(&phone).await.unwrap().map(|c| c.attempts), Some(4));
    assert_eq!(store.use_pending_code(&phone, [99; 32], now, 5).await.unwrap(), CodeCheck::Wrong);
    assert_eq!(store.use_pending_code(&phone, [1; 32], now, 5).await.unwrap(), CodeCheck::Missing, "too many guesses: gone");

    // Expired: missing, and deleted.
    store.put_pending_code(&phone, PendingCode { expires_ms: now - 1, ..code }).await.unwrap();
    assert_eq!(store.use_pending_code(&phone, [1; 32], now, 5).await.unwrap(), CodeCheck::Missing);
    assert_eq!(store.pending_code(&phone).await.unwrap(), None);
    assert_eq!(store.use_pending_code(&format!("{phone}9"), [1; 32], now, 5).await.unwrap(), CodeCheck::Missing);
}

async fn conversations_and_group_events(f: Fixture) {
    let store = f.open().await;
    let (a, b, c) = (uid(), uid(), uid());
    let one = direct(a, b);
    assert_eq!(store.create_conversation(one.clone()).await.unwrap(), one);
    let mut other = one.clone();
    other.created_ms = 999;
    assert_eq!(store.create_conversation(other).await.unwrap(), one, "the first creation wins");
    assert_eq!(store.conversation(one.conversation_id).await.unwrap(), Some(one.clone()));
    assert_eq!(store.conversation(uid()).await.unwrap(), None);
    assert_eq!(store.conversations_of(a).await.unwrap(), vec![one.conversation_id]);

    // A group: created with one member, then an event adds two and sets an invite.
    let group_id = uid();
    let mut group = ConversationRecord {
        conversation_id: group_id,
        kind: ConversationKind::Group,
        members: vec![a],
        created_ms: 6,
        group: Some(Box::new(GroupState { subject: "team".into(), admins: vec![a], joined: vec![(a, 1)], ..Default::default() })),
        retention_secs: 0,
    };
    store.create_conversation(group.clone()).await.unwrap();
    let mut created = message(group_id, 1, a, "e1", 10);
    created.event = Some(Bytes::from_static(b"created"));
    created.payload = Bytes::new();
    assert_eq!(
        store
            .apply(vec![WriteOp::AppendEvent { message: created.clone(), record: Box::new(group.clone()), joined: vec![], tombstone: None }])
            .await
            .unwrap(),
        vec![WriteOutcome::Appended]
    );
    let mut members = vec![a, b, c];
    members.sort();
    group.members = members;
    let state = group.group.as_mut().unwrap();
    state.joined = vec![(a, 1), (b, 2), (c, 2)];
    state.invite_hash = Some([42; 32]);
    let mut added = message(group_id, 2, a, "e2", 11);
    added.event = Some(Bytes::from_static(b"added"));
    added.payload = Bytes::new();
    let outcome = store
        .apply(vec![WriteOp::AppendEvent { message: added.clone(), record: Box::new(group.clone()), joined: vec![b, c], tombstone: None }])
        .await
        .unwrap();
    assert_eq!(outcome, vec![WriteOutcome::Appended]);
    assert_eq!(store.conversation(group_id).await.unwrap(), Some(group.clone()), "record changes with its event");
    assert_eq!(store.conversation_by_invite([42; 32]).await.unwrap(), Some(group_id));
    let mut of_b = store.conversations_of(b).await.unwrap();
    of_b.sort();
    let mut expected = vec![one.conversation_id, group_id];
    expected.sort();
    assert_eq!(of_b, expected);
    assert_eq!(store.conversations_of(c).await.unwrap(), vec![group_id]);

    // A message, then "delete for everyone": its payload is erased in the same transaction
    // as the event; the invite is replaced by a new one.
    let hello = message(group_id, 3, b, "m3", 12);
    assert_eq!(store.apply(vec![WriteOp::Append(hello.clone())]).await.unwrap(), vec![WriteOutcome::Appended]);
    group.group.as_mut().unwrap().invite_hash = Some([43; 32]);
    let mut deletion = message(group_id, 4, b, "e4", 13);
    deletion.event = Some(Bytes::from_static(b"deleted 3"));
    let outcome = store
        .apply(vec![WriteOp::AppendEvent { message: deletion.clone(), record: Box::new(group.clone()), joined: vec![], tombstone: Some(3) }])
        .await
        .unwrap();
    assert_eq!(outcome, vec![WriteOutcome::Appended]);
    let log = store.messages_after(group_id, 0, 10).await.unwrap();
    assert_eq!(log.len(), 4);
    assert!(log[2].deleted && log[2].payload.is_empty(), "tombstoned: {:?}", log[2]);
    assert_eq!(log[3], deletion);
    assert_eq!(store.conversation_by_invite([42; 32]).await.unwrap(), None, "the old invite is gone");
    assert_eq!(store.conversation_by_invite([43; 32]).await.unwrap(), Some(group_id));

    // An event refused by the fence changes nothing: not the log, not the record.
    let mut stale = group.clone();
    stale.group.as_mut().unwrap().subject = "hijacked".into();
    let outcome = store
        .apply(vec![WriteOp::AppendEvent {
            message: message(group_id, 9, a, "e9", 14),
            record: Box::new(stale),
            joined: vec![uid()],
            tombstone: Some(1),
        }])
        .await
        .unwrap();
    assert_eq!(outcome, vec![WriteOutcome::SeqConflict]);
    assert_eq!(store.conversation(group_id).await.unwrap(), Some(group));
    assert_eq!(store.messages_after(group_id, 0, 10).await.unwrap(), log);
}

async fn appends_are_fenced_and_idempotent(f: Fixture) {
    let store = f.open().await;
    let conv = uid();
    let (a, b) = (uid(), uid());
    assert_eq!(store.last_seq(conv).await.unwrap(), 0);
    // A batch is applied in order, each op seeing the ones before it.
    let outcomes = store
        .apply(vec![
            WriteOp::Append(message(conv, 1, a, "x", 10)),
            WriteOp::Append(message(conv, 2, b, "x", 11)),
            WriteOp::Append(message(conv, 2, a, "y", 12)),
            WriteOp::Append(message(conv, 4, a, "z", 13)),
            WriteOp::Append(message(conv, 0, a, "w", 13)),
            WriteOp::Append(message(conv, 3, a, "x", 14)),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Appended,
            WriteOutcome::Appended,
            WriteOutcome::SeqConflict,
            WriteOutcome::SeqConflict,
            WriteOutcome::SeqConflict,
            WriteOutcome::Duplicate { seq: 1, server_time_ms: 10 },
        ]
    );
    assert_eq!(store.last_seq(conv).await.unwrap(), 2);
    assert_eq!(store.find_by_client_id(conv, a, "x").await.unwrap(), Some((1, 10)));
    assert_eq!(store.find_by_client_id(conv, b, "x").await.unwrap(), Some((2, 11)));
    assert_eq!(store.find_by_client_id(conv, a, "y").await.unwrap(), None);
    // A retried send (same dedup key, new seq) gets the original back, even when the
    // retry's seq would have been valid.
    assert_eq!(
        store.apply(vec![WriteOp::Append(message(conv, 3, b, "x", 20))]).await.unwrap(),
        vec![WriteOutcome::Duplicate { seq: 2, server_time_ms: 11 }]
    );
    // Edits and reactions keep their kind and target.
    let mut edit = message(conv, 3, a, "edit", 21);
    edit.kind = ContentKind::Edit;
    edit.reference_seq = 1;
    let mut reaction = message(conv, 4, b, "react", 22);
    reaction.kind = ContentKind::Reaction;
    reaction.reference_seq = 1;
    store.apply(vec![WriteOp::Append(edit.clone()), WriteOp::Append(reaction.clone())]).await.unwrap();
    for seq in 5..=40 {
        store.apply(vec![WriteOp::Append(message(conv, seq, a, &format!("m{seq}"), 100 + seq))]).await.unwrap();
    }
    // Paging both ways, with the bounds of the contract.
    let after = store.messages_after(conv, 2, 2).await.unwrap();
    assert_eq!(after, vec![edit.clone(), reaction.clone()]);
    let tail: Vec<u64> = store.messages_after(conv, 35, 100).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(tail, vec![36, 37, 38, 39, 40]);
    assert!(store.messages_after(conv, 40, 10).await.unwrap().is_empty());
    assert!(store.messages_after(conv, u64::MAX, 10).await.unwrap().is_empty());
    let newest: Vec<u64> = store.messages_before(conv, 0, 3).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(newest, vec![40, 39, 38]);
    let page: Vec<u64> = store.messages_before(conv, 4, 10).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(page, vec![3, 2, 1]);
    assert!(store.messages_before(conv, 1, 10).await.unwrap().is_empty());
    assert!(store.messages_after(uid(), 0, 10).await.unwrap().is_empty());
}

async fn cursors_receipts_and_presence(f: Fixture) {
    let store = f.open().await;
    let conv = uid();
    let (alice, bob) = (uid(), uid());
    let (phone, laptop, bob_phone) = (uid(), uid(), uid());
    let outcomes = store
        .apply(vec![
            cursor(alice, phone, conv, 5, 2, 100),
            cursor(alice, phone, conv, 3, 4, 110),
            cursor(alice, laptop, conv, 7, 0, 120),
            cursor(bob, bob_phone, conv, 0, 0, 130),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::CursorAdvanced(Cursor { delivered: 5, read: 2 }),
            WriteOutcome::CursorAdvanced(Cursor { delivered: 5, read: 4 }),
            WriteOutcome::CursorAdvanced(Cursor { delivered: 7, read: 0 }),
            WriteOutcome::CursorAdvanced(Cursor { delivered: 0, read: 0 }),
        ]
    );
    assert_eq!(store.cursors_of(phone).await.unwrap(), vec![(conv, Cursor { delivered: 5, read: 4 })]);
    assert_eq!(store.cursors_of(laptop).await.unwrap(), vec![(conv, Cursor { delivered: 7, read: 0 })]);
    assert!(store.cursors_of(bob_phone).await.unwrap().is_empty(), "a cursor at zero may be absent");
    // Member cursors: the furthest any device of the user got.
    assert_eq!(store.member_cursors(conv).await.unwrap(), vec![(alice, MemberCursor { delivered: 7, read: 4 })]);
    assert_eq!(store.member_cursor(conv, alice).await.unwrap(), MemberCursor { delivered: 7, read: 4 });
    assert_eq!(store.member_cursor(conv, bob).await.unwrap(), MemberCursor::default(), "none: zeros");
    // Receipt times: when the member first reached a seq (first entry at or above it).
    assert_eq!(store.receipt_times(conv, alice, 1).await.unwrap(), (Some(100), Some(100)));
    assert_eq!(store.receipt_times(conv, alice, 3).await.unwrap(), (Some(100), Some(110)));
    assert_eq!(store.receipt_times(conv, alice, 6).await.unwrap(), (Some(120), None));
    assert_eq!(store.receipt_times(conv, alice, 8).await.unwrap(), (None, None));
    assert_eq!(store.receipt_times(conv, bob, 1).await.unwrap(), (None, None));
    // Presence.
    assert_eq!(store.last_seen(alice).await.unwrap(), None);
    let outcomes =
        store.apply(vec![WriteOp::LastSeen { user_id: alice, at_ms: 500 }, WriteOp::LastSeen { user_id: alice, at_ms: 600 }]).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Recorded, WriteOutcome::Recorded]);
    assert_eq!(store.last_seen(alice).await.unwrap(), Some(600));
    // The later time wins, whatever the order of writes (several nodes record it).
    store.apply(vec![WriteOp::LastSeen { user_id: alice, at_ms: 550 }]).await.unwrap();
    assert_eq!(store.last_seen(alice).await.unwrap(), Some(600));
}

async fn numbers_move_and_deleted_accounts_keep_nothing_of_theirs(f: Fixture) {
    let store = f.open().await;
    let (p1, p2, p3) = (format!("+1415{}", rand_digits()), format!("+1416{}", rand_digits()), format!("+1417{}", rand_digits()));
    let (a, _) = store.get_or_create_user(&p1, user(&p1)).await.unwrap();
    let (b, _) = store.get_or_create_user(&p2, user(&p2)).await.unwrap();
    assert!(!store.change_phone(a.user_id, &p2).await.unwrap(), "another account's number stays theirs");
    assert!(store.change_phone(a.user_id, &p3).await.unwrap());
    assert!(store.change_phone(a.user_id, &p3).await.unwrap(), "the same number again changes nothing");
    assert_eq!(store.user(a.user_id).await.unwrap().map(|u| u.phone), Some(p3.clone()));
    let mut found = store.users_by_phone(vec![p1.clone(), p2.clone(), p3.clone()]).await.unwrap();
    found.sort();
    let mut expected = vec![(p2.clone(), b.user_id), (p3.clone(), a.user_id)];
    expected.sort();
    assert_eq!(found, expected, "the old number is no one's");
    let (newcomer, created) = store.get_or_create_user(&p1, user(&p1)).await.unwrap();
    assert!(created && newcomer.user_id != a.user_id, "the old number signs up anew");

    // Deletion: the number released, the account's own data gone, idempotent.
    store.add_contacts(a.user_id, vec![p2.clone()]).await.unwrap();
    store.set_profile(a.user_id, Profile { name: "Ana".into(), ..Default::default() }).await.unwrap();
    store.set_privacy(a.user_id, PrivacySettings { read_receipts: false, ..Default::default() }).await.unwrap();
    store.update_chat_state(a.user_id, uid(), ChatUpdate { archived: Some(true), ..Default::default() }, 0, 5).await.unwrap().unwrap();
    for _ in 0..2 {
        store.delete_account_data(a.user_id).await.unwrap();
    }
    let record = store.user(a.user_id).await.unwrap().expect("the record stays");
    assert!(record.is_deleted() && record.phone == switchboard::store::deleted_phone(a.user_id));
    assert!(store.users_by_phone(vec![p3.clone()]).await.unwrap().is_empty());
    assert!(store.known_contacts(a.user_id, vec![p2.clone()]).await.unwrap().is_empty());
    assert_eq!(store.profile(a.user_id).await.unwrap(), None);
    assert_eq!(store.privacy(a.user_id).await.unwrap(), PrivacySettings::default());
    assert!(store.chat_states(a.user_id).await.unwrap().is_empty());
    let (again, created) = store.get_or_create_user(&p3, user(&p3)).await.unwrap();
    assert!(created && again.user_id != a.user_id, "the deleted account's number signs up anew");
}

async fn chat_states_and_the_pin_limit(f: Fixture) {
    let store = f.open().await;
    let (alice, bob) = (uid(), uid());
    let convs: Vec<ConversationId> = (0..5).map(|_| uid()).collect();
    let pin = ChatUpdate { pinned: Some(true), ..Default::default() };
    assert_eq!(store.chat_state(alice, convs[0]).await.unwrap(), ChatState::default(), "never changed: the default");
    assert!(store.chat_states(alice).await.unwrap().is_empty());
    for (i, id) in convs.iter().take(3).enumerate() {
        let state = store.update_chat_state(alice, *id, pin, 10, 100 + i as u64).await.unwrap().unwrap().expect("changed");
        assert_eq!((state.pinned_ms, state.changed_ms), (100 + i as u64, 100 + i as u64));
    }
    assert_eq!(store.update_chat_state(alice, convs[3], pin, 10, 200).await.unwrap(), Err(InboxError::TooManyPins { max: 3 }));
    assert_eq!(store.update_chat_state(alice, convs[0], pin, 10, 200).await.unwrap(), Ok(None), "pinned already: no change");
    assert_eq!(store.update_chat_state(bob, convs[3], pin, 10, 200).await.unwrap().map(|s| s.is_some()), Ok(true), "one user's pins only");
    let clear = ChatUpdate { cleared_up_to: Some(11), ..Default::default() };
    assert_eq!(store.update_chat_state(alice, convs[0], clear, 10, 210).await.unwrap(), Err(InboxError::ClearBeyondEnd { asked: 11, last: 10 }));
    let change = ChatUpdate { cleared_up_to: Some(7), archived: Some(true), muted_until_ms: Some(u64::MAX), ..Default::default() };
    let state = store.update_chat_state(alice, convs[0], change, 10, 220).await.unwrap().unwrap().expect("changed");
    assert_eq!(store.chat_state(alice, convs[0]).await.unwrap(), state);
    assert_eq!((state.cleared_up_to, state.archived, state.muted_until_ms, state.pinned_ms), (7, true, u64::MAX, 100), "the rest kept");
    let mut all = store.chat_states(alice).await.unwrap();
    all.sort_by_key(|(id, _)| *id);
    let mut expected: Vec<ConversationId> = convs[..3].to_vec();
    expected.sort();
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
    // Unpinned, then a fourth fits.
    store.update_chat_state(alice, convs[1], ChatUpdate { pinned: Some(false), ..Default::default() }, 10, 230).await.unwrap().unwrap();
    assert!(store.update_chat_state(alice, convs[3], pin, 10, 240).await.unwrap().unwrap().is_some());
    if f.backend != Backend::Scylla {
        // Racing pins of one user (several devices at once): the limit holds. (ScyllaDB
        // has no transaction across a user's entries: there the race can pass it by one.)
        let carol: UserId = uid();
        let racing: Vec<_> = (0..6)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.update_chat_state(carol, uid(), pin, 10, 300).await })
            })
            .collect();
        let mut pinned = 0;
        for r in racing {
            if let Ok(Ok(Some(_))) = r.await.unwrap() {
                pinned += 1;
            }
        }
        assert_eq!(pinned, 3);
    }
}

async fn push_tokens(f: Fixture) {
    let store = f.open().await;
    let user = uid();
    let (mut d1, mut d2) = (uid(), uid());
    if d2 < d1 {
        std::mem::swap(&mut d1, &mut d2);
    }
    assert!(store.push_tokens_of(user).await.unwrap().is_empty());
    let fcm = PushToken { platform: "fcm".into(), token: "t1".into() };
    let apns = PushToken { platform: "apns".into(), token: "t2".into() };
    store.set_push_token(user, d1, Some(fcm.clone())).await.unwrap();
    store.set_push_token(user, d2, Some(fcm.clone())).await.unwrap();
    store.set_push_token(user, d2, Some(apns.clone())).await.unwrap();
    assert_eq!(store.push_tokens_of(user).await.unwrap(), vec![(d1, fcm.clone()), (d2, apns)]);
    store.set_push_token(user, d2, None).await.unwrap();
    store.set_push_token(user, d2, None).await.unwrap();
    assert_eq!(store.push_tokens_of(user).await.unwrap(), vec![(d1, fcm)]);
    assert!(store.push_tokens_of(uid()).await.unwrap().is_empty());
}

async fn pairings_are_approved_once_and_claimed_once(f: Fixture) {
    let store = f.open().await;
    let now = now_ms();
    let (user, other, device): (UserId, UserId, DeviceId) = (uid(), uid(), uid());
    let pairing = |code: u8, expires_ms: u64| PairingRecord {
        code_hash: [code; 32],
        claim_hash: [code.wrapping_add(100); 32],
        device_name: format!("laptop {code}"),
        expires_ms,
        approved_by: None,
        approved_device: None,
    };
    store.put_pairing(pairing(1, now + 120_000)).await.unwrap();
    assert_eq!(store.approve_pairing([9; 32], user, device, now).await.unwrap(), PairingApproval::Missing, "an unknown code");
    assert_eq!(store.claim_pairing([1; 32], [101; 32], now).await.unwrap(), PairingClaim::Pending, "not approved yet");
    let approved = store.approve_pairing([1; 32], user, device, now).await.unwrap();
    assert_eq!(
        approved,
        PairingApproval::Approved(PairingRecord { approved_by: Some(user), approved_device: Some(device), ..pairing(1, now + 120_000) })
    );
    assert_eq!(store.approve_pairing([1; 32], other, device, now).await.unwrap(), PairingApproval::AlreadyApproved, "approved once");
    assert_eq!(store.claim_pairing([1; 32], [7; 32], now).await.unwrap(), PairingClaim::Missing, "a wrong claim secret");
    assert_eq!(
        store.claim_pairing([1; 32], [101; 32], now).await.unwrap(),
        PairingClaim::Claimed { user, device_name: "laptop 1".into(), approver: device },
        "the approving account, not the late one"
    );
    assert_eq!(store.claim_pairing([1; 32], [101; 32], now).await.unwrap(), PairingClaim::Missing, "claimed once");
    // Expired: neither approved nor claimed; swept.
    store.put_pairing(pairing(2, now + 1_000)).await.unwrap();
    assert_eq!(store.approve_pairing([2; 32], user, device, now + 2_000).await.unwrap(), PairingApproval::Missing);
    store.put_pairing(pairing(3, now + 120_000)).await.unwrap();
    store.approve_pairing([3; 32], user, device, now).await.unwrap();
    assert_eq!(store.claim_pairing([3; 32], [103; 32], now + 200_000).await.unwrap(), PairingClaim::Missing);
    // Racing claims of one approved pairing: exactly one gets it.
    store.put_pairing(pairing(4, now + 120_000)).await.unwrap();
    store.approve_pairing([4; 32], user, device, now).await.unwrap();
    let claims = futures_util::future::join_all((0..8).map(|_| store.claim_pairing([4; 32], [104; 32], now))).await;
    assert_eq!(claims.iter().filter(|c| matches!(c, Ok(PairingClaim::Claimed { .. }))).count(), 1, "{claims:?}");
}

async fn privacy_settings_and_blocks(f: Fixture) {
    let store = f.open().await;
    let (a, b, c) = (uid(), uid(), uid());
    assert_eq!(store.privacy(a).await.unwrap(), PrivacySettings::default(), "defaults until set");
    let settings = PrivacySettings {
        last_seen: Audience::Contacts,
        online: OnlineAudience::SameAsLastSeen,
        groups: Audience::Nobody,
        profile_photo: Audience::Contacts,
        about: Audience::Nobody,
        read_receipts: false,
    };
    store.set_privacy(a, settings).await.unwrap();
    assert_eq!(store.privacy(a).await.unwrap(), settings);
    assert_eq!(store.privacy(b).await.unwrap(), PrivacySettings::default(), "one user's settings only");
    store.set_privacy(a, PrivacySettings::default()).await.unwrap();
    assert_eq!(store.privacy(a).await.unwrap(), PrivacySettings::default(), "replaced");
    // Profiles: absent until set, replaced whole.
    assert_eq!(store.profile(a).await.unwrap(), None);
    let photo = ProfilePhoto { small: uid(), large: uid() };
    let profile = Profile { name: "Ana".into(), about: "At work".into(), photo: Some(photo), updated_ms: 5 };
    store.set_profile(a, profile.clone()).await.unwrap();
    assert_eq!(store.profile(a).await.unwrap(), Some(profile));
    store.set_profile(a, Profile { name: "Ana B".into(), ..Default::default() }).await.unwrap();
    assert_eq!(store.profile(a).await.unwrap().map(|p| (p.name, p.photo)), Some(("Ana B".to_owned(), None)));
    assert_eq!(store.profile(b).await.unwrap(), None);

    assert!(store.set_blocked(a, b, true, 10).await.unwrap(), "a new block changes something");
    assert!(!store.set_blocked(a, b, true, 11).await.unwrap(), "blocking twice does not");
    assert!(store.set_blocked(a, c, true, 12).await.unwrap());
    assert!(store.set_blocked(c, b, true, 13).await.unwrap());
    assert!(store.is_blocked(a, b).await.unwrap());
    assert!(!store.is_blocked(b, a).await.unwrap(), "a block has a direction");
    let sorted = |mut v: Vec<UserId>| {
        v.sort();
        v
    };
    assert_eq!(sorted(store.blocks_of(a).await.unwrap()), sorted(vec![b, c]));
    assert_eq!(sorted(store.blockers_of(b).await.unwrap()), sorted(vec![a, c]));
    assert!(store.blockers_of(a).await.unwrap().is_empty());
    assert!(store.set_blocked(a, b, false, 14).await.unwrap(), "unblocking changes something");
    assert!(!store.set_blocked(a, b, false, 15).await.unwrap(), "unblocking twice does not");
    assert!(!store.is_blocked(a, b).await.unwrap());
    assert_eq!(store.blocks_of(a).await.unwrap(), vec![c]);
    assert_eq!(store.blockers_of(b).await.unwrap(), vec![c], "the reverse index follows");
    assert_eq!(store.count(Section::Blocks).await.unwrap(), 2);
    assert_eq!(store.count(Section::Privacy).await.unwrap(), 1);
}

async fn contacts_and_phone_lookups(f: Fixture) {
    let store = f.open().await;
    let (owner, other) = (uid(), uid());
    let numbers: Vec<String> = (0..250).map(|n| format!("+1415{}", 3_000_000 + n)).collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert!(store.known_contacts(owner, numbers.clone()).await.unwrap().is_empty());
    // Added in two overlapping batches (more than one chunk of the backends' IN lists):
    // the overlap is stored once.
    store.add_contacts(owner, numbers[..150].to_vec()).await.unwrap();
    store.add_contacts(owner, numbers[100..].to_vec()).await.unwrap();
    assert_eq!(sorted(store.known_contacts(owner, numbers.clone()).await.unwrap()), sorted(numbers.clone()));
    assert!(store.known_contacts(other, numbers.clone()).await.unwrap().is_empty(), "one owner's list only");
    store.remove_contacts(owner, vec![numbers[0].clone(), numbers[1].clone(), "+14155559999".into()]).await.unwrap();
    assert_eq!(sorted(store.known_contacts(owner, numbers[..3].to_vec()).await.unwrap()), vec![numbers[2].clone()]);
    assert_eq!(store.count(Section::Contacts).await.unwrap(), 248);
    assert_eq!(sorted(store.contacts_of(owner).await.unwrap()), sorted(numbers[2..].to_vec()), "the whole list");
    assert!(store.contacts_of(other).await.unwrap().is_empty(), "one owner's list only");
    assert!(store.known_contacts(owner, Vec::new()).await.unwrap().is_empty());
    store.add_contacts(owner, Vec::new()).await.unwrap();

    // Users by phone: registered numbers only.
    let (a, b) = (user(&numbers[10]), user(&numbers[200]));
    store.get_or_create_user(&a.phone, a.clone()).await.unwrap();
    store.get_or_create_user(&b.phone, b.clone()).await.unwrap();
    let mut found = store.users_by_phone(numbers.clone()).await.unwrap();
    found.sort();
    let mut expected = vec![(a.phone.clone(), a.user_id), (b.phone.clone(), b.user_id)];
    expected.sort();
    assert_eq!(found, expected);
    assert!(store.users_by_phone(vec!["+14155550000".into()]).await.unwrap().is_empty());
    assert!(store.users_by_phone(Vec::new()).await.unwrap().is_empty());
}

async fn expired_messages_are_purged_but_the_fence_holds(f: Fixture) {
    let store = f.open().await;
    let (a, b) = (uid(), uid());
    let mut record = direct(a, b);
    let conv = record.conversation_id;
    let kept_forever = direct(a, uid());
    store.create_conversation(record.clone()).await.unwrap();
    store.create_conversation(kept_forever.clone()).await.unwrap();
    // Turning on disappearing messages is an event that stores the new record.
    record.retention_secs = 60;
    let mut setting = message(conv, 1, a, "retention", 1_000);
    setting.event = Some(Bytes::from_static(b"retention 60"));
    store.apply(vec![WriteOp::AppendEvent { message: setting, record: Box::new(record), joined: vec![], tombstone: None }]).await.unwrap();
    for seq in 2..=11 {
        store.apply(vec![WriteOp::Append(message(conv, seq, b, &format!("m{seq}"), seq * 1_000))]).await.unwrap();
    }
    store.apply(vec![WriteOp::Append(message(kept_forever.conversation_id, 1, a, "old", 1))]).await.unwrap();
    if f.backend == Backend::Scylla {
        // ScyllaDB expires rows by TTL from their time: these (timestamped in 1970) got
        // the minimum TTL of 1 s. The event stays, and the fence still holds.
        tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
        let left: Vec<u64> = store.messages_after(conv, 0, 100).await.unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(left, vec![1], "only the event is left");
        assert_eq!(store.last_seq(conv).await.unwrap(), 11);
        assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 3, b, "late", 90_000))]).await.unwrap(), vec![WriteOutcome::SeqConflict]);
        return;
    }
    // At 70 s, messages older than 10 s (times 2..=9 s) have expired: 8 of them.
    let now = 70_000;
    assert_eq!(store.purge_expired(now, 5).await.unwrap(), 5, "at most `limit` per call");
    assert_eq!(store.purge_expired(now, 100).await.unwrap(), 3);
    assert_eq!(store.purge_expired(now, 100).await.unwrap(), 0);
    let left: Vec<u64> = store.messages_after(conv, 0, 100).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(left, vec![1, 10, 11], "the event is kept");
    assert_eq!(store.messages_after(kept_forever.conversation_id, 0, 10).await.unwrap().len(), 1);
    assert_eq!(store.find_by_client_id(conv, b, "m2").await.unwrap(), None, "the dedup key goes with the message");
    // Purging never loosens the fence: the next append must still be last + 1.
    assert_eq!(store.last_seq(conv).await.unwrap(), 11);
    assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 3, b, "late", 90_000))]).await.unwrap(), vec![WriteOutcome::SeqConflict]);
    assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 12, b, "next", 90_000))]).await.unwrap(), vec![WriteOutcome::Appended]);
}

/// Two sequencers of one conversation (two nodes that disagree about who owns it, or a
/// restarted actor racing its predecessor) append the same seqs at the same time, through
/// separate store handles where the backend allows: each seq is stored exactly once, and
/// the log has no gap.
async fn racing_sequencers_store_each_seq_once(f: Fixture) {
    let first = f.open().await;
    let second = if f.backend == Backend::Embedded { first.clone() } else { f.open().await };
    let conv = uid();
    let (a, b) = (uid(), uid());
    let mut wins = [0u32; 2];
    for seq in 1..=60u64 {
        let (x, y) = tokio::join!(
            first.apply(vec![WriteOp::Append(message(conv, seq, a, &format!("a{seq}"), seq))]),
            second.apply(vec![WriteOp::Append(message(conv, seq, b, &format!("b{seq}"), seq))]),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        let appended = [x[0] == WriteOutcome::Appended, y[0] == WriteOutcome::Appended];
        assert_eq!(appended.iter().filter(|w| **w).count(), 1, "seq {seq}: {x:?} {y:?}");
        for (i, won) in appended.iter().enumerate() {
            wins[i] += u32::from(*won);
        }
    }
    let log = first.messages_after(conv, 0, 1000).await.unwrap();
    assert_eq!(log.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());
    assert_eq!(first.last_seq(conv).await.unwrap(), 60);
    eprintln!("{:?}: wins per sequencer {wins:?}", f.backend);
}

async fn writes_survive_a_restart(mut f: Fixture) {
    let store = f.open().await;
    let (a, b) = (uid(), uid());
    let record = direct(a, b);
    let conv = record.conversation_id;
    store.create_conversation(record.clone()).await.unwrap();
    let u = user(&format!("+1555{}", rand_digits()));
    let d = device(u.user_id, 1);
    store.create_accounts(vec![(u.clone(), d.clone())]).await.unwrap();
    let mut ops: Vec<WriteOp> = (1..=50).map(|seq| WriteOp::Append(message(conv, seq, a, &format!("m{seq}"), seq))).collect();
    ops.push(cursor(b, d.device_id, conv, 50, 49, 77));
    ops.push(WriteOp::LastSeen { user_id: b, at_ms: 88 });
    store.apply(ops).await.unwrap();
    let store = f.reopen(store).await;
    assert_eq!(store.last_seq(conv).await.unwrap(), 50);
    assert_eq!(store.messages_after(conv, 0, 100).await.unwrap().len(), 50);
    assert_eq!(store.conversation(conv).await.unwrap(), Some(record));
    assert_eq!(store.user(u.user_id).await.unwrap(), Some(u));
    assert_eq!(store.device_by_token(d.token_hash).await.unwrap(), Some(d.clone()));
    assert_eq!(store.cursors_of(d.device_id).await.unwrap(), vec![(conv, Cursor { delivered: 50, read: 49 })]);
    assert_eq!(store.last_seen(b).await.unwrap(), Some(88));
    assert!(store.ping().await.is_ok());
}

/// The target side of `store copy`: records imported as they are, twice (a resumed copy),
/// are stored once, counted per section, and read back through the ordinary operations.
async fn media_records_change_by_compare_and_set(f: Fixture) {
    let store = f.open().await;
    let (alice, bob) = (uid(), uid());
    let upload = media(alice, 1_000);
    assert_eq!(store.media(upload.media_id).await.unwrap(), None);
    store.create_media(upload.clone()).await.unwrap();
    let mut other = upload.clone();
    other.length = 5;
    store.create_media(other).await.unwrap();
    assert_eq!(store.media(upload.media_id).await.unwrap(), Some(upload.clone()), "creation keeps the first record");
    // A chunk arrives: offset, chunk list and hash state move together, at version 2.
    let mut next = upload.clone();
    next.offset = 600;
    next.parts.push(MediaPart { len: 600, nonce: 7 });
    next.hash_state = vec![1, 2, 3];
    next.version = 2;
    assert!(store.update_media(next.clone()).await.unwrap());
    assert!(!store.update_media(next.clone()).await.unwrap(), "a second writer of version 2 loses");
    let mut stale = upload.clone();
    stale.offset = 999;
    stale.version = 2;
    assert!(!store.update_media(stale).await.unwrap());
    let mut stolen = next.clone();
    stolen.owner = bob;
    stolen.version = 3;
    assert!(!store.update_media(stolen).await.unwrap(), "the owner never changes");
    assert_eq!(store.media(upload.media_id).await.unwrap(), Some(next.clone()));
    // Completion sets the digest: the digest index finds it.
    let mut done = next.clone();
    done.offset = 1_000;
    done.parts.push(MediaPart { len: 400, nonce: 9 });
    done.digest = Some([9; 32]);
    done.version = 3;
    assert!(store.update_media(done.clone()).await.unwrap());
    assert_eq!(store.media_with_digest([9; 32], 10).await.unwrap(), vec![upload.media_id]);
    assert!(store.media_with_digest([8; 32], 10).await.unwrap().is_empty());
    // Quota: every record the user owns counts with its declared length.
    let second = media(alice, 250);
    store.create_media(second.clone()).await.unwrap();
    store.create_media(media(bob, 7)).await.unwrap();
    assert_eq!(store.media_usage(alice).await.unwrap(), 1_250);
    assert_eq!(store.media_usage(bob).await.unwrap(), 7);
    assert_eq!(store.media_usage(uid()).await.unwrap(), 0);
    // The sweep's walk sees every record once, page by page.
    let mut seen = BTreeSet::new();
    let mut after = None;
    loop {
        let page = store.media_page(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.media_id);
        for r in page {
            assert!(seen.insert(r.media_id), "seen twice");
        }
    }
    assert_eq!(seen.len(), 3);
    // Deletion is by version too; the indexes go with the record.
    assert!(!store.delete_media(upload.media_id, 2).await.unwrap());
    assert!(store.delete_media(upload.media_id, 3).await.unwrap());
    assert!(!store.delete_media(upload.media_id, 3).await.unwrap());
    assert_eq!(store.media(upload.media_id).await.unwrap(), None);
    assert!(store.media_with_digest([9; 32], 10).await.unwrap().is_empty());
    assert_eq!(store.media_usage(alice).await.unwrap(), 250);
}

async fn attachments_reference_media_until_the_message_goes(f: Fixture) {
    let store = f.open().await;
    let (a, b) = (uid(), uid());
    let record = direct(a, b);
    let conv = record.conversation_id;
    store.create_conversation(record.clone()).await.unwrap();
    let (photo, video): (MediaId, MediaId) = (uid(), uid());
    let mut first = message(conv, 1, a, "with-photo", 10);
    first.attachments = vec![photo];
    let mut second = message(conv, 2, b, "forwarded", 11);
    second.attachments = vec![photo, video];
    // The attachments are written with the message, in the same transaction.
    store.apply(vec![WriteOp::Append(first.clone()), WriteOp::Append(second.clone())]).await.unwrap();
    assert_eq!(store.messages_after(conv, 0, 10).await.unwrap(), vec![first.clone(), second.clone()]);
    let mut refs = store.media_refs(photo, 10).await.unwrap();
    refs.sort();
    assert_eq!(refs, vec![(conv, 1), (conv, 2)]);
    assert_eq!(store.media_refs(video, 10).await.unwrap(), vec![(conv, 2)]);
    assert_eq!(store.media_refs(photo, 1).await.unwrap().len(), 1, "at most `limit`");
    assert!(store.media_refs(uid(), 10).await.unwrap().is_empty());
    // A refused append (duplicate) references nothing new.
    let mut dup = message(conv, 3, a, "with-photo", 12);
    dup.attachments = vec![uid()];
    let ghost = dup.attachments[0];
    assert_eq!(store.apply(vec![WriteOp::Append(dup)]).await.unwrap(), vec![WriteOutcome::Duplicate { seq: 1, server_time_ms: 10 }]);
    assert!(store.media_refs(ghost, 10).await.unwrap().is_empty(), "nothing of a refused append");
    // Deleted for everyone: the message no longer declares anything.
    let mut deletion = message(conv, 3, a, "event-3", 13);
    deletion.event = Some(Bytes::from_static(b"deleted 2"));
    store
        .apply(vec![WriteOp::AppendEvent { message: deletion, record: Box::new(record.clone()), joined: vec![], tombstone: Some(2) }])
        .await
        .unwrap();
    assert_eq!(store.media_refs(photo, 10).await.unwrap(), vec![(conv, 1)]);
    assert!(store.media_refs(video, 10).await.unwrap().is_empty());
    let erased = store.messages_after(conv, 1, 1).await.unwrap().remove(0);
    assert!(erased.deleted && erased.attachments.is_empty(), "{erased:?}");
    if f.backend == Backend::Scylla {
        // Expiry on ScyllaDB is by TTL (the references carry the message's); covered by
        // the purge scenario's timing there.
        return;
    }
    // Expired (disappearing messages): the reference goes with the purged message.
    let mut timed = direct(a, uid());
    let tconv = timed.conversation_id;
    store.create_conversation(timed.clone()).await.unwrap();
    timed.retention_secs = 1;
    let mut setting = message(tconv, 1, a, "retention", 1_000);
    setting.event = Some(Bytes::from_static(b"retention 1"));
    store.apply(vec![WriteOp::AppendEvent { message: setting, record: Box::new(timed), joined: vec![], tombstone: None }]).await.unwrap();
    let mut old = message(tconv, 2, a, "old", 2_000);
    old.attachments = vec![photo];
    store.apply(vec![WriteOp::Append(old)]).await.unwrap();
    assert_eq!(store.media_refs(photo, 10).await.unwrap().len(), 2);
    assert_eq!(store.purge_expired(60_000, 100).await.unwrap(), 1);
    assert_eq!(store.media_refs(photo, 10).await.unwrap(), vec![(conv, 1)], "only the live message references it");
}

async fn imports_are_idempotent_and_counted(f: Fixture) {
    let store = f.open().await;
    let u = user(&format!("+1555{}", rand_digits()));
    let peer = user(&format!("+1555{}", rand_digits()));
    let d = device(u.user_id, 3);
    let mut conversation = direct(u.user_id, peer.user_id);
    conversation.retention_secs = 3600;
    let conv = conversation.conversation_id;
    // Recent times: on ScyllaDB the retention becomes a TTL counted from now.
    let base = switchboard::store::now_ms();
    let mut log: Vec<StoredMessage> = (1..=5).map(|seq| message(conv, seq, u.user_id, &format!("m{seq}"), base + seq)).collect();
    log[1].deleted = true;
    log[1].payload = Bytes::new();
    log[2].kind = ContentKind::Reaction;
    log[2].reference_seq = 1;
    let mut uploaded = media(u.user_id, 4_096);
    uploaded.offset = 4_096;
    uploaded.digest = Some([4; 32]);
    log[3].attachments = vec![uploaded.media_id];
    let token = PushToken { platform: "fcm".into(), token: "tok".into() };
    // A status post (recent: on ScyllaDB its TTL runs from now) with one view.
    let status = StatusPost {
        poster: u.user_id,
        post_id: uid(),
        payload: Bytes::from_static(b"sealed status"),
        audience: StatusAudience::Deny(vec![peer.user_id]),
        posted_ms: base,
        expires_ms: base + LIFETIME_MS,
    };
    let mut records = vec![
        Record::User(u.clone()),
        Record::User(peer.clone()),
        Record::Device(d.clone()),
        Record::Conversation(conversation.clone()),
        Record::Membership { user_id: u.user_id, conversation_id: conv },
        Record::Membership { user_id: peer.user_id, conversation_id: conv },
    ];
    records.extend(log.iter().cloned().map(Record::Message));
    records.extend([
        // The fence is ahead of the log when old messages were purged.
        Record::LastSeq { conversation_id: conv, last_seq: 7 },
        Record::Cursor { device_id: d.device_id, conversation_id: conv, cursor: Cursor { delivered: 5, read: 4 } },
        Record::MemberCursor { conversation_id: conv, user_id: u.user_id, cursor: MemberCursor { delivered: 5, read: 4 } },
        Record::Receipt { conversation_id: conv, user_id: u.user_id, kind: 0, seq: 5, at_ms: 70 },
        Record::Receipt { conversation_id: conv, user_id: u.user_id, kind: 1, seq: 4, at_ms: 80 },
        Record::LastSeen { user_id: u.user_id, at_ms: 90 },
        Record::PushToken { user_id: u.user_id, device_id: d.device_id, token: token.clone() },
        Record::Media(uploaded.clone()),
    ]);
    // End-to-end state: identity keys, one-time keys (one of them spent), a fallback key,
    // a to-device queue read up to 3 with two entries left, a device-list notice.
    let keys =
        DeviceKeys { user_id: u.user_id, device_id: d.device_id, curve25519: [1; 32], ed25519: [2; 32], signature: vec![3; 64], uploaded_ms: 50 };
    let otk = |id: &str, b: u8| OneTimeKey { key_id: id.into(), key: [b; 32], signature: vec![b; 64] };
    let sender_device: DeviceId = uid();
    let entry = |position: u64| ToDeviceEntry {
        position,
        sender_user: peer.user_id,
        sender_device,
        payload: vec![position as u8; 8],
        sent_ms: 60 + position,
    };
    records.extend([
        Record::DeviceKeys(keys.clone()),
        Record::OneTimeKey { device_id: d.device_id, key: otk("AAAB", 4) },
        Record::OneTimeKey { device_id: d.device_id, key: otk("AAAC", 5) },
        Record::SpentKey { device_id: d.device_id, key_id: "AAAA".into(), claimed_ms: 40 },
        Record::FallbackKey { device_id: d.device_id, key: otk("FFFF", 6) },
        Record::ToDeviceQueue { device_id: d.device_id, last_position: 5, acked: 3 },
        Record::ToDeviceEntry { device_id: d.device_id, entry: entry(4) },
        Record::ToDeviceEntry { device_id: d.device_id, entry: entry(5) },
        Record::DeviceListNotice { device_id: d.device_id, user_id: peer.user_id, changed_ms: 70 },
        Record::Contact { owner: u.user_id, phone: peer.phone.clone() },
        Record::Contact { owner: u.user_id, phone: "+14155550999".into() },
        Record::Privacy { user_id: u.user_id, settings: PrivacySettings { read_receipts: false, ..Default::default() } },
        Record::Block { user_id: u.user_id, target: peer.user_id, at_ms: 95 },
        Record::Profile { user_id: u.user_id, profile: Profile { name: "Ana".into(), about: "hi".into(), photo: None, updated_ms: 96 } },
        Record::ChatState { user_id: u.user_id, conversation_id: conv, state: ChatState { archived: true, changed_ms: 97, ..Default::default() } },
        Record::Status(status.clone()),
        Record::StatusView { poster: u.user_id, post_id: status.post_id, view: StatusView { viewer: peer.user_id, seen_ms: base + 10 } },
    ]);
    store.import(records.clone()).await.unwrap();
    store.import(records).await.unwrap();
    let expected = [
        (Section::Users, 2),
        (Section::Devices, 1),
        (Section::Conversations, 1),
        (Section::Memberships, 2),
        (Section::Messages, 5),
        (Section::LastSeqs, 1),
        (Section::Cursors, 1),
        (Section::MemberCursors, 1),
        (Section::Receipts, 2),
        (Section::LastSeen, 1),
        (Section::PushTokens, 1),
        (Section::Media, 1),
        (Section::DeviceKeys, 1),
        (Section::OneTimeKeys, 3),
        (Section::FallbackKeys, 1),
        (Section::ToDeviceQueues, 1),
        (Section::ToDeviceEntries, 2),
        (Section::DeviceListNotices, 1),
        (Section::Contacts, 2),
        (Section::Privacy, 1),
        (Section::Blocks, 1),
        (Section::Profiles, 1),
        (Section::ChatStates, 1),
        (Section::Statuses, 1),
        (Section::StatusViews, 1),
    ];
    assert_eq!(expected.len(), Section::ALL.len(), "every section is checked");
    for (section, n) in expected {
        assert_eq!(store.count(section).await.unwrap(), n, "{}", section.name());
    }
    assert_eq!(store.user(u.user_id).await.unwrap(), Some(u.clone()));
    let (again, created) = store.get_or_create_user(&u.phone, user(&u.phone)).await.unwrap();
    assert!(!created, "the phone index came with the user");
    assert_eq!(again, u);
    assert_eq!(store.device_by_token(d.token_hash).await.unwrap(), Some(d.clone()));
    assert_eq!(store.devices_of(u.user_id).await.unwrap(), vec![d.clone()]);
    assert_eq!(store.conversation(conv).await.unwrap(), Some(conversation));
    assert_eq!(store.conversations_of(peer.user_id).await.unwrap(), vec![conv]);
    assert_eq!(store.messages_after(conv, 0, 10).await.unwrap(), log);
    assert_eq!(store.media(uploaded.media_id).await.unwrap(), Some(uploaded.clone()));
    assert_eq!(store.media_refs(uploaded.media_id, 10).await.unwrap(), vec![(conv, 4)], "references came with the messages");
    assert_eq!(store.media_with_digest([4; 32], 10).await.unwrap(), vec![uploaded.media_id]);
    assert_eq!(store.find_by_client_id(conv, u.user_id, "m3").await.unwrap(), Some((3, base + 3)), "dedup keys came with the messages");
    assert_eq!(store.last_seq(conv).await.unwrap(), 7);
    assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 6, u.user_id, "m6", base + 6))]).await.unwrap(), vec![WriteOutcome::SeqConflict]);
    assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 8, u.user_id, "m8", base + 8))]).await.unwrap(), vec![WriteOutcome::Appended]);
    assert_eq!(store.cursors_of(d.device_id).await.unwrap(), vec![(conv, Cursor { delivered: 5, read: 4 })]);
    assert_eq!(store.member_cursors(conv).await.unwrap(), vec![(u.user_id, MemberCursor { delivered: 5, read: 4 })]);
    assert_eq!(store.receipt_times(conv, u.user_id, 3).await.unwrap(), (Some(70), Some(80)));
    assert_eq!(store.last_seen(u.user_id).await.unwrap(), Some(90));
    assert_eq!(store.push_tokens_of(u.user_id).await.unwrap(), vec![(d.device_id, token)]);
    assert_eq!(store.device_keys_of(u.user_id).await.unwrap(), vec![keys]);
    let mut handed = Vec::new();
    for at in 100..103 {
        let claimed = store.claim_one_time_key(d.device_id, at).await.unwrap().expect("a key");
        handed.push((claimed.key.key_id, claimed.fallback));
    }
    assert_eq!(handed, [("AAAB".to_owned(), false), ("AAAC".to_owned(), false), ("FFFF".to_owned(), true)], "the spent key is never handed out");
    let queue = store.to_device_after(d.device_id, 0, 10).await.unwrap();
    assert_eq!((queue.acked, queue.entries), (3, vec![entry(4), entry(5)]));
    assert_eq!(store.device_list_changes(d.device_id).await.unwrap(), vec![peer.user_id]);
    let mut known = store.known_contacts(u.user_id, vec![peer.phone.clone(), "+14155550999".into(), "+14155550998".into()]).await.unwrap();
    known.sort();
    let mut expected_known = vec![peer.phone.clone(), "+14155550999".to_owned()];
    expected_known.sort();
    assert_eq!(known, expected_known, "contacts came along");
    assert!(!store.privacy(u.user_id).await.unwrap().read_receipts, "privacy settings came along");
    assert_eq!(store.profile(u.user_id).await.unwrap().map(|p| p.name), Some("Ana".to_owned()), "profiles came along");
    assert_eq!(store.blockers_of(peer.user_id).await.unwrap(), vec![u.user_id], "blocks came along, indexed both ways");
    assert_eq!(store.status_post(u.user_id, status.post_id, base).await.unwrap(), Some(status.clone()), "status posts came along");
    assert_eq!(store.status_views(u.user_id, status.post_id).await.unwrap(), vec![StatusView { viewer: peer.user_id, seen_ms: base + 10 }]);
    // Expired imported messages are purged like any others (the retention came along);
    // ScyllaDB expires them by TTL instead.
    if f.backend != Backend::Scylla {
        assert_eq!(store.purge_expired(base + 3_700_000, 100).await.unwrap(), 6);
    }
}

fn rand_digits() -> String {
    format!("{:08}", uid::<Uuid>().as_u128() % 100_000_000)
}

// ---------------------------------------------------------------------------------------
// Model-based: random operation sequences against a plain model of the contract.

#[derive(Debug, Clone)]
enum Op {
    /// Append with seq = model's last + delta (delta 0 = taken, 1 = next, 2 = gap).
    Append {
        conv: u8,
        sender: u8,
        client: u8,
        delta: u8,
    },
    Cursor {
        device: u8,
        conv: u8,
        delivered: u8,
        read: u8,
    },
    CreateConversation {
        conv: u8,
        a: u8,
        b: u8,
    },
    After {
        conv: u8,
        after: u8,
        limit: u8,
    },
    Before {
        conv: u8,
        before: u8,
        limit: u8,
    },
    Find {
        conv: u8,
        sender: u8,
        client: u8,
    },
    LastSeen {
        user: u8,
        at: u8,
    },
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
        1 => (0u8..3, 0u8..250).prop_map(|(user, at)| Op::LastSeen { user, at }),
        1 => Just(Op::Reopen),
    ]
}

/// The contract as plain maps.
#[derive(Default)]
struct Model {
    messages: BTreeMap<(ConversationId, u64), StoredMessage>,
    dedup: BTreeMap<(ConversationId, UserId, String), (u64, u64)>,
    cursors: BTreeMap<(DeviceId, ConversationId), Cursor>,
    member_cursors: BTreeMap<(ConversationId, UserId), MemberCursor>,
    conversations: BTreeMap<ConversationId, ConversationRecord>,
    by_user: BTreeSet<(UserId, ConversationId)>,
    last_seen: BTreeMap<UserId, u64>,
}

impl Model {
    fn last_seq(&self, conv: ConversationId) -> u64 {
        self.messages.range((conv, 0)..=(conv, u64::MAX)).next_back().map(|(k, _)| k.1).unwrap_or(0)
    }

    fn apply(&mut self, op: &WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Append(m) => {
                let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.clone());
                if let Some(&(seq, server_time_ms)) = self.dedup.get(&key) {
                    return WriteOutcome::Duplicate { seq, server_time_ms };
                }
                if m.seq != self.last_seq(m.conversation_id) + 1 {
                    return WriteOutcome::SeqConflict;
                }
                self.messages.insert((m.conversation_id, m.seq), m.clone());
                self.dedup.insert(key, (m.seq, m.server_time_ms));
                WriteOutcome::Appended
            }
            WriteOp::AdvanceCursor { user_id, device_id, conversation_id, delivered, read, .. } => {
                let c = self.cursors.entry((*device_id, *conversation_id)).or_default();
                c.delivered = c.delivered.max(*delivered);
                c.read = c.read.max(*read);
                let result = *c;
                if *delivered > 0 || *read > 0 {
                    let m = self.member_cursors.entry((*conversation_id, *user_id)).or_default();
                    m.delivered = m.delivered.max(*delivered);
                    m.read = m.read.max(*read);
                }
                WriteOutcome::CursorAdvanced(result)
            }
            WriteOp::LastSeen { user_id, at_ms } => {
                let seen = self.last_seen.entry(*user_id).or_default();
                *seen = (*seen).max(*at_ms);
                WriteOutcome::Recorded
            }
            WriteOp::AppendEvent { .. } => unreachable!("the model test does not generate group events"),
        }
    }
}

async fn model_based_sequences_with_restarts(f: Fixture) {
    // PostgreSQL restarts take a few hundred ms each: fewer, longer cases there.
    let cases = match f.backend {
        Backend::Embedded => 48,
        Backend::Postgres | Backend::Scylla => 12,
    };
    // A failing case panics inside the runner, which catches it and shrinks: the fixture
    // is shared through a mutex whose poisoning is ignored, so shrinking keeps working.
    let fixture = std::sync::Mutex::new(f);
    let handle = tokio::runtime::Handle::current();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let result = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
            let mut f = fixture.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            handle.block_on(run_model(&mut f, ops));
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// One random sequence. Every id carries a per-case namespace, so cases share a database
/// without seeing each other.
async fn run_model(f: &mut Fixture, ops: Vec<Op>) {
    let namespace = uid::<Uuid>().as_u128() & !0xffff_ffff;
    let raw = |kind: u8, n: u8| namespace | ((kind as u128) << 16) | (n as u128 + 1);
    let cid = |n: u8| ConversationId::from_u128(raw(1, n));
    let uidn = |n: u8| UserId::from_u128(raw(2, n));
    let did = |n: u8| DeviceId::from_u128(raw(3, n));
    let mut store = f.open().await;
    let mut model = Model::default();
    let mut clock = 1_000u64;
    for op in ops {
        match op {
            Op::Append { conv, sender, client, delta } => {
                let conversation_id = cid(conv);
                clock += 1;
                let seq = (model.last_seq(conversation_id) + delta as u64).max(if delta == 0 { 0 } else { 1 });
                let mut m = message(conversation_id, seq, uidn(sender), &format!("c{client}"), clock);
                m.sender_device_id = did(sender);
                // Batches of two, so outcomes within one transaction are compared too.
                let ops = vec![WriteOp::Append(m), cursor(uidn(sender), did(sender), conversation_id, seq, 0, clock)];
                let expected: Vec<WriteOutcome> = ops.iter().map(|o| model.apply(o)).collect();
                assert_eq!(store.apply(ops).await.unwrap(), expected);
            }
            Op::Cursor { device, conv, delivered, read } => {
                let op = cursor(uidn(device), did(device), cid(conv), delivered as u64, read as u64, clock);
                let expected = model.apply(&op);
                assert_eq!(store.apply(vec![op]).await.unwrap(), vec![expected]);
                let c = cid(conv);
                let members: Vec<(UserId, MemberCursor)> =
                    model.member_cursors.range((c, UserId::nil())..=(c, UserId::from_u128(u128::MAX))).map(|((_, u), m)| (*u, *m)).collect();
                assert_eq!(store.member_cursors(c).await.unwrap(), members);
            }
            Op::CreateConversation { conv, a, b } => {
                let mut members = vec![uidn(a), uidn(b)];
                members.sort();
                members.dedup();
                let record = ConversationRecord {
                    conversation_id: cid(conv),
                    kind: ConversationKind::Direct,
                    members,
                    created_ms: clock,
                    group: None,
                    retention_secs: 0,
                };
                let expected = model.conversations.entry(record.conversation_id).or_insert_with(|| record.clone()).clone();
                if expected == record {
                    for m in &record.members {
                        model.by_user.insert((*m, record.conversation_id));
                    }
                }
                assert_eq!(store.create_conversation(record).await.unwrap(), expected);
                for user in 0..4 {
                    let u = uidn(user);
                    let expected: Vec<ConversationId> =
                        model.by_user.range((u, ConversationId::nil())..=(u, ConversationId::from_u128(u128::MAX))).map(|(_, c)| *c).collect();
                    assert_eq!(store.conversations_of(u).await.unwrap(), expected);
                }
            }
            Op::After { conv, after, limit } => {
                let c = cid(conv);
                let expected: Vec<StoredMessage> =
                    model.messages.range((c, after as u64 + 1)..=(c, u64::MAX)).take(limit as usize).map(|(_, m)| m.clone()).collect();
                assert_eq!(store.messages_after(c, after as u64, limit as usize).await.unwrap(), expected);
            }
            Op::Before { conv, before, limit } => {
                let c = cid(conv);
                let upper = if before == 0 { u64::MAX } else { before as u64 };
                let expected: Vec<StoredMessage> =
                    model.messages.range((c, 0)..(c, upper)).rev().take(limit as usize).map(|(_, m)| m.clone()).collect();
                assert_eq!(store.messages_before(c, before as u64, limit as usize).await.unwrap(), expected);
                assert_eq!(store.last_seq(c).await.unwrap(), model.last_seq(c));
            }
            Op::Find { conv, sender, client } => {
                let key = (cid(conv), uidn(sender), format!("c{client}"));
                assert_eq!(store.find_by_client_id(key.0, key.1, &key.2).await.unwrap(), model.dedup.get(&key).copied());
            }
            Op::LastSeen { user, at } => {
                let op = WriteOp::LastSeen { user_id: uidn(user), at_ms: at as u64 };
                let expected = model.apply(&op);
                assert_eq!(store.apply(vec![op]).await.unwrap(), vec![expected]);
                for u in 0..3 {
                    assert_eq!(store.last_seen(uidn(u)).await.unwrap(), model.last_seen.get(&uidn(u)).copied());
                }
            }
            Op::Reopen => {
                store = f.reopen(store).await;
                for device in 0..3 {
                    let d = did(device);
                    let expected: Vec<(ConversationId, Cursor)> = model
                        .cursors
                        .iter()
                        .filter(|((dev, _), cur)| *dev == d && **cur != Cursor::default())
                        .map(|((_, c), cur)| (*c, *cur))
                        .collect();
                    assert_eq!(store.cursors_of(d).await.unwrap(), expected);
                }
            }
        }
    }
    drop(store);
}

// ---------------------------------------------------------------------------------------
// Key directory (the store does not check signatures: the bytes here are placeholders)

fn device_keys(user_id: UserId, device_id: DeviceId, seed: u8) -> DeviceKeys {
    DeviceKeys { user_id, device_id, curve25519: [seed; 32], ed25519: [seed.wrapping_add(1); 32], signature: vec![seed; 64], uploaded_ms: 1_000 }
}

fn otk(i: usize) -> OneTimeKey {
    OneTimeKey { key_id: format!("key{i:04}"), key: [i as u8; 32], signature: vec![7; 64] }
}

async fn live_device(store: &Arc<dyn Store>) -> (UserId, DeviceId) {
    let phone = format!("+1555{}", rand_digits());
    let (u, _) = store.get_or_create_user(&phone, user(&phone)).await.unwrap();
    let d = device(u.user_id, 1);
    store.add_device(d.clone(), 5).await.unwrap();
    (u.user_id, d.device_id)
}

async fn key_directory_keys_claims_and_revocation(mut f: Fixture) {
    let mut store = f.open().await;
    let (user_id, device_id) = live_device(&store).await;
    let keys = device_keys(user_id, device_id, 1);
    assert_eq!(store.put_device_keys(keys.clone()).await.unwrap(), KeysStored::New);
    assert_eq!(store.put_device_keys(DeviceKeys { uploaded_ms: 2_000, ..keys.clone() }).await.unwrap(), KeysStored::Unchanged);
    assert_eq!(store.device_keys_of(user_id).await.unwrap(), vec![keys.clone()]);
    // Another user's device, or one that does not exist: refused.
    let stranger = device_keys(uid(), device_id, 9);
    assert!(matches!(store.put_device_keys(stranger).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.put_device_keys(device_keys(user_id, uid(), 2)).await, Err(StoreError::NotFound(_))));

    let batch: Vec<OneTimeKey> = (0..5).map(otk).collect();
    let fallback = OneTimeKey { key_id: "fallback1".into(), key: [0xfb; 32], signature: vec![8; 64] };
    assert_eq!(store.add_one_time_keys(device_id, batch.clone(), Some(fallback.clone())).await.unwrap(), 5);
    // A retried upload changes nothing.
    assert_eq!(store.add_one_time_keys(device_id, batch.clone(), Some(fallback.clone())).await.unwrap(), 5);
    let first = store.claim_one_time_key(device_id, 10).await.unwrap().expect("a key");
    assert!(!first.fallback);
    assert!(batch.contains(&first.key), "{first:?}");
    assert_eq!(store.one_time_key_count(device_id).await.unwrap(), 4);
    // Uploading the claimed key again does not make it claimable again.
    assert_eq!(store.add_one_time_keys(device_id, batch.clone(), None).await.unwrap(), 4);

    store = f.reopen(store).await;
    assert_eq!(store.device_keys_of(user_id).await.unwrap(), vec![keys.clone()]);
    assert_eq!(store.one_time_key_count(device_id).await.unwrap(), 4);
    let mut handed = BTreeSet::from([first.key.key_id.clone()]);
    for _ in 0..4 {
        let c = store.claim_one_time_key(device_id, 11).await.unwrap().expect("a key");
        assert!(!c.fallback);
        assert!(handed.insert(c.key.key_id.clone()), "{} handed out twice", c.key.key_id);
    }
    assert_eq!(handed.len(), 5);
    assert_eq!(store.one_time_key_count(device_id).await.unwrap(), 0);
    // None left: the fallback key, as often as asked.
    for _ in 0..2 {
        assert_eq!(store.claim_one_time_key(device_id, 12).await.unwrap(), Some(ClaimedKey { key: fallback.clone(), fallback: true }));
    }

    // New identity keys: the old account's one-time and fallback keys go.
    assert_eq!(store.add_one_time_keys(device_id, vec![otk(10)], None).await.unwrap(), 1);
    let replaced = device_keys(user_id, device_id, 3);
    assert_eq!(store.put_device_keys(replaced.clone()).await.unwrap(), KeysStored::Replaced);
    assert_eq!(store.device_keys_of(user_id).await.unwrap(), vec![replaced]);
    assert_eq!(store.one_time_key_count(device_id).await.unwrap(), 0);
    assert_eq!(store.claim_one_time_key(device_id, 13).await.unwrap(), None);

    // Revocation removes every key of the device.
    assert_eq!(store.add_one_time_keys(device_id, vec![otk(20)], Some(fallback)).await.unwrap(), 1);
    assert!(store.revoke_device(user_id, device_id, 14).await.unwrap());
    assert_eq!(store.device_keys_of(user_id).await.unwrap(), vec![]);
    assert_eq!(store.one_time_key_count(device_id).await.unwrap(), 0);
    assert_eq!(store.claim_one_time_key(device_id, 15).await.unwrap(), None);
    assert!(matches!(store.put_device_keys(device_keys(user_id, device_id, 4)).await, Err(StoreError::NotFound(_))));
}

/// 100 claims at once, through two store handles (two connection pools on the shared
/// backends): no key is handed out twice, and every claim that found keys left got one.
async fn concurrent_claims_hand_each_key_out_once(f: Fixture) {
    let first = f.open().await;
    let second = if f.backend == Backend::Embedded { first.clone() } else { f.open().await };
    let (user_id, device_id) = live_device(&first).await;
    first.put_device_keys(device_keys(user_id, device_id, 1)).await.unwrap();
    let keys: Vec<OneTimeKey> = (0..120).map(otk).collect();
    let fallback = OneTimeKey { key_id: "fb".into(), key: [0xfb; 32], signature: vec![8; 64] };
    assert_eq!(first.add_one_time_keys(device_id, keys[..100].to_vec(), Some(fallback)).await.unwrap(), 100);
    assert_eq!(first.add_one_time_keys(device_id, keys[100..].to_vec(), None).await.unwrap(), 120);
    let claims = (0..100).map(|i| {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        tokio::spawn(async move { store.claim_one_time_key(device_id, 100 + i).await })
    });
    let mut handed = BTreeSet::new();
    for claim in claims {
        let claimed = claim.await.unwrap().unwrap().expect("keys were left for every claim");
        assert!(!claimed.fallback, "a fallback key while one-time keys were left");
        assert!(handed.insert(claimed.key.key_id.clone()), "{} handed out twice", claimed.key.key_id);
    }
    assert_eq!(handed.len(), 100);
    assert_eq!(first.one_time_key_count(device_id).await.unwrap(), 20);
    // The rest, then the fallback.
    for _ in 0..20 {
        let c = second.claim_one_time_key(device_id, 300).await.unwrap().unwrap();
        assert!(!c.fallback && handed.insert(c.key.key_id.clone()));
    }
    assert!(first.claim_one_time_key(device_id, 301).await.unwrap().unwrap().fallback);
}

fn to_device_send(sender: (UserId, DeviceId), client_id: &str, targets: &[(UserId, DeviceId)], tag: &str) -> ToDeviceSend {
    ToDeviceSend {
        sender_user: sender.0,
        sender_device: sender.1,
        client_id: client_id.into(),
        sent_ms: now_ms(),
        targets: targets.iter().map(|(u, d)| ToDeviceTarget { user: *u, device: *d, payload: format!("{tag}->{d}").into_bytes() }).collect(),
    }
}

/// A queue bound of `n` entries, all of which one sender may hold.
fn bounds(n: u64) -> QueueBounds {
    QueueBounds { per_device: n, per_sender: n }
}

async fn to_device_queues_hold_until_acknowledged(mut f: Fixture) {
    let mut store = f.open().await;
    let alice = live_device(&store).await;
    let (bob, bob1) = live_device(&store).await;
    let bob2 = device(bob, 2);
    store.add_device(bob2.clone(), 5).await.unwrap();
    let bob2 = bob2.device_id;
    let stored = store.enqueue_to_device(to_device_send(alice, "s1", &[(bob, bob1), (bob, bob2)], "one"), bounds(3)).await.unwrap();
    // (In no particular order.)
    let ToDeviceStored::Stored(mut stored) = stored else { panic!("{stored:?}") };
    stored.sort();
    let mut expected = vec![(bob, bob1, 1), (bob, bob2, 1)];
    expected.sort();
    assert_eq!(stored, expected);
    // A retry of the same id stores nothing.
    assert_eq!(store.enqueue_to_device(to_device_send(alice, "s1", &[(bob, bob1)], "again"), bounds(3)).await.unwrap(), ToDeviceStored::Duplicate);
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s2", &[(bob, bob1)], "two"), bounds(3)).await.unwrap(),
        ToDeviceStored::Stored(vec![(bob, bob1, 2)])
    );
    // A bad target refuses the whole send: nothing of it is queued anywhere.
    let stranger_device = uid::<DeviceId>();
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s3", &[(bob, bob1), (bob, stranger_device)], "bad"), bounds(3)).await.unwrap(),
        ToDeviceStored::UnknownDevice { user: bob, device: stranger_device }
    );
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s3", &[(bob, bob1), (alice.0, bob2)], "bad"), bounds(3)).await.unwrap(),
        ToDeviceStored::UnknownDevice { user: alice.0, device: bob2 },
        "a device named under another user"
    );
    let queue = store.to_device_after(bob1, 0, 10).await.unwrap();
    assert_eq!(queue.acked, 0);
    assert_eq!(queue.entries.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(queue.entries[0].payload, format!("one->{bob1}").into_bytes());
    assert_eq!((queue.entries[0].sender_user, queue.entries[0].sender_device), alice);
    assert_eq!(store.to_device_after(bob1, 1, 10).await.unwrap().entries.len(), 1);
    assert_eq!(store.to_device_after(bob1, 0, 1).await.unwrap().entries.len(), 1);

    // Bound of 3: bob1 holds 2, so a send to bob1 and bob2 passes once, then not.
    assert!(matches!(
        store.enqueue_to_device(to_device_send(alice, "s4", &[(bob, bob2), (bob, bob1)], "three"), bounds(3)).await.unwrap(),
        ToDeviceStored::Stored(_)
    ));
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s5", &[(bob, bob2), (bob, bob1)], "four"), bounds(3)).await.unwrap(),
        ToDeviceStored::QueueFull { device: bob1 }
    );
    assert_eq!(store.to_device_after(bob2, 0, 10).await.unwrap().entries.len(), 2, "the refused send left nothing in bob2's queue");

    store = f.reopen(store).await;
    // Acknowledged entries go; an ack past what was given out stops there; older acks change nothing.
    store.ack_to_device(bob1, 2).await.unwrap();
    let queue = store.to_device_after(bob1, 0, 10).await.unwrap();
    assert_eq!((queue.acked, queue.entries.iter().map(|e| e.position).collect::<Vec<_>>()), (2, vec![3]));
    store.ack_to_device(bob1, 1).await.unwrap();
    assert_eq!(store.to_device_after(bob1, 0, 10).await.unwrap().acked, 2);
    store.ack_to_device(bob1, 99).await.unwrap();
    let queue = store.to_device_after(bob1, 0, 10).await.unwrap();
    assert_eq!((queue.acked, queue.entries.len()), (3, 0));
    // Positions are never reused.
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s6", &[(bob, bob1)], "five"), bounds(3)).await.unwrap(),
        ToDeviceStored::Stored(vec![(bob, bob1, 4)])
    );
    // Revocation empties the queue and refuses new sends.
    assert!(store.revoke_device(bob, bob2, now_ms()).await.unwrap());
    assert!(store.to_device_after(bob2, 0, 10).await.unwrap().entries.is_empty());
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "s7", &[(bob, bob2)], "six"), bounds(3)).await.unwrap(),
        ToDeviceStored::UnknownDevice { user: bob, device: bob2 }
    );
}

/// 40 sends at once to one device (and each to a second device), through two store
/// handles: every send gets its own position, the positions are 1 to 40 without a gap,
/// and the second device's queue holds the same sends in the same order as the store
/// accepted them.
async fn racing_to_device_sends_take_each_position_once(f: Fixture) {
    let first = f.open().await;
    let second = if f.backend == Backend::Embedded { first.clone() } else { f.open().await };
    let alice = live_device(&first).await;
    let (bob, bob1) = live_device(&first).await;
    let sends = (0..40).map(|i| {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        tokio::spawn(async move {
            store.enqueue_to_device(to_device_send(alice, &format!("race{i}"), &[(bob, bob1)], &format!("n{i}")), bounds(1000)).await
        })
    });
    let mut positions = BTreeSet::new();
    for send in sends {
        match send.await.unwrap().unwrap() {
            ToDeviceStored::Stored(s) => assert!(positions.insert(s[0].2), "position {} twice", s[0].2),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(positions, (1..=40).collect::<BTreeSet<u64>>());
    let queue = first.to_device_after(bob1, 0, 100).await.unwrap();
    assert_eq!(queue.entries.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=40).collect::<Vec<u64>>());
}

/// Another user gets a share of a device's queue: with `per_sender` 2 of 5, a third
/// unacknowledged entry from Alice is refused (the whole send), Carol still fits, Bob's
/// own devices are bound by the queue only, and acknowledging frees Alice's share.
async fn a_sender_gets_a_share_of_a_device_queue(mut f: Fixture) {
    let mut store = f.open().await;
    let alice = live_device(&store).await;
    let carol = live_device(&store).await;
    let (bob, bob1) = live_device(&store).await;
    let bob2 = device(bob, 2);
    store.add_device(bob2.clone(), 5).await.unwrap();
    let bob2 = bob2.device_id;
    let share = QueueBounds { per_device: 5, per_sender: 2 };
    for i in 0..2 {
        let sent = store.enqueue_to_device(to_device_send(alice, &format!("a{i}"), &[(bob, bob1)], "alice"), share).await.unwrap();
        assert!(matches!(sent, ToDeviceStored::Stored(_)), "{sent:?}");
    }
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "a2", &[(bob, bob2), (bob, bob1)], "alice"), share).await.unwrap(),
        ToDeviceStored::SenderFull { device: bob1 }
    );
    assert!(store.to_device_after(bob2, 0, 10).await.unwrap().entries.is_empty(), "the refused send queued nothing");
    for i in 0..2 {
        let sent = store.enqueue_to_device(to_device_send(carol, &format!("c{i}"), &[(bob, bob1)], "carol"), share).await.unwrap();
        assert!(matches!(sent, ToDeviceStored::Stored(_)), "carol's share is her own: {sent:?}");
    }
    let own = (bob, bob2);
    let sent = store.enqueue_to_device(to_device_send(own, "b0", &[(bob, bob1)], "bob"), share).await.unwrap();
    assert!(matches!(sent, ToDeviceStored::Stored(_)), "bob's own device is not a stranger: {sent:?}");
    assert_eq!(
        store.enqueue_to_device(to_device_send(own, "b1", &[(bob, bob1)], "bob"), share).await.unwrap(),
        ToDeviceStored::QueueFull { device: bob1 }
    );
    store = f.reopen(store).await;
    // Bob reads Alice's two entries (positions 1 and 2): her share is free again.
    store.ack_to_device(bob1, 2).await.unwrap();
    let sent = store.enqueue_to_device(to_device_send(alice, "a3", &[(bob, bob1)], "alice"), share).await.unwrap();
    assert_eq!(sent, ToDeviceStored::Stored(vec![(bob, bob1, 6)]));
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "a4", &[(bob, bob1)], "alice"), share).await.unwrap(),
        ToDeviceStored::Stored(vec![(bob, bob1, 7)])
    );
    assert_eq!(
        store.enqueue_to_device(to_device_send(alice, "a5", &[(bob, bob1)], "alice"), share).await.unwrap(),
        ToDeviceStored::QueueFull { device: bob1 },
        "the queue's own bound comes first"
    );
}

async fn device_list_notices_until_acknowledged(mut f: Fixture) {
    let mut store = f.open().await;
    let (alice, _) = live_device(&store).await;
    let (carol, _) = live_device(&store).await;
    let (_, bob1) = live_device(&store).await;
    let (_, bob2) = live_device(&store).await;
    store.note_device_list_change(alice, vec![bob1, bob2], 10).await.unwrap();
    store.note_device_list_change(alice, vec![bob1], 11).await.unwrap();
    store.note_device_list_change(carol, vec![bob1], 12).await.unwrap();
    let mut expected = vec![alice, carol];
    expected.sort();
    assert_eq!(store.device_list_changes(bob1).await.unwrap(), expected, "one notice per user, however many changes");
    store = f.reopen(store).await;
    store.ack_device_list_changes(bob1, vec![alice]).await.unwrap();
    assert_eq!(store.device_list_changes(bob1).await.unwrap(), vec![carol]);
    assert_eq!(store.device_list_changes(bob2).await.unwrap(), vec![alice]);
}

/// A rate bucket is one budget for every client of the store (two handles stand for two
/// nodes): concurrent takes hand out exactly the burst, the refusals say when the next
/// token comes, the bucket refills at its rate, survives a restart, and keys are apart.
async fn rate_buckets_are_shared_and_atomic(mut f: Fixture) {
    use switchboard::store::BucketRule;
    let first = f.open().await;
    let second = if f.backend == Backend::Embedded { first.clone() } else { f.open().await };
    let rule = BucketRule::per_minute(5);
    let key = format!("media-create/{}", uid::<UserId>());
    let t0 = 1_000_000_000;
    let takes = (0..24).map(|i| {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        let key = key.clone();
        tokio::spawn(async move { store.take_token(&key, rule, t0).await })
    });
    let mut taken = 0;
    for take in takes {
        match take.await.unwrap().unwrap() {
            Taken::Yes => taken += 1,
            Taken::No { retry_after_ms } => assert_eq!(retry_after_ms, 12_000, "5 a minute: one every 12 s"),
        }
    }
    assert_eq!(taken, 5, "exactly the burst, however the takes interleave");
    assert_eq!(first.take_token(&key, rule, t0 + 6_000).await.unwrap(), Taken::No { retry_after_ms: 6_000 });
    assert_eq!(second.take_token("another", rule, t0).await.unwrap(), Taken::Yes, "keys are apart");
    drop(second);
    let store = f.reopen(first).await;
    // Kept across a restart. (The wait is counted in whole milli-tokens: at 5 a minute,
    // one every 12 ms, so 1 ms before the token the answer is 12 ms.)
    assert_eq!(store.take_token(&key, rule, t0 + 11_999).await.unwrap(), Taken::No { retry_after_ms: 12 }, "kept across a restart");
    assert_eq!(store.take_token(&key, rule, t0 + 12_000).await.unwrap(), Taken::Yes);
    assert!(matches!(store.take_token(&key, rule, t0 + 12_000).await.unwrap(), Taken::No { .. }));
    assert!(store.take_token("", rule, t0).await.is_err(), "an empty key is a bug, refused");
}

/// Expiry is a rule, not the sweep's doing, in the store's dedup too: once a message has
/// expired (by the new message's time), its client id is free again and a message sent
/// with it is stored anew; before that it is the same message. Across a restart too.
async fn an_expired_message_frees_its_client_id(mut f: Fixture) {
    let store = f.open().await;
    let (a, b) = (uid(), uid());
    let mut record = direct(a, b);
    let conv = record.conversation_id;
    store.create_conversation(record.clone()).await.unwrap();
    record.retention_secs = 60;
    // Times near now: ScyllaDB's rows live by a TTL counted from their time.
    let t0 = now_ms();
    let mut setting = message(conv, 1, a, "retention", t0);
    setting.event = Some(Bytes::from_static(b"retention 60"));
    store.apply(vec![WriteOp::AppendEvent { message: setting, record: Box::new(record), joined: vec![], tombstone: None }]).await.unwrap();
    assert_eq!(store.apply(vec![WriteOp::Append(message(conv, 2, b, "photo", t0))]).await.unwrap(), vec![WriteOutcome::Appended]);
    assert_eq!(
        store.apply(vec![WriteOp::Append(message(conv, 3, b, "photo", t0 + 59_999))]).await.unwrap(),
        vec![WriteOutcome::Duplicate { seq: 2, server_time_ms: t0 }],
        "within the retention, the same client id is the same message"
    );
    assert_eq!(
        store.apply(vec![WriteOp::Append(message(conv, 3, b, "photo", t0 + 60_000))]).await.unwrap(),
        vec![WriteOutcome::Appended],
        "expired at the new message's time: the id is free again"
    );
    assert_eq!(store.find_by_client_id(conv, b, "photo").await.unwrap(), Some((3, t0 + 60_000)));
    if f.backend != Backend::Scylla {
        // (ScyllaDB keeps the row until its TTL; every read applies the expiry rule.)
        let left: Vec<u64> = store.messages_after(conv, 0, 10).await.unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(left, vec![1, 3], "the expired message went with its dedup key, as the sweep would have done");
    }
    let store = f.reopen(store).await;
    assert_eq!(
        store.apply(vec![WriteOp::Append(message(conv, 4, b, "photo", t0 + 61_000))]).await.unwrap(),
        vec![WriteOutcome::Duplicate { seq: 3, server_time_ms: t0 + 60_000 }],
        "a retry of the new message is its duplicate, after a restart too"
    );
}

/// A delete for everyone (an event with a tombstone) blanks its target and every edit and
/// reaction that refers to it, in the same write; an ordinary message that happens to
/// carry the same reference_seq is not one of them.
async fn a_delete_for_everyone_blanks_its_edits_and_reactions(f: Fixture) {
    let store = f.open().await;
    let (a, b) = (uid(), uid());
    let record = direct(a, b);
    let conv = record.conversation_id;
    store.create_conversation(record.clone()).await.unwrap();
    let t0 = now_ms();
    let refer = |seq: u64, sender: UserId, client: &str, kind: ContentKind, target: u64| StoredMessage {
        kind,
        reference_seq: target,
        ..message(conv, seq, sender, client, t0 + seq)
    };
    let ops = vec![
        WriteOp::Append(message(conv, 1, a, "secret", t0)),
        WriteOp::Append(refer(2, a, "edit", ContentKind::Edit, 1)),
        WriteOp::Append(refer(3, b, "reaction", ContentKind::Reaction, 1)),
        WriteOp::Append(refer(4, b, "plain", ContentKind::Normal, 1)),
        WriteOp::Append(message(conv, 5, a, "other", t0 + 5)),
        WriteOp::Append(refer(6, b, "reaction-to-other", ContentKind::Reaction, 5)),
    ];
    assert!(store.apply(ops).await.unwrap().iter().all(|o| *o == WriteOutcome::Appended));
    let mut delete = message(conv, 7, a, "delete", t0 + 7);
    delete.event = Some(Bytes::from_static(b"deleted 1"));
    let op = WriteOp::AppendEvent { message: delete, record: Box::new(record), joined: vec![], tombstone: Some(1) };
    assert_eq!(store.apply(vec![op]).await.unwrap(), vec![WriteOutcome::Appended]);
    let log = store.messages_after(conv, 0, 10).await.unwrap();
    let erased: Vec<u64> = log.iter().filter(|m| m.deleted && m.payload.is_empty()).map(|m| m.seq).collect();
    assert_eq!(erased, vec![1, 2, 3], "the message, its edit and its reaction; nothing else");
    for seq in [4, 5, 6] {
        assert!(!log.iter().find(|m| m.seq == seq).unwrap().payload.is_empty(), "seq {seq} kept");
    }
}

/// Status posts with the clock injected (every read and the purge take the time as an
/// argument; nothing sleeps): stored once (a retried post finds itself, a clashing one is
/// refused), live up to the last millisecond of their 24 hours and gone from then on on
/// every read, views recorded once with their first time, deleted with their views, and
/// purged oldest first within the limit on the embedded store and PostgreSQL (ScyllaDB:
/// by TTL; its reads filter on the time just the same).
async fn status_posts_live_24_hours_and_are_purged(mut f: Fixture) {
    let store = f.open().await;
    // Recent times: on ScyllaDB a row's TTL runs from the write on the real clock.
    let t = now_ms();
    let (poster, other, viewer, viewer2, late) = (uid(), uid(), uid(), uid(), uid());
    let post = |poster: UserId, posted_ms: u64, audience: StatusAudience| StatusPost {
        poster,
        post_id: uid::<StatusId>(),
        payload: Bytes::from(format!("sealed at {posted_ms}")),
        audience,
        posted_ms,
        expires_ms: posted_ms + LIFETIME_MS,
    };
    let a = post(poster, t, StatusAudience::Contacts);
    let b = post(poster, t + 1_000, StatusAudience::Allow(vec![viewer, viewer2]));
    let c = post(other, t + 2_000, StatusAudience::Deny(vec![viewer]));
    let (old1, old2) = (post(other, t - 2, StatusAudience::Contacts), post(other, t - 1, StatusAudience::Deny(vec![])));
    for p in [&a, &b, &c, &old1, &old2] {
        assert_eq!(store.put_status(p.clone(), p.posted_ms).await.unwrap(), StatusPut::Stored);
    }
    assert_eq!(store.put_status(a.clone(), t + 5).await.unwrap(), StatusPut::Exists(Box::new(a.clone())), "a retried post is stored once");
    let clash = StatusPost { payload: Bytes::from_static(b"another"), audience: StatusAudience::Deny(vec![viewer]), ..a.clone() };
    assert_eq!(store.put_status(clash, t + 5).await.unwrap(), StatusPut::Exists(Box::new(a.clone())), "an id is never reused");
    let sorted = |mut v: Vec<StatusPost>| {
        v.sort_by_key(|p| p.posted_ms);
        v
    };
    assert_eq!(store.status_post(poster, a.post_id, t).await.unwrap(), Some(a.clone()));
    assert_eq!(store.status_post(other, a.post_id, t).await.unwrap(), None, "keyed by poster");
    assert_eq!(
        sorted(store.status_posts(vec![poster, other, uid()], t + 3_000).await.unwrap()),
        vec![old1.clone(), old2.clone(), a.clone(), b.clone(), c.clone()]
    );
    assert!(store.status_posts(vec![], t).await.unwrap().is_empty());

    // Views: recorded once, with the first time.
    assert!(store.mark_status_seen(poster, a.post_id, viewer, t + 10).await.unwrap());
    assert!(store.mark_status_seen(poster, a.post_id, viewer, t + 20).await.unwrap(), "seen again: still true");
    assert!(store.mark_status_seen(poster, a.post_id, viewer2, t + 30).await.unwrap());
    assert!(store.mark_status_seen(poster, b.post_id, viewer, t + 40).await.unwrap());
    assert!(!store.mark_status_seen(poster, uid(), viewer, t + 40).await.unwrap(), "no such post");
    let views = |mut v: Vec<StatusView>| {
        v.sort_by_key(|v| v.seen_ms);
        v
    };
    assert_eq!(
        views(store.status_views(poster, a.post_id).await.unwrap()),
        vec![StatusView { viewer, seen_ms: t + 10 }, StatusView { viewer: viewer2, seen_ms: t + 30 }]
    );

    // Expiry, by the clock given: live at t + 24 h - 1 ms, gone at t + 24 h.
    let day = LIFETIME_MS;
    assert_eq!(store.status_post(poster, a.post_id, t + day - 1).await.unwrap(), Some(a.clone()), "live until the last millisecond");
    assert_eq!(store.status_post(poster, a.post_id, t + day).await.unwrap(), None, "gone at 24 hours");
    assert_eq!(store.status_posts(vec![poster, other], t + day).await.unwrap().len(), 2, "b and c are younger");
    assert!(!store.mark_status_seen(poster, a.post_id, late, t + day).await.unwrap(), "an expired post takes no view");
    assert_eq!(store.status_views(poster, a.post_id).await.unwrap().len(), 2, "and recorded none");

    // Durable across a restart.
    let store = f.reopen(store).await;
    assert_eq!(sorted(store.status_posts(vec![poster], t + day - 1).await.unwrap()), vec![a.clone(), b.clone()]);

    // Deleting a post takes its views along.
    assert!(store.delete_status(poster, b.post_id, t + 3_000).await.unwrap());
    assert!(!store.delete_status(poster, b.post_id, t + 3_000).await.unwrap(), "deleted once");
    assert_eq!(store.status_post(poster, b.post_id, t + 3_000).await.unwrap(), None);
    assert!(store.status_views(poster, b.post_id).await.unwrap().is_empty(), "its views went with it");
    assert!(!store.mark_status_seen(poster, b.post_id, viewer2, t + 3_000).await.unwrap(), "a deleted post takes no view");
    assert!(!store.delete_status(other, old1.post_id, t + day).await.unwrap(), "an expired post is reported absent");

    if f.backend == Backend::Scylla {
        // Rows go by their TTL (an hour past expiry, on the real clock): nothing to purge.
        assert_eq!(store.purge_expired(t + day, 100).await.unwrap(), 0);
        return;
    }
    // The purge: expired posts (and their views) only, oldest first, at most `limit`.
    assert_eq!(store.count(Section::Statuses).await.unwrap(), 3, "a, c and old2 are stored (old1 deleted, b deleted)");
    assert_eq!(store.purge_expired(t + day - 1, 100).await.unwrap(), 0, "status posts are not counted");
    assert_eq!(store.count(Section::Statuses).await.unwrap(), 2, "old2 expired at t + 24 h - 1 ms");
    assert_eq!(store.count(Section::StatusViews).await.unwrap(), 2, "a's views");
    store.put_status(post(other, t - 5, StatusAudience::Contacts), t).await.unwrap();
    store.purge_expired(t + day, 1).await.unwrap();
    assert_eq!(store.count(Section::Statuses).await.unwrap(), 2, "one at most, the oldest first: a is still stored");
    store.purge_expired(t + day, 100).await.unwrap();
    assert_eq!(store.count(Section::Statuses).await.unwrap(), 1, "only c is left");
    assert_eq!(store.count(Section::StatusViews).await.unwrap(), 0, "a's views went with it");
    assert_eq!(store.status_posts(vec![poster, other], t + day).await.unwrap(), vec![c.clone()]);
    // A purged post's id is free again.
    assert_eq!(store.put_status(a.clone(), t).await.unwrap(), StatusPut::Stored);
}
