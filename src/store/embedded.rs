//! The embedded default store, on redb: one file in the data directory, ACID transactions,
//! copy-on-write B-trees.
//!
//! Durability of the message path (`apply`, every batch of the store writer) comes from a
//! write-ahead log ([`super::wal`]): a batch's ops are applied in a redb transaction, the
//! ops are appended to the log and fsynced, and only then is the transaction committed
//! (without its own fsync, `Durability::None`) and `Ok` returned. The B-tree pages the
//! batches dirtied are written at a checkpoint (a durable redb commit, every second or 64
//! MiB of log, and at shutdown), after which the log is emptied. After a crash the log is
//! replayed onto the last checkpoint: every op is idempotent (dedup keys, the seq fence,
//! max cursors), so replaying ops the checkpoint already holds changes nothing. A batch
//! thus costs one small sequential write and one `fdatasync` instead of a write of every
//! page it touched, and readers never see a batch before it is durable (the transaction
//! commits after the log's fsync).
//!
//! Every write runs on one dedicated thread (redb has one writer at a time anyway): no
//! pile of blocked threads when many writes arrive at once ([`super::embedded_writer`]).
//! Reads run on the caller, most against a shared snapshot ([`super::embedded_snapshot`]).
//!
//! Tables mirror the Scylla model (partition key first in every composite key), so each
//! backend is a translation of the same layout.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::checked_bucket_key;
use super::embedded_messages::{add_referrer, add_refs, apply_in, purge_message, put_media};
use super::embedded_snapshot::{Snapshot, Snapshots};
use super::embedded_writer::{CommitWindow, Job, WriterFn, WriterThread};
use super::transfer::{Position, Record, Section};
use super::{
    ClaimedKey, CodeCheck, ConversationId, ConversationRecord, Cursor, DeviceId, DeviceKeys, DeviceRecord, KeysStored, MediaId, MediaRecord,
    MemberCursor, OneTimeKey, PairingApproval, PairingClaim, PairingRecord, PendingCode, PrivacySettings, PushToken, QueueBounds, Store, StoreError,
    StoredMessage, ToDeviceQueue, ToDeviceSend, ToDeviceStored, UserId, UserRecord, WriteOp, WriteOutcome,
};
use crate::cores::token_bucket::{self, BucketRule, BucketState, Decision, Taken};

const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
const PHONES: TableDefinition<&str, u128> = TableDefinition::new("phones");
const DEVICES: TableDefinition<u128, &[u8]> = TableDefinition::new("devices");
const TOKENS: TableDefinition<&[u8], u128> = TableDefinition::new("tokens");
const USER_DEVICES: TableDefinition<(u128, u128), u64> = TableDefinition::new("user_devices");
const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_codes");
pub(super) const CONVERSATIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("conversations");
pub(super) const USER_CONVERSATIONS: TableDefinition<(u128, u128), ()> = TableDefinition::new("user_conversations");
/// The message log: `(conversation, seq) → message`.
pub(super) const MESSAGES: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("messages");
/// Idempotency: `(conversation, sender user, client_msg_id) → (seq, server_time_ms)`.
pub(super) const DEDUP: TableDefinition<(u128, u128, &str), (u64, u64)> = TableDefinition::new("dedup");
/// `(device, conversation) → (delivered, read)`.
pub(super) const CURSORS: TableDefinition<(u128, u128), (u64, u64)> = TableDefinition::new("cursors");
pub(super) const LAST_SEEN: TableDefinition<u128, u64> = TableDefinition::new("last_seen");
/// `conversation → last seq`: the sequencer's fence (an append must be last + 1), kept
/// apart from the log so that purging old messages never loosens it.
pub(super) const LAST_SEQS: TableDefinition<u128, u64> = TableDefinition::new("last_seqs");
/// `conversation → retention seconds`, for conversations with disappearing messages.
pub(super) const RETENTION: TableDefinition<u128, u32> = TableDefinition::new("retention");
/// `(conversation, user) → (delivered, read)`: the furthest any of the user's devices got.
pub(super) const MEMBER_CURSORS: TableDefinition<(u128, u128), (u64, u64)> = TableDefinition::new("member_cursors");
/// `(conversation, user, kind, seq) → ms`: when a member's cursor reached `seq`
/// (kind 0 delivered, 1 read); the first entry at or above a seq answers "message info".
pub(super) const RECEIPT_LOG: TableDefinition<(u128, u128, u8, u64), u64> = TableDefinition::new("receipt_log");
/// `(user, device) → push token`.
const PUSH_TOKENS: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("push_tokens");
/// `sha256(invite token) → group`.
pub(super) const INVITES: TableDefinition<&[u8], u128> = TableDefinition::new("invites");
/// `media id → media record` (postcard).
const MEDIA: TableDefinition<u128, &[u8]> = TableDefinition::new("media");
/// `(owner, media id) → declared length`: quota.
const MEDIA_BY_OWNER: TableDefinition<(u128, u128), u64> = TableDefinition::new("media_by_owner");
/// `(ciphertext digest, media id)`: content addressing (a blob is kept while any is left).
const MEDIA_BY_DIGEST: TableDefinition<([u8; 32], u128), ()> = TableDefinition::new("media_by_digest");
/// `(media id, conversation, seq)`: the messages that declare a media (written with the
/// message, removed with it when it is deleted for everyone or purged).
pub(super) const MEDIA_REFS: TableDefinition<(u128, u128, u64), ()> = TableDefinition::new("media_refs");
/// `(conversation, target seq, seq)`: the edits and reactions that refer to a message, so
/// that deleting it for everyone blanks them too (written with them, removed when purged).
pub(super) const REFERRERS: TableDefinition<(u128, u64, u64), ()> = TableDefinition::new("referrers");
/// Key directory: device → its identity keys (`DeviceKeys`, postcard).
pub(super) const DEVICE_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("device_keys");
/// Unclaimed one-time keys: (device, key id) → `OneTimeKey` (postcard).
pub(super) const ONE_TIME_KEYS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("one_time_keys");
/// Claimed one-time keys: (device, key id) → when claimed (ms). Kept so that a retried
/// upload of a claimed key is recognised and skipped.
pub(super) const SPENT_KEYS: TableDefinition<(u128, &str), u64> = TableDefinition::new("spent_one_time_keys");
/// Fallback key of each device: device → `OneTimeKey` (postcard).
pub(super) const FALLBACK_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("fallback_keys");
/// Rate budgets shared by every user of the store: key → (milli-tokens, at ms).
const RATE_BUCKETS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rate_buckets");

/// The redb-backed store. Cloning shares the database and its writer thread.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// The read snapshot shared by reads until the next commit. (Declared before `db`:
    /// fields drop in order, and the database closes with no read transaction left.)
    snapshots: Arc<Snapshots>,
    writer: Arc<WriterThread>,
    db: Arc<Database>,
    records: Arc<super::shared_records::SharedRecords>,
}

/// A write that goes through the log: the message path's batches, conversation creations
/// (an `OpenDirect` storm must not cost an fsync per conversation), and to-device sends
/// and acknowledgements (a group's key rotation is one send and an acknowledgement from
/// every device).
#[derive(Debug, Serialize, serde::Deserialize)]
pub(super) enum Logged {
    /// A store-writer batch (`Store::apply`).
    Batch(Vec<WriteOp>),
    /// `Store::create_conversation`.
    CreateConversation(ConversationRecord),
    /// `Store::enqueue_to_device` (send, per-device bound), as logged before per-sender
    /// bounds existed (replayed with no per-sender bound). New variants go last: the log
    /// encodes the variant's index.
    ToDevice(super::ToDeviceSend, u64),
    /// `Store::ack_to_device` (device, up to).
    AckToDevice(DeviceId, u64),
    /// `Store::enqueue_to_device` (send, bounds).
    ToDeviceBounded(super::ToDeviceSend, QueueBounds),
}

/// What a logged write answers.
pub(super) enum LoggedOutcome {
    Batch(Vec<WriteOutcome>),
    Conversation(ConversationRecord),
    ToDevice(ToDeviceStored),
    Done,
}

/// Applies one logged write in the writer's transaction (live, or replaying the log).
pub(super) fn apply_logged(txn: &WriteTransaction, write: &Logged) -> Result<LoggedOutcome, StoreError> {
    match write {
        Logged::Batch(ops) => apply_in(txn, ops).map(LoggedOutcome::Batch),
        Logged::CreateConversation(record) => create_in(txn, record).map(LoggedOutcome::Conversation),
        Logged::ToDevice(send, per_device) => {
            let bounds = QueueBounds { per_device: *per_device, per_sender: u64::MAX };
            super::embedded_to_device::enqueue_in(txn, send, bounds).map(LoggedOutcome::ToDevice)
        }
        Logged::ToDeviceBounded(send, bounds) => super::embedded_to_device::enqueue_in(txn, send, *bounds).map(LoggedOutcome::ToDevice),
        Logged::AckToDevice(device, up_to) => super::embedded_to_device::ack_in(txn, *device, *up_to).map(|()| LoggedOutcome::Done),
    }
}

/// Creates a conversation unless one with the same id exists; returns the stored one.
fn create_in(txn: &WriteTransaction, conversation: &ConversationRecord) -> Result<ConversationRecord, StoreError> {
    let mut conversations = txn.open_table(CONVERSATIONS).map_err(be)?;
    let id = conversation.conversation_id.as_u128();
    if let Some(found) = conversations.get(id).map_err(be)?.map(|g| decode::<ConversationRecord>("conversations", g.value())).transpose()? {
        return Ok(found);
    }
    conversations.insert(id, encode(conversation)?.as_slice()).map_err(be)?;
    let mut by_user = txn.open_table(USER_CONVERSATIONS).map_err(be)?;
    for member in &conversation.members {
        by_user.insert((member.as_u128(), id), ()).map_err(be)?;
    }
    if conversation.retention_secs > 0 {
        txn.open_table(RETENTION).map_err(be)?.insert(id, conversation.retention_secs).map_err(be)?;
    }
    Ok(conversation.clone())
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

pub(super) fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::backend(e)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(be)
}

pub(super) fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}

/// A message as stored before messages declared attachments (postcard has no optional
/// trailing fields, so those rows decode with this layout).
#[derive(serde::Deserialize)]
struct MessageWithoutAttachments {
    conversation_id: ConversationId,
    seq: u64,
    sender_user_id: UserId,
    sender_device_id: DeviceId,
    client_msg_id: String,
    server_time_ms: u64,
    payload: bytes::Bytes,
    event: Option<bytes::Bytes>,
    kind: super::ContentKind,
    reference_seq: u64,
    deleted: bool,
}

/// Decodes a message row, of the current layout or the one before attachments.
pub(super) fn decode_message(bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    match postcard::from_bytes::<StoredMessage>(bytes) {
        Ok(m) => Ok(m),
        Err(current) => match postcard::from_bytes::<MessageWithoutAttachments>(bytes) {
            Ok(m) => Ok(StoredMessage {
                conversation_id: m.conversation_id,
                seq: m.seq,
                sender_user_id: m.sender_user_id,
                sender_device_id: m.sender_device_id,
                client_msg_id: m.client_msg_id,
                server_time_ms: m.server_time_ms,
                payload: m.payload,
                event: m.event,
                kind: m.kind,
                reference_seq: m.reference_seq,
                deleted: m.deleted,
                attachments: Vec::new(),
            }),
            Err(_) => Err(StoreError::Corrupt { table: "messages", detail: current.to_string() }),
        },
    }
}

/// Settings of the embedded store beyond its directory
/// (`embedded:<dir>?cache_mb=N&checkpoint_secs=S&commit_linger_us=U`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// redb's page cache, bytes: pages read and pages written since the last checkpoint
    /// share it; past it, written pages go to the file early (not fsynced) and read pages
    /// are evicted. The process's memory grows up to it under load and keeps it.
    pub cache_bytes: usize,
    /// How long logged writes may wait for a checkpoint (a durable redb commit that
    /// writes every page dirtied since the last one, stalling the writer meanwhile).
    /// Longer: fewer stalls and fewer page rewrites, but more log to replay after a crash.
    /// A checkpoint also runs whenever the log passes 64 MiB.
    pub checkpoint_interval: Duration,
    /// How long the writer waits, after the first logged write of a group arrives, for
    /// more to join the group before it commits it (zero: it commits whatever is queued at
    /// once). Each group costs one log append, one `fdatasync`, one redb commit and a sleep
    /// and wake-up of the writer, whatever its size; waiting makes fewer, larger groups:
    /// less CPU per message, and that much more latency. Like PostgreSQL's `commit_delay`,
    /// except that it waits whenever set, even with no other writer about (a lone
    /// write pays the whole linger).
    pub commit_linger: Duration,
}

impl EmbeddedOptions {
    /// The default cache, MiB.
    pub const DEFAULT_CACHE_MB: usize = 1024;
    /// The smallest cache accepted, MiB.
    pub const MIN_CACHE_MB: usize = 4;
    /// The default checkpoint interval, seconds.
    pub const DEFAULT_CHECKPOINT_SECS: u64 = 1;
    /// The longest commit linger accepted, microseconds.
    pub const MAX_COMMIT_LINGER_US: u64 = 100_000;
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            cache_bytes: Self::DEFAULT_CACHE_MB << 20,
            checkpoint_interval: Duration::from_secs(Self::DEFAULT_CHECKPOINT_SECS),
            commit_linger: Duration::ZERO,
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir/switchboard.redb` with default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedOptions::default())
    }

    /// Opens (or creates) the database in `dir/switchboard.redb` and makes sure every table
    /// exists, so readers never meet a missing table.
    pub fn open_with(dir: &Path, options: &EmbeddedOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(be)?;
        let db = Database::builder().set_cache_size(options.cache_bytes).create(dir.join("switchboard.redb")).map_err(be)?;
        let txn = db.begin_write().map_err(be)?;
        {
            txn.open_table(USERS).map_err(be)?;
            txn.open_table(PHONES).map_err(be)?;
            txn.open_table(DEVICES).map_err(be)?;
            txn.open_table(TOKENS).map_err(be)?;
            txn.open_table(USER_DEVICES).map_err(be)?;
            txn.open_table(CODES).map_err(be)?;
            txn.open_table(CONVERSATIONS).map_err(be)?;
            txn.open_table(USER_CONVERSATIONS).map_err(be)?;
            txn.open_table(MESSAGES).map_err(be)?;
            txn.open_table(DEDUP).map_err(be)?;
            txn.open_table(CURSORS).map_err(be)?;
            txn.open_table(LAST_SEEN).map_err(be)?;
            txn.open_table(INVITES).map_err(be)?;
            txn.open_table(LAST_SEQS).map_err(be)?;
            txn.open_table(RETENTION).map_err(be)?;
            txn.open_table(PUSH_TOKENS).map_err(be)?;
            txn.open_table(MEMBER_CURSORS).map_err(be)?;
            txn.open_table(RECEIPT_LOG).map_err(be)?;
            txn.open_table(MEDIA).map_err(be)?;
            txn.open_table(MEDIA_BY_OWNER).map_err(be)?;
            txn.open_table(MEDIA_BY_DIGEST).map_err(be)?;
            txn.open_table(MEDIA_REFS).map_err(be)?;
            txn.open_table(REFERRERS).map_err(be)?;
            txn.open_table(DEVICE_KEYS).map_err(be)?;
            txn.open_table(ONE_TIME_KEYS).map_err(be)?;
            txn.open_table(SPENT_KEYS).map_err(be)?;
            txn.open_table(FALLBACK_KEYS).map_err(be)?;
            txn.open_table(RATE_BUCKETS).map_err(be)?;
            super::embedded_to_device::create_tables(&txn)?;
            super::embedded_contacts::create_tables(&txn)?;
            super::embedded_privacy::create_tables(&txn)?;
            super::embedded_pairing::create_tables(&txn)?;
            super::embedded_profiles::create_tables(&txn)?;
            super::embedded_inbox::create_tables(&txn)?;
            super::embedded_status::create_tables(&txn)?;
        }
        txn.commit().map_err(be)?;
        // Batches logged since the last checkpoint (a crash): replay them, in order, onto
        // the database, then checkpoint.
        let (mut wal, records) = super::wal::Wal::open(&dir.join("switchboard.wal")).map_err(be)?;
        if !records.is_empty() {
            tracing::info!(batches = records.len(), "replaying the write-ahead log");
        }
        for record in &records {
            let writes: Vec<Logged> = decode("write-ahead log", record)?;
            let mut txn = db.begin_write().map_err(be)?;
            txn.set_durability(Durability::None).map_err(be)?;
            for write in &writes {
                apply_logged(&txn, write)?;
            }
            txn.commit().map_err(be)?;
        }
        // Durable now: the log may be emptied.
        let txn = db.begin_write().map_err(be)?;
        txn.commit().map_err(be)?;
        wal.reset().map_err(be)?;
        let db = Arc::new(db);
        let snapshots = Arc::new(Snapshots::new());
        let writer = Arc::new(WriterThread::spawn(db.clone(), wal, snapshots.clone(), options.checkpoint_interval, options.commit_linger)?);
        Ok(Self { writer, db, records: Arc::default(), snapshots })
    }

    /// Runs a short read on the calling task. redb reads of cached pages take microseconds;
    /// a hop to the blocking pool (two context switches) costs more than the read, and the
    /// profile of 1:1 traffic showed those switches on top. Writes, which fsync, still go
    /// to the blocking pool.
    fn read<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        f(&self.db)
    }

    /// Runs a short read on the calling task against the shared read snapshot (the state
    /// as of the last commit; see [`super::embedded_snapshot`]).
    fn snap_read<T>(&self, f: impl FnOnce(&Snapshot) -> Result<T, StoreError>) -> Result<T, StoreError> {
        f(&*self.snapshots.current(&self.db)?)
    }

    /// A long read (exports, counts) on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(be)?
    }

    /// A logged write on the writer thread, group-committed with its neighbours.
    async fn logged(&self, write: Logged) -> Result<LoggedOutcome, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Logged(Box::new(write), tx))?;
        rx.await.map_err(|_| be("store writer thread dropped the write"))?
    }

    /// A light write (`Job::RunLight`: no durability of its own) on the writer thread.
    async fn write_light<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        self.on_writer(f, Job::RunLight).await
    }

    /// A write (its own durable transaction) on the writer thread.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        self.on_writer(f, Job::Run).await
    }

    /// Runs `f` on the writer thread as the job `kind` makes of it, and waits for its answer.
    async fn on_writer<T, F>(&self, f: F, kind: fn(WriterFn) -> Job) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let snapshots = self.snapshots.clone();
        self.writer.send(kind(Box::new(move |db| {
            // `f` commits somewhere inside: its whole run is the commit's window. The guard
            // ends it before the answer (a read that follows the answer must see this
            // write), and also if `f` panics.
            let guard = CommitWindow::open(&snapshots);
            let result = f(db);
            drop(guard);
            let _ = tx.send(result);
        })))?;
        rx.await.map_err(|_| be("store writer thread dropped the write"))?
    }
}

/// Removes a device's one-time keys (unclaimed and spent) and its fallback key.
fn remove_key_material(txn: &WriteTransaction, device_id: DeviceId) -> Result<(), StoreError> {
    let dev = device_id.as_u128();
    let mut unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?;
    for id in key_ids_of(&unclaimed, dev)? {
        unclaimed.remove((dev, id.as_str())).map_err(be)?;
    }
    let mut spent = txn.open_table(SPENT_KEYS).map_err(be)?;
    let mut ids = Vec::new();
    for entry in spent.range((dev, "")..).map_err(be)? {
        let (key, _) = entry.map_err(be)?;
        if key.value().0 != dev {
            break;
        }
        ids.push(key.value().1.to_owned());
    }
    for id in &ids {
        spent.remove((dev, id.as_str())).map_err(be)?;
    }
    txn.open_table(FALLBACK_KEYS).map_err(be)?.remove(dev).map_err(be)?;
    Ok(())
}

/// The ids of a device's unclaimed one-time keys.
fn key_ids_of(table: &impl ReadableTable<(u128, &'static str), &'static [u8]>, dev: u128) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    for entry in table.range((dev, "")..).map_err(be)? {
        let (key, _) = entry.map_err(be)?;
        if key.value().0 != dev {
            break;
        }
        ids.push(key.value().1.to_owned());
    }
    Ok(ids)
}

/// How many unclaimed one-time keys a device has (a range count: at most a few hundred).
fn count_unclaimed(table: &impl ReadableTable<(u128, &'static str), &'static [u8]>, device_id: DeviceId) -> Result<u64, StoreError> {
    Ok(key_ids_of(table, device_id.as_u128())?.len() as u64)
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|db| db.begin_read().map(drop).map_err(be))
    }

    async fn put_pending_code(&self, phone: &str, code: PendingCode) -> Result<(), StoreError> {
        let phone = phone.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            txn.open_table(CODES).map_err(be)?.insert(phone.as_str(), encode(&code)?.as_slice()).map_err(be)?;
            txn.commit().map_err(be)
        })
        .await
    }

    async fn pending_code(&self, phone: &str) -> Result<Option<PendingCode>, StoreError> {
        let phone = phone.to_owned();
        self.snap_read(move |snap| {
            let table = snap.table(CODES)?;
            table.get(phone.as_str()).map_err(be)?.map(|g| decode("pending_codes", g.value())).transpose()
        })
    }

    async fn delete_pending_code(&self, phone: &str) -> Result<(), StoreError> {
        let phone = phone.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            txn.open_table(CODES).map_err(be)?.remove(phone.as_str()).map_err(be)?;
            txn.commit().map_err(be)
        })
        .await
    }

    async fn use_pending_code(&self, phone: &str, guess_hash: [u8; 32], now_ms: u64, max_attempts: u32) -> Result<CodeCheck, StoreError> {
        let phone = phone.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let check = {
                let mut codes = txn.open_table(CODES).map_err(be)?;
                let found: Option<PendingCode> = codes.get(phone.as_str()).map_err(be)?.map(|g| decode("pending_codes", g.value())).transpose()?;
                match found {
                    None => CodeCheck::Missing,
                    Some(code) if code.expires_ms < now_ms => {
                        codes.remove(phone.as_str()).map_err(be)?;
                        CodeCheck::Missing
                    }
                    Some(code) if super::code_matches(&code.code_hash, &guess_hash) => {
                        codes.remove(phone.as_str()).map_err(be)?;
                        CodeCheck::Accepted
                    }
                    Some(mut code) => {
                        code.attempts += 1;
                        if code.attempts >= max_attempts {
                            codes.remove(phone.as_str()).map_err(be)?;
                        } else {
                            codes.insert(phone.as_str(), encode(&code)?.as_slice()).map_err(be)?;
                        }
                        CodeCheck::Wrong
                    }
                }
            };
            txn.commit().map_err(be)?;
            Ok(check)
        })
        .await
    }

    async fn get_or_create_user(&self, phone: &str, new_user: UserRecord) -> Result<(UserRecord, bool), StoreError> {
        let phone = phone.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let result = {
                let mut phones = txn.open_table(PHONES).map_err(be)?;
                let mut users = txn.open_table(USERS).map_err(be)?;
                let existing = phones.get(phone.as_str()).map_err(be)?.map(|g| g.value());
                match existing {
                    Some(id) => {
                        let record = users.get(id).map_err(be)?.ok_or(StoreError::NotFound("user"))?;
                        (decode("users", record.value())?, false)
                    }
                    None => {
                        let id = new_user.user_id.as_u128();
                        phones.insert(phone.as_str(), id).map_err(be)?;
                        users.insert(id, encode(&new_user)?.as_slice()).map_err(be)?;
                        (new_user, true)
                    }
                }
            };
            txn.commit().map_err(be)?;
            Ok(result)
        })
        .await
    }

    async fn change_phone(&self, user: UserId, new_phone: &str) -> Result<bool, StoreError> {
        let new_phone = new_phone.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let changed = {
                let mut phones = txn.open_table(PHONES).map_err(be)?;
                let mut users = txn.open_table(USERS).map_err(be)?;
                let id = user.as_u128();
                let mut record: UserRecord = decode("users", users.get(id).map_err(be)?.ok_or(StoreError::NotFound("user"))?.value())?;
                let owner = phones.get(new_phone.as_str()).map_err(be)?.map(|g| g.value());
                match owner {
                    Some(other) if other != id => false,
                    _ => {
                        if record.phone != new_phone {
                            if phones.get(record.phone.as_str()).map_err(be)?.map(|g| g.value()) == Some(id) {
                                phones.remove(record.phone.as_str()).map_err(be)?;
                            }
                            phones.insert(new_phone.as_str(), id).map_err(be)?;
                            record.phone = new_phone;
                            users.insert(id, encode(&record)?.as_slice()).map_err(be)?;
                        }
                        true
                    }
                }
            };
            txn.commit().map_err(be)?;
            Ok(changed)
        })
        .await
    }

    async fn delete_account_data(&self, user: UserId) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            {
                let mut phones = txn.open_table(PHONES).map_err(be)?;
                let mut users = txn.open_table(USERS).map_err(be)?;
                let id = user.as_u128();
                let found = users.get(id).map_err(be)?.map(|g| decode::<UserRecord>("users", g.value())).transpose()?;
                if let Some(mut record) = found {
                    if phones.get(record.phone.as_str()).map_err(be)?.map(|g| g.value()) == Some(id) {
                        phones.remove(record.phone.as_str()).map_err(be)?;
                    }
                    record.phone = super::deleted_phone(user);
                    users.insert(id, encode(&record)?.as_slice()).map_err(be)?;
                }
            }
            super::embedded_contacts::delete_owner(&txn, user)?;
            super::embedded_inbox::delete_user(&txn, user)?;
            super::embedded_profiles::delete(&txn, user)?;
            super::embedded_privacy::delete_settings(&txn, user)?;
            txn.commit().map_err(be)
        })
        .await
    }

    async fn create_accounts(&self, accounts: Vec<(UserRecord, DeviceRecord)>) -> Result<usize, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let mut created = 0;
            {
                let mut phones = txn.open_table(PHONES).map_err(be)?;
                let mut users = txn.open_table(USERS).map_err(be)?;
                let mut devices = txn.open_table(DEVICES).map_err(be)?;
                let mut user_devices = txn.open_table(USER_DEVICES).map_err(be)?;
                let mut tokens = txn.open_table(TOKENS).map_err(be)?;
                for (user, device) in accounts {
                    if phones.get(user.phone.as_str()).map_err(be)?.is_some() {
                        continue;
                    }
                    let (u, d) = (user.user_id.as_u128(), device.device_id.as_u128());
                    phones.insert(user.phone.as_str(), u).map_err(be)?;
                    users.insert(u, encode(&user)?.as_slice()).map_err(be)?;
                    devices.insert(d, encode(&device)?.as_slice()).map_err(be)?;
                    user_devices.insert((u, d), device.created_ms).map_err(be)?;
                    tokens.insert(&device.token_hash[..], d).map_err(be)?;
                    created += 1;
                }
            }
            txn.commit().map_err(be)?;
            Ok(created)
        })
        .await
    }

    async fn user(&self, user_id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(USERS)?;
            table.get(user_id.as_u128()).map_err(be)?.map(|g| decode("users", g.value())).transpose()
        })
    }

    async fn users_by_phone(&self, phones: Vec<String>) -> Result<Vec<(String, UserId)>, StoreError> {
        self.read(move |db| super::embedded_contacts::users_by_phone(db, &phones))
    }

    async fn known_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.read(move |db| super::embedded_contacts::known(db, owner, &phones))
    }

    async fn contacts_of(&self, owner: UserId) -> Result<Vec<String>, StoreError> {
        self.read(move |db| super::embedded_contacts::all(db, owner))
    }

    async fn add_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_contacts::change(db, owner, &phones, true)).await
    }

    async fn remove_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_contacts::change(db, owner, &phones, false)).await
    }

    async fn chat_states(&self, user: UserId) -> Result<Vec<(ConversationId, super::ChatState)>, StoreError> {
        self.snap_read(move |snap| super::embedded_inbox::all(snap, user))
    }

    async fn chat_state(&self, user: UserId, conversation: ConversationId) -> Result<super::ChatState, StoreError> {
        self.snap_read(move |snap| super::embedded_inbox::get(snap, user, conversation))
    }

    async fn update_chat_state(
        &self,
        user: UserId,
        conversation: ConversationId,
        update: super::ChatUpdate,
        last_seq: u64,
        now_ms: u64,
    ) -> Result<Result<Option<super::ChatState>, super::InboxError>, StoreError> {
        self.write(move |db| super::embedded_inbox::update(db, user, conversation, &update, last_seq, now_ms)).await
    }

    async fn profile(&self, user: UserId) -> Result<Option<super::Profile>, StoreError> {
        self.read(move |db| super::embedded_profiles::get(db, user))
    }

    async fn set_profile(&self, user: UserId, profile: super::Profile) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_profiles::set(db, user, &profile)).await
    }

    async fn put_status(&self, post: super::StatusPost, _now_ms: u64) -> Result<super::StatusPut, StoreError> {
        self.write(move |db| super::embedded_status::put(db, &post)).await
    }

    async fn status_post(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<Option<super::StatusPost>, StoreError> {
        self.read(move |db| super::embedded_status::get(db, poster, post_id, now_ms))
    }

    async fn status_posts(&self, posters: Vec<UserId>, now_ms: u64) -> Result<Vec<super::StatusPost>, StoreError> {
        self.read(move |db| super::embedded_status::of_posters(db, &posters, now_ms))
    }

    async fn delete_status(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |db| super::embedded_status::delete(db, poster, post_id, now_ms)).await
    }

    async fn mark_status_seen(&self, poster: UserId, post_id: super::StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |db| super::embedded_status::mark_seen(db, poster, post_id, viewer, now_ms)).await
    }

    async fn status_views(&self, poster: UserId, post_id: super::StatusId) -> Result<Vec<super::StatusView>, StoreError> {
        self.read(move |db| super::embedded_status::views(db, poster, post_id))
    }

    async fn put_pairing(&self, pairing: PairingRecord) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_pairing::put(db, &pairing)).await
    }

    async fn approve_pairing(&self, code_hash: [u8; 32], user: UserId, device: DeviceId, now_ms: u64) -> Result<PairingApproval, StoreError> {
        self.write(move |db| super::embedded_pairing::approve(db, code_hash, user, device, now_ms)).await
    }

    async fn claim_pairing(&self, code_hash: [u8; 32], claim_hash: [u8; 32], now_ms: u64) -> Result<PairingClaim, StoreError> {
        self.write(move |db| super::embedded_pairing::claim(db, code_hash, claim_hash, now_ms)).await
    }

    async fn privacy(&self, user: UserId) -> Result<PrivacySettings, StoreError> {
        self.snap_read(move |snap| super::embedded_privacy::privacy(snap, user))
    }

    async fn set_privacy(&self, user: UserId, settings: PrivacySettings) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_privacy::set_privacy(db, user, &settings)).await
    }

    async fn is_blocked(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        self.snap_read(move |snap| super::embedded_privacy::is_blocked(snap, user, target))
    }

    async fn blocks_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.snap_read(move |snap| super::embedded_privacy::blocks_of(snap, user))
    }

    async fn blockers_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.snap_read(move |snap| super::embedded_privacy::blockers_of(snap, user))
    }

    async fn set_blocked(&self, user: UserId, target: UserId, blocked: bool, at_ms: u64) -> Result<bool, StoreError> {
        self.write(move |db| super::embedded_privacy::set_blocked(db, user, target, blocked, at_ms)).await
    }

    async fn add_device(&self, device: DeviceRecord, max_devices: usize) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            {
                let mut user_devices = txn.open_table(USER_DEVICES).map_err(be)?;
                let mut devices = txn.open_table(DEVICES).map_err(be)?;
                let user = device.user_id.as_u128();
                // A retry of a link that did commit (its answer was lost) succeeds again.
                if user_devices.get((user, device.device_id.as_u128())).map_err(be)?.is_some() {
                    return Ok(());
                }
                let mut live = 0;
                for entry in user_devices.range((user, 0)..=(user, u128::MAX)).map_err(be)? {
                    let (key, _) = entry.map_err(be)?;
                    let id = key.value().1;
                    if let Some(rec) = devices.get(id).map_err(be)? {
                        let rec: DeviceRecord = decode("devices", rec.value())?;
                        if rec.revoked_ms.is_none() {
                            live += 1;
                        }
                    }
                }
                if live >= max_devices {
                    return Err(StoreError::TooManyDevices { max: max_devices });
                }
                let id = device.device_id.as_u128();
                devices.insert(id, encode(&device)?.as_slice()).map_err(be)?;
                user_devices.insert((user, id), device.created_ms).map_err(be)?;
                txn.open_table(TOKENS).map_err(be)?.insert(&device.token_hash[..], id).map_err(be)?;
            }
            txn.commit().map_err(be)
        })
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        self.snap_read(move |snap| {
            let tokens = snap.table(TOKENS)?;
            let Some(id) = tokens.get(&token_hash[..]).map_err(be)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let devices = snap.table(DEVICES)?;
            devices.get(id).map_err(be)?.map(|g| decode("devices", g.value())).transpose()
        })
    }

    async fn device(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.snap_read(move |snap| {
            let devices = snap.table(DEVICES)?;
            devices.get(device_id.as_u128()).map_err(be)?.map(|g| decode("devices", g.value())).transpose()
        })
    }

    async fn devices_of(&self, user_id: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.snap_read(move |snap| {
            let user_devices = snap.table(USER_DEVICES)?;
            let devices = snap.table(DEVICES)?;
            let user = user_id.as_u128();
            let mut out = Vec::new();
            for entry in user_devices.range((user, 0)..=(user, u128::MAX)).map_err(be)? {
                let (key, _) = entry.map_err(be)?;
                if let Some(rec) = devices.get(key.value().1).map_err(be)? {
                    out.push(decode::<DeviceRecord>("devices", rec.value())?);
                }
            }
            out.sort_by_key(|d| d.created_ms);
            Ok(out)
        })
    }

    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId, at_ms: u64) -> Result<bool, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let revoked = {
                let mut devices = txn.open_table(DEVICES).map_err(be)?;
                let current = devices.get(device_id.as_u128()).map_err(be)?.map(|g| decode::<DeviceRecord>("devices", g.value())).transpose()?;
                match current {
                    Some(mut rec) if rec.user_id == user_id => {
                        if rec.revoked_ms.is_none() {
                            rec.revoked_ms = Some(at_ms);
                            devices.insert(device_id.as_u128(), encode(&rec)?.as_slice()).map_err(be)?;
                        }
                        // Same transaction: a revoked device's keys are never claimed.
                        txn.open_table(DEVICE_KEYS).map_err(be)?.remove(device_id.as_u128()).map_err(be)?;
                        remove_key_material(&txn, device_id)?;
                        super::embedded_to_device::remove_device(&txn, device_id)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(be)?;
            Ok(revoked)
        })
        .await
    }

    async fn create_conversation(&self, conversation: ConversationRecord) -> Result<ConversationRecord, StoreError> {
        match self.logged(Logged::CreateConversation(conversation)).await? {
            LoggedOutcome::Conversation(stored) => Ok(stored),
            _ => Err(be("store writer answered a conversation with another outcome")),
        }
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        // One read path: a large record is cloned from the shared one instead of decoded.
        Ok(self.conversation_shared(id).await?.map(Arc::unwrap_or_clone))
    }

    async fn conversation_shared(&self, id: ConversationId) -> Result<Option<Arc<ConversationRecord>>, StoreError> {
        let records = self.records.clone();
        self.snap_read(move |snap| {
            let table = snap.table(CONVERSATIONS)?;
            let Some(guard) = table.get(id.as_u128()).map_err(be)? else { return Ok(None) };
            records.get_or_decode(id, guard.value()).map(Some)
        })
    }

    async fn conversation_by_invite(&self, hash: [u8; 32]) -> Result<Option<ConversationId>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(INVITES)?;
            Ok(table.get(&hash[..]).map_err(be)?.map(|g| ConversationId::from_u128(g.value())))
        })
    }

    async fn conversations_of(&self, user_id: UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(USER_CONVERSATIONS)?;
            let user = user_id.as_u128();
            let mut out = Vec::new();
            for entry in table.range((user, 0)..=(user, u128::MAX)).map_err(be)? {
                let (key, _) = entry.map_err(be)?;
                out.push(ConversationId::from_u128(key.value().1));
            }
            Ok(out)
        })
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        match self.logged(Logged::Batch(ops)).await? {
            LoggedOutcome::Batch(outcomes) => Ok(outcomes),
            _ => Err(be("store writer answered a batch with another outcome")),
        }
    }

    async fn last_seq(&self, id: ConversationId) -> Result<u64, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(LAST_SEQS)?;
            Ok(table.get(id.as_u128()).map_err(be)?.map(|g| g.value()).unwrap_or(0))
        })
    }

    async fn member_cursor(&self, id: ConversationId, user: UserId) -> Result<MemberCursor, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEMBER_CURSORS)?;
            let (delivered, read) = table.get((id.as_u128(), user.as_u128())).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
            Ok(MemberCursor { delivered, read })
        })
    }

    async fn member_cursors(&self, id: ConversationId) -> Result<Vec<(UserId, MemberCursor)>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEMBER_CURSORS)?;
            let conv = id.as_u128();
            let mut out = Vec::new();
            for entry in table.range((conv, 0)..=(conv, u128::MAX)).map_err(be)? {
                let (key, value) = entry.map_err(be)?;
                let (delivered, read) = value.value();
                out.push((UserId::from_u128(key.value().1), MemberCursor { delivered, read }));
            }
            Ok(out)
        })
    }

    async fn receipt_times(&self, id: ConversationId, user: UserId, seq: u64) -> Result<(Option<u64>, Option<u64>), StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(RECEIPT_LOG)?;
            let (conv, u) = (id.as_u128(), user.as_u128());
            let first = |kind: u8| -> Result<Option<u64>, StoreError> {
                match table.range((conv, u, kind, seq)..=(conv, u, kind, u64::MAX)).map_err(be)?.next() {
                    Some(entry) => Ok(Some(entry.map_err(be)?.1.value())),
                    None => Ok(None),
                }
            };
            Ok((first(0)?, first(1)?))
        })
    }

    async fn set_push_token(&self, user_id: UserId, device_id: DeviceId, token: Option<PushToken>) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            {
                let mut table = txn.open_table(PUSH_TOKENS).map_err(be)?;
                let key = (user_id.as_u128(), device_id.as_u128());
                match token {
                    Some(t) => {
                        table.insert(key, encode(&t)?.as_slice()).map_err(be)?;
                    }
                    None => {
                        table.remove(key).map_err(be)?;
                    }
                }
            }
            txn.commit().map_err(be)
        })
        .await
    }

    async fn push_tokens_of(&self, user_id: UserId) -> Result<Vec<(DeviceId, PushToken)>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(PUSH_TOKENS)?;
            let user = user_id.as_u128();
            let mut out = Vec::new();
            for entry in table.range((user, 0)..=(user, u128::MAX)).map_err(be)? {
                let (key, value) = entry.map_err(be)?;
                out.push((DeviceId::from_u128(key.value().1), decode("push_tokens", value.value())?));
            }
            Ok(out)
        })
    }

    async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let mut purged = 0u64;
            {
                let retention = txn.open_table(RETENTION).map_err(be)?;
                let mut messages = txn.open_table(MESSAGES).map_err(be)?;
                let mut dedup = txn.open_table(DEDUP).map_err(be)?;
                let mut media_refs = txn.open_table(MEDIA_REFS).map_err(be)?;
                let mut referrers = txn.open_table(REFERRERS).map_err(be)?;
                let policies: Vec<(u128, u32)> =
                    retention.iter().map_err(be)?.map(|e| e.map(|(k, v)| (k.value(), v.value()))).collect::<Result<_, _>>().map_err(be)?;
                for (conv, secs) in policies {
                    let cutoff = now_ms.saturating_sub(u64::from(secs) * 1000);
                    // Times grow with seq within a conversation: stop at the first young one.
                    let mut expired = Vec::new();
                    for entry in messages.range((conv, 0)..=(conv, u64::MAX)).map_err(be)? {
                        let (_, value) = entry.map_err(be)?;
                        let m: StoredMessage = decode_message(value.value())?;
                        if m.server_time_ms >= cutoff || expired.len() + purged as usize >= limit {
                            break;
                        }
                        if m.event.is_none() {
                            expired.push(m);
                        }
                    }
                    for m in expired {
                        purge_message(&mut messages, &mut dedup, &mut media_refs, &mut referrers, &m)?;
                        purged += 1;
                    }
                }
            }
            super::embedded_to_device::prune_send_ids(&txn, now_ms, limit)?;
            super::embedded_pairing::purge(&txn, now_ms, limit)?;
            super::embedded_status::purge(&txn, now_ms, limit)?;
            {
                // Idle rate buckets are full again: forget them.
                let mut buckets = txn.open_table(RATE_BUCKETS).map_err(be)?;
                let cutoff = now_ms.saturating_sub(super::RATE_BUCKET_IDLE_MS);
                let mut idle = Vec::new();
                for entry in buckets.iter().map_err(be)? {
                    let (key, value) = entry.map_err(be)?;
                    if value.value().1 < cutoff {
                        idle.push(key.value().to_owned());
                        if idle.len() >= limit {
                            break;
                        }
                    }
                }
                for key in idle {
                    buckets.remove(key.as_str()).map_err(be)?;
                }
            }
            txn.commit().map_err(be)?;
            Ok(purged)
        })
        .await
    }

    async fn find_by_client_id(&self, id: ConversationId, sender: UserId, client_msg_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let client_msg_id = client_msg_id.to_owned();
        self.snap_read(move |snap| {
            let table = snap.table(DEDUP)?;
            Ok(table.get((id.as_u128(), sender.as_u128(), client_msg_id.as_str())).map_err(be)?.map(|g| g.value()))
        })
    }

    async fn messages_after(&self, id: ConversationId, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MESSAGES)?;
            let conv = id.as_u128();
            let mut out = Vec::with_capacity(limit.min(256));
            if after == u64::MAX {
                return Ok(out);
            }
            for entry in table.range((conv, after + 1)..=(conv, u64::MAX)).map_err(be)?.take(limit) {
                let (_, value) = entry.map_err(be)?;
                out.push(decode_message(value.value())?);
            }
            Ok(out)
        })
    }

    async fn messages_before(&self, id: ConversationId, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MESSAGES)?;
            let conv = id.as_u128();
            let mut out = Vec::with_capacity(limit.min(256));
            let upper = if before == 0 { u64::MAX } else { before - 1 };
            if before == 1 {
                return Ok(out);
            }
            for entry in table.range((conv, 0)..=(conv, upper)).map_err(be)?.rev().take(limit) {
                let (_, value) = entry.map_err(be)?;
                out.push(decode_message(value.value())?);
            }
            Ok(out)
        })
    }

    async fn create_media(&self, record: MediaRecord) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            {
                let mut media = txn.open_table(MEDIA).map_err(be)?;
                if media.get(record.media_id.as_u128()).map_err(be)?.is_none() {
                    let mut by_owner = txn.open_table(MEDIA_BY_OWNER).map_err(be)?;
                    let mut by_digest = txn.open_table(MEDIA_BY_DIGEST).map_err(be)?;
                    put_media(&mut media, &mut by_owner, &mut by_digest, &record)?;
                }
            }
            txn.commit().map_err(be)
        })
        .await
    }

    async fn media(&self, id: MediaId) -> Result<Option<MediaRecord>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEDIA)?;
            table.get(id.as_u128()).map_err(be)?.map(|g| decode("media", g.value())).transpose()
        })
    }

    async fn update_media(&self, record: MediaRecord) -> Result<bool, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let replaced = {
                let mut media = txn.open_table(MEDIA).map_err(be)?;
                let current: Option<MediaRecord> =
                    media.get(record.media_id.as_u128()).map_err(be)?.map(|g| decode("media", g.value())).transpose()?;
                match current {
                    Some(c) if c.version + 1 == record.version && c.owner == record.owner => {
                        let mut by_owner = txn.open_table(MEDIA_BY_OWNER).map_err(be)?;
                        let mut by_digest = txn.open_table(MEDIA_BY_DIGEST).map_err(be)?;
                        put_media(&mut media, &mut by_owner, &mut by_digest, &record)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(be)?;
            Ok(replaced)
        })
        .await
    }

    async fn delete_media(&self, id: MediaId, version: u64) -> Result<bool, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let deleted = {
                let mut media = txn.open_table(MEDIA).map_err(be)?;
                let current: Option<MediaRecord> = media.get(id.as_u128()).map_err(be)?.map(|g| decode("media", g.value())).transpose()?;
                match current {
                    Some(c) if c.version == version => {
                        media.remove(id.as_u128()).map_err(be)?;
                        txn.open_table(MEDIA_BY_OWNER).map_err(be)?.remove((c.owner.as_u128(), id.as_u128())).map_err(be)?;
                        if let Some(d) = c.digest {
                            txn.open_table(MEDIA_BY_DIGEST).map_err(be)?.remove((d, id.as_u128())).map_err(be)?;
                        }
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(be)?;
            Ok(deleted)
        })
        .await
    }

    async fn media_refs(&self, id: MediaId, limit: usize) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEDIA_REFS)?;
            let m = id.as_u128();
            let mut out = Vec::new();
            for entry in table.range((m, 0, 0)..=(m, u128::MAX, u64::MAX)).map_err(be)?.take(limit) {
                let (key, _) = entry.map_err(be)?;
                let (_, conv, seq) = key.value();
                out.push((ConversationId::from_u128(conv), seq));
            }
            Ok(out)
        })
    }

    async fn media_usage(&self, owner: UserId) -> Result<u64, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEDIA_BY_OWNER)?;
            let o = owner.as_u128();
            let mut total = 0u64;
            for entry in table.range((o, 0)..=(o, u128::MAX)).map_err(be)? {
                let (_, len) = entry.map_err(be)?;
                total = total.saturating_add(len.value());
            }
            Ok(total)
        })
    }

    async fn take_token(&self, key: &str, rule: BucketRule, now_ms: u64) -> Result<Taken, StoreError> {
        let key = checked_bucket_key(key)?.to_owned();
        // One write transaction reads and replaces the bucket: redb runs one at a time.
        // Not durable by itself (a cheap commit on the writer thread, no checkpoint and no
        // fsync: a flood of refused sign-ups must not slow the message path), and a refusal
        // writes nothing.
        self.write_light(move |db| {
            let mut txn = db.begin_write().map_err(be)?;
            txn.set_durability(Durability::None).map_err(be)?;
            let decision = {
                let table = txn.open_table(RATE_BUCKETS).map_err(be)?;
                let current = table.get(key.as_str()).map_err(be)?.map(|g| {
                    let (tokens_milli, at_ms) = g.value();
                    BucketState { tokens_milli, at_ms }
                });
                token_bucket::take(current, rule, now_ms)
            };
            match decision {
                Decision::Take(next) => {
                    txn.open_table(RATE_BUCKETS).map_err(be)?.insert(key.as_str(), (next.tokens_milli, next.at_ms)).map_err(be)?;
                    txn.commit().map_err(be)?;
                    Ok(Taken::Yes)
                }
                Decision::Refuse { retry_after_ms } => {
                    txn.abort().map_err(be)?;
                    Ok(Taken::No { retry_after_ms })
                }
            }
        })
        .await
    }

    async fn media_page(&self, after: Option<MediaId>, limit: usize) -> Result<Vec<MediaRecord>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEDIA)?;
            let mut out = Vec::new();
            for entry in table.range(after_bounds(after.map(|a| a.as_u128()))).map_err(be)?.take(limit) {
                let (_, v) = entry.map_err(be)?;
                out.push(decode("media", v.value())?);
            }
            Ok(out)
        })
    }

    async fn media_with_digest(&self, digest: [u8; 32], limit: usize) -> Result<Vec<MediaId>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(MEDIA_BY_DIGEST)?;
            let mut out = Vec::new();
            for entry in table.range((digest, 0)..=(digest, u128::MAX)).map_err(be)?.take(limit) {
                let (key, _) = entry.map_err(be)?;
                out.push(MediaId::from_u128(key.value().1));
            }
            Ok(out)
        })
    }

    async fn put_device_keys(&self, keys: DeviceKeys) -> Result<KeysStored, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let stored = {
                let devices = txn.open_table(DEVICES).map_err(be)?;
                let device: Option<DeviceRecord> =
                    devices.get(keys.device_id.as_u128()).map_err(be)?.map(|g| decode("devices", g.value())).transpose()?;
                if !device.is_some_and(|d| d.user_id == keys.user_id && d.revoked_ms.is_none()) {
                    return Err(StoreError::NotFound("device"));
                }
                let mut table = txn.open_table(DEVICE_KEYS).map_err(be)?;
                let current: Option<DeviceKeys> =
                    table.get(keys.device_id.as_u128()).map_err(be)?.map(|g| decode("device_keys", g.value())).transpose()?;
                match current {
                    Some(c) if c.same_keys(&keys) => KeysStored::Unchanged,
                    current => {
                        table.insert(keys.device_id.as_u128(), encode(&keys)?.as_slice()).map_err(be)?;
                        if current.is_some() {
                            // The old account's one-time keys cannot open sessions with the new one.
                            remove_key_material(&txn, keys.device_id)?;
                            KeysStored::Replaced
                        } else {
                            KeysStored::New
                        }
                    }
                }
            };
            txn.commit().map_err(be)?;
            Ok(stored)
        })
        .await
    }

    async fn device_keys_of(&self, user_id: UserId) -> Result<Vec<DeviceKeys>, StoreError> {
        self.snap_read(move |snap| {
            let user_devices = snap.table(USER_DEVICES)?;
            let keys = snap.table(DEVICE_KEYS)?;
            let user = user_id.as_u128();
            let mut out = Vec::new();
            for entry in user_devices.range((user, 0)..=(user, u128::MAX)).map_err(be)? {
                let (key, _) = entry.map_err(be)?;
                if let Some(rec) = keys.get(key.value().1).map_err(be)? {
                    out.push(decode::<DeviceKeys>("device_keys", rec.value())?);
                }
            }
            Ok(out)
        })
    }

    async fn add_one_time_keys(&self, device_id: DeviceId, keys: Vec<OneTimeKey>, fallback: Option<OneTimeKey>) -> Result<u64, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let dev = device_id.as_u128();
            {
                let mut unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?;
                let spent = txn.open_table(SPENT_KEYS).map_err(be)?;
                for key in &keys {
                    let id = (dev, key.key_id.as_str());
                    if unclaimed.get(id).map_err(be)?.is_none() && spent.get(id).map_err(be)?.is_none() {
                        unclaimed.insert(id, encode(key)?.as_slice()).map_err(be)?;
                    }
                }
                if let Some(fallback) = &fallback {
                    txn.open_table(FALLBACK_KEYS).map_err(be)?.insert(dev, encode(fallback)?.as_slice()).map_err(be)?;
                }
            }
            let count = count_unclaimed(&txn.open_table(ONE_TIME_KEYS).map_err(be)?, device_id)?;
            txn.commit().map_err(be)?;
            Ok(count)
        })
        .await
    }

    async fn one_time_key_count(&self, device_id: DeviceId) -> Result<u64, StoreError> {
        self.snap_read(move |snap| count_unclaimed(&*snap.table(ONE_TIME_KEYS)?, device_id))
    }

    async fn claim_one_time_key(&self, device_id: DeviceId, at_ms: u64) -> Result<Option<ClaimedKey>, StoreError> {
        // On the writer thread, in one write transaction: claims are serialised by redb's
        // single writer, so the first unclaimed key is moved to the spent table exactly once.
        self.write(move |db| {
            let txn = db.begin_write().map_err(be)?;
            let dev = device_id.as_u128();
            let claimed = {
                let mut unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?;
                let first = match unclaimed.range((dev, "")..).map_err(be)?.next() {
                    Some(entry) => {
                        let (key, value) = entry.map_err(be)?;
                        (key.value().0 == dev).then(|| decode::<OneTimeKey>("one_time_keys", value.value())).transpose()?
                    }
                    None => None,
                };
                match first {
                    Some(key) => {
                        unclaimed.remove((dev, key.key_id.as_str())).map_err(be)?;
                        txn.open_table(SPENT_KEYS).map_err(be)?.insert((dev, key.key_id.as_str()), at_ms).map_err(be)?;
                        Some(ClaimedKey { key, fallback: false })
                    }
                    None => txn
                        .open_table(FALLBACK_KEYS)
                        .map_err(be)?
                        .get(dev)
                        .map_err(be)?
                        .map(|g| decode::<OneTimeKey>("fallback_keys", g.value()))
                        .transpose()?
                        .map(|key| ClaimedKey { key, fallback: true }),
                }
            };
            txn.commit().map_err(be)?;
            Ok(claimed)
        })
        .await
    }

    async fn enqueue_to_device(&self, send: ToDeviceSend, bounds: QueueBounds) -> Result<ToDeviceStored, StoreError> {
        match self.logged(Logged::ToDeviceBounded(send, bounds)).await? {
            LoggedOutcome::ToDevice(stored) => Ok(stored),
            _ => Err(be("store writer answered a to-device send with another outcome")),
        }
    }

    async fn to_device_after(&self, device_id: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError> {
        self.snap_read(move |snap| super::embedded_to_device::after(snap, device_id, after, limit))
    }

    async fn ack_to_device(&self, device_id: DeviceId, up_to: u64) -> Result<(), StoreError> {
        match self.logged(Logged::AckToDevice(device_id, up_to)).await? {
            LoggedOutcome::Done => Ok(()),
            _ => Err(be("store writer answered a to-device acknowledgement with another outcome")),
        }
    }

    async fn note_device_list_change(&self, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_to_device::note_change(db, changed, devices, at_ms)).await
    }

    async fn device_list_changes(&self, device_id: DeviceId) -> Result<Vec<UserId>, StoreError> {
        self.snap_read(move |snap| super::embedded_to_device::changes(snap, device_id))
    }

    async fn ack_device_list_changes(&self, device_id: DeviceId, users: Vec<UserId>) -> Result<(), StoreError> {
        self.write(move |db| super::embedded_to_device::ack_changes(db, device_id, users)).await
    }

    async fn cursors_of(&self, device_id: DeviceId) -> Result<Vec<(ConversationId, Cursor)>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(CURSORS)?;
            let dev = device_id.as_u128();
            let mut out = Vec::new();
            for entry in table.range((dev, 0)..=(dev, u128::MAX)).map_err(be)? {
                let (key, value) = entry.map_err(be)?;
                let (delivered, read) = value.value();
                out.push((ConversationId::from_u128(key.value().1), Cursor { delivered, read }));
            }
            Ok(out)
        })
    }

    async fn last_seen(&self, user_id: UserId) -> Result<Option<u64>, StoreError> {
        self.snap_read(move |snap| {
            let table = snap.table(LAST_SEEN)?;
            Ok(table.get(user_id.as_u128()).map_err(be)?.map(|g| g.value()))
        })
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.write(move |db| Self::import_sync(db, records)).await
    }

    async fn count(&self, section: Section) -> Result<u64, StoreError> {
        self.blocking(move |db| Self::count_sync(db, section)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Batches are durable in the log already; a checkpoint puts them in the database
        // and empties the log before the process exits.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Checkpoint(tx))?;
        rx.await.map_err(|_| be("store writer thread dropped the checkpoint"))?
    }
}

/// Range bounds strictly after `after` (or everything), for resumable exports.
fn after_bounds<K>(after: Option<K>) -> (Bound<K>, Bound<K>) {
    (after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded)
}

impl EmbeddedStore {
    /// Up to `limit` records of `section` strictly after `after`, in key order, and the
    /// position of the last one returned (None when there are no more): the source side of
    /// `switchboard store copy`.
    pub async fn export(&self, section: Section, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(be)?;
            let mut out = Vec::with_capacity(limit.min(4096));
            let mut last = None;
            match section {
                Section::Users => {
                    let t = txn.open_table(USERS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::User(decode("users", v.value())?));
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::Devices => {
                    let t = txn.open_table(DEVICES).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::Device(decode("devices", v.value())?));
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::Conversations => {
                    let t = txn.open_table(CONVERSATIONS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::Conversation(decode("conversations", v.value())?));
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::Memberships => {
                    let t = txn.open_table(USER_CONVERSATIONS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| (p.0, p.1)))).map_err(be)?.take(limit) {
                        let (k, _) = e.map_err(be)?;
                        let (user, conv) = k.value();
                        out.push(Record::Membership { user_id: UserId::from_u128(user), conversation_id: ConversationId::from_u128(conv) });
                        last = Some(Position(user, conv, 0, 0));
                    }
                }
                Section::Messages => {
                    let t = txn.open_table(MESSAGES).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| (p.0, p.2)))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::Message(decode_message(v.value())?));
                        let (conv, seq) = k.value();
                        last = Some(Position(conv, 0, seq, 0));
                    }
                }
                Section::LastSeqs => {
                    let t = txn.open_table(LAST_SEQS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::LastSeq { conversation_id: ConversationId::from_u128(k.value()), last_seq: v.value() });
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::Cursors => {
                    let t = txn.open_table(CURSORS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| (p.0, p.1)))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        let ((device, conv), (delivered, read)) = (k.value(), v.value());
                        out.push(Record::Cursor {
                            device_id: DeviceId::from_u128(device),
                            conversation_id: ConversationId::from_u128(conv),
                            cursor: Cursor { delivered, read },
                        });
                        last = Some(Position(device, conv, 0, 0));
                    }
                }
                Section::MemberCursors => {
                    let t = txn.open_table(MEMBER_CURSORS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| (p.0, p.1)))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        let ((conv, user), (delivered, read)) = (k.value(), v.value());
                        out.push(Record::MemberCursor {
                            conversation_id: ConversationId::from_u128(conv),
                            user_id: UserId::from_u128(user),
                            cursor: MemberCursor { delivered, read },
                        });
                        last = Some(Position(conv, user, 0, 0));
                    }
                }
                Section::Receipts => {
                    let t = txn.open_table(RECEIPT_LOG).map_err(be)?;
                    let start = after.map(|p| (p.0, p.1, u8::try_from(p.2).unwrap_or(u8::MAX), p.3));
                    for e in t.range(after_bounds(start)).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        let (conv, user, kind, seq) = k.value();
                        out.push(Record::Receipt {
                            conversation_id: ConversationId::from_u128(conv),
                            user_id: UserId::from_u128(user),
                            kind,
                            seq,
                            at_ms: v.value(),
                        });
                        last = Some(Position(conv, user, u64::from(kind), seq));
                    }
                }
                Section::LastSeen => {
                    let t = txn.open_table(LAST_SEEN).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::LastSeen { user_id: UserId::from_u128(k.value()), at_ms: v.value() });
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::PushTokens => {
                    let t = txn.open_table(PUSH_TOKENS).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| (p.0, p.1)))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        let (user, device) = k.value();
                        out.push(Record::PushToken {
                            user_id: UserId::from_u128(user),
                            device_id: DeviceId::from_u128(device),
                            token: decode("push_tokens", v.value())?,
                        });
                        last = Some(Position(user, device, 0, 0));
                    }
                }
                Section::Media => {
                    let t = txn.open_table(MEDIA).map_err(be)?;
                    for e in t.range(after_bounds(after.map(|p| p.0))).map_err(be)?.take(limit) {
                        let (k, v) = e.map_err(be)?;
                        out.push(Record::Media(decode("media", v.value())?));
                        last = Some(Position(k.value(), 0, 0, 0));
                    }
                }
                Section::DeviceKeys
                | Section::OneTimeKeys
                | Section::FallbackKeys
                | Section::ToDeviceQueues
                | Section::ToDeviceEntries
                | Section::DeviceListNotices => return super::embedded_e2ee_copy::export(&txn, section, after, limit),
                Section::Contacts => return super::embedded_contacts::export(db, after, limit),
                Section::Privacy | Section::Blocks => return super::embedded_privacy::export(db, section, after, limit),
                Section::Profiles => return super::embedded_profiles::export(db, after, limit),
                Section::ChatStates => return super::embedded_inbox::export(db, after, limit),
                Section::Statuses | Section::StatusViews => return super::embedded_status::export(db, section, after, limit),
            }
            Ok((out, last))
        })
        .await
    }

    fn import_sync(db: &Database, records: Vec<Record>) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(be)?;
        let (e2ee, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(super::embedded_e2ee_copy::is_e2ee);
        super::embedded_e2ee_copy::import(&txn, e2ee)?;
        let (contacts, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| matches!(r, Record::Contact { .. }));
        let contacts: Vec<(UserId, String)> =
            contacts.into_iter().filter_map(|r| if let Record::Contact { owner, phone } = r { Some((owner, phone)) } else { None }).collect();
        super::embedded_contacts::import(&txn, &contacts)?;
        let (profiles, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| matches!(r, Record::Profile { .. }));
        let profiles: Vec<(UserId, super::Profile)> =
            profiles.into_iter().filter_map(|r| if let Record::Profile { user_id, profile } = r { Some((user_id, profile)) } else { None }).collect();
        super::embedded_profiles::import(&txn, &profiles)?;
        let (chats, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| matches!(r, Record::ChatState { .. }));
        let chats: Vec<(UserId, ConversationId, super::ChatState)> = chats
            .into_iter()
            .filter_map(
                |r| if let Record::ChatState { user_id, conversation_id, state } = r { Some((user_id, conversation_id, state)) } else { None },
            )
            .collect();
        super::embedded_inbox::import(&txn, &chats)?;
        let (privacy, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(super::embedded_privacy::is_privacy);
        super::embedded_privacy::import(&txn, privacy)?;
        let (statuses, records): (Vec<Record>, Vec<Record>) = records.into_iter().partition(super::embedded_status::is_status);
        super::embedded_status::import(&txn, statuses)?;
        {
            let mut users = txn.open_table(USERS).map_err(be)?;
            let mut phones = txn.open_table(PHONES).map_err(be)?;
            let mut devices = txn.open_table(DEVICES).map_err(be)?;
            let mut user_devices = txn.open_table(USER_DEVICES).map_err(be)?;
            let mut tokens = txn.open_table(TOKENS).map_err(be)?;
            let mut conversations = txn.open_table(CONVERSATIONS).map_err(be)?;
            let mut retention = txn.open_table(RETENTION).map_err(be)?;
            let mut invites = txn.open_table(INVITES).map_err(be)?;
            let mut by_user = txn.open_table(USER_CONVERSATIONS).map_err(be)?;
            let mut messages = txn.open_table(MESSAGES).map_err(be)?;
            let mut dedup = txn.open_table(DEDUP).map_err(be)?;
            let mut last_seqs = txn.open_table(LAST_SEQS).map_err(be)?;
            let mut cursors = txn.open_table(CURSORS).map_err(be)?;
            let mut member_cursors = txn.open_table(MEMBER_CURSORS).map_err(be)?;
            let mut receipt_log = txn.open_table(RECEIPT_LOG).map_err(be)?;
            let mut last_seen = txn.open_table(LAST_SEEN).map_err(be)?;
            let mut push_tokens = txn.open_table(PUSH_TOKENS).map_err(be)?;
            let mut media_refs = txn.open_table(MEDIA_REFS).map_err(be)?;
            let mut referrers = txn.open_table(REFERRERS).map_err(be)?;
            let mut media = txn.open_table(MEDIA).map_err(be)?;
            let mut media_by_owner = txn.open_table(MEDIA_BY_OWNER).map_err(be)?;
            let mut media_by_digest = txn.open_table(MEDIA_BY_DIGEST).map_err(be)?;
            for record in records {
                match record {
                    Record::User(user) => {
                        let id = user.user_id.as_u128();
                        phones.insert(user.phone.as_str(), id).map_err(be)?;
                        users.insert(id, encode(&user)?.as_slice()).map_err(be)?;
                    }
                    Record::Device(device) => {
                        let id = device.device_id.as_u128();
                        devices.insert(id, encode(&device)?.as_slice()).map_err(be)?;
                        user_devices.insert((device.user_id.as_u128(), id), device.created_ms).map_err(be)?;
                        tokens.insert(&device.token_hash[..], id).map_err(be)?;
                    }
                    Record::Conversation(record) => {
                        let id = record.conversation_id.as_u128();
                        if record.retention_secs > 0 {
                            retention.insert(id, record.retention_secs).map_err(be)?;
                        }
                        if let Some(hash) = record.group.as_ref().and_then(|g| g.invite_hash) {
                            invites.insert(&hash[..], id).map_err(be)?;
                        }
                        conversations.insert(id, encode(&record)?.as_slice()).map_err(be)?;
                    }
                    Record::Membership { user_id, conversation_id } => {
                        by_user.insert((user_id.as_u128(), conversation_id.as_u128()), ()).map_err(be)?;
                    }
                    Record::Message(m) => {
                        let conv = m.conversation_id.as_u128();
                        messages.insert((conv, m.seq), encode(&m)?.as_slice()).map_err(be)?;
                        dedup.insert((conv, m.sender_user_id.as_u128(), m.client_msg_id.as_str()), (m.seq, m.server_time_ms)).map_err(be)?;
                        add_refs(&mut media_refs, &m)?;
                        add_referrer(&mut referrers, &m)?;
                    }
                    Record::LastSeq { conversation_id, last_seq } => {
                        let id = conversation_id.as_u128();
                        let current = last_seqs.get(id).map_err(be)?.map(|g| g.value()).unwrap_or(0);
                        last_seqs.insert(id, current.max(last_seq)).map_err(be)?;
                    }
                    Record::Cursor { device_id, conversation_id, cursor } => {
                        let key = (device_id.as_u128(), conversation_id.as_u128());
                        let (d, r) = cursors.get(key).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
                        cursors.insert(key, (d.max(cursor.delivered), r.max(cursor.read))).map_err(be)?;
                    }
                    Record::MemberCursor { conversation_id, user_id, cursor } => {
                        let key = (conversation_id.as_u128(), user_id.as_u128());
                        let (d, r) = member_cursors.get(key).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
                        member_cursors.insert(key, (d.max(cursor.delivered), r.max(cursor.read))).map_err(be)?;
                    }
                    Record::Receipt { conversation_id, user_id, kind, seq, at_ms } => {
                        receipt_log.insert((conversation_id.as_u128(), user_id.as_u128(), kind, seq), at_ms).map_err(be)?;
                    }
                    Record::LastSeen { user_id, at_ms } => {
                        let current = last_seen.get(user_id.as_u128()).map_err(be)?.map(|g| g.value()).unwrap_or(0);
                        last_seen.insert(user_id.as_u128(), current.max(at_ms)).map_err(be)?;
                    }
                    Record::PushToken { user_id, device_id, token } => {
                        push_tokens.insert((user_id.as_u128(), device_id.as_u128()), encode(&token)?.as_slice()).map_err(be)?;
                    }
                    Record::Media(record) => put_media(&mut media, &mut media_by_owner, &mut media_by_digest, &record)?,
                    other => return Err(be(format!("unexpected record in import: {other:?}"))),
                }
            }
        }
        txn.commit().map_err(be)
    }

    fn count_sync(db: &Database, section: Section) -> Result<u64, StoreError> {
        let txn = db.begin_read().map_err(be)?;
        let n = match section {
            Section::Users => txn.open_table(USERS).map_err(be)?.len(),
            Section::Devices => txn.open_table(DEVICES).map_err(be)?.len(),
            Section::Conversations => txn.open_table(CONVERSATIONS).map_err(be)?.len(),
            Section::Memberships => txn.open_table(USER_CONVERSATIONS).map_err(be)?.len(),
            Section::Messages => txn.open_table(MESSAGES).map_err(be)?.len(),
            Section::LastSeqs => txn.open_table(LAST_SEQS).map_err(be)?.len(),
            Section::Cursors => txn.open_table(CURSORS).map_err(be)?.len(),
            Section::MemberCursors => txn.open_table(MEMBER_CURSORS).map_err(be)?.len(),
            Section::Receipts => txn.open_table(RECEIPT_LOG).map_err(be)?.len(),
            Section::LastSeen => txn.open_table(LAST_SEEN).map_err(be)?.len(),
            Section::PushTokens => txn.open_table(PUSH_TOKENS).map_err(be)?.len(),
            Section::Media => txn.open_table(MEDIA).map_err(be)?.len(),
            Section::Contacts => return super::embedded_contacts::count(db),
            Section::Privacy | Section::Blocks => return super::embedded_privacy::count(db, section),
            Section::Profiles => return super::embedded_profiles::count(db),
            Section::ChatStates => return super::embedded_inbox::count(db),
            Section::Statuses | Section::StatusViews => return super::embedded_status::count(db, section),
            other => return super::embedded_e2ee_copy::count(&txn, other),
        };
        n.map_err(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ContentKind, ConversationKind};

    fn message(conversation: ConversationId, seq: u64, sender: UserId) -> StoredMessage {
        StoredMessage {
            conversation_id: conversation,
            seq,
            sender_user_id: sender,
            sender_device_id: DeviceId::random(),
            client_msg_id: format!("c{seq}"),
            server_time_ms: seq,
            payload: bytes::Bytes::from(format!("m{seq}")),
            event: None,
            kind: ContentKind::Normal,
            reference_seq: 0,
            deleted: false,
            attachments: Vec::new(),
        }
    }

    /// Creates a conversation of two new users: (a, b, its id).
    async fn direct_conversation(store: &EmbeddedStore) -> (UserId, UserId, ConversationId) {
        let (a, b) = (UserId::random(), UserId::random());
        let id = ConversationId::random();
        let record = ConversationRecord {
            conversation_id: id,
            kind: ConversationKind::Direct,
            members: vec![a, b],
            created_ms: 1,
            group: None,
            retention_secs: 0,
        };
        store.create_conversation(record).await.expect("conversation");
        (a, b, id)
    }

    /// A crash image: the files as they are on disk between two batches, before any
    /// checkpoint. Opening it replays the log: every acknowledged batch is there.
    #[tokio::test]
    async fn batches_logged_before_a_crash_are_replayed_and_replay_is_idempotent() {
        let live = tempfile::tempdir().expect("tempdir");
        // No time-based checkpoint during the test (a slow machine must not empty the log
        // before it is copied); dropping the store still checkpoints.
        let options = EmbeddedOptions { checkpoint_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open_with(live.path(), &options).expect("open");
        let (a, b, id) = direct_conversation(&store).await;
        for batch in 0..5u64 {
            let ops = (1..=10).map(|i| WriteOp::Append(message(id, batch * 10 + i, a))).collect();
            let outcomes = store.apply(ops).await.expect("apply");
            assert!(outcomes.iter().all(|o| *o == WriteOutcome::Appended));
        }
        let cursor = WriteOp::AdvanceCursor { user_id: b, device_id: DeviceId::random(), conversation_id: id, delivered: 50, read: 40, at_ms: 99 };
        store.apply(vec![cursor]).await.expect("cursor");
        let crashed = tempfile::tempdir().expect("tempdir");
        for file in ["switchboard.redb", "switchboard.wal"] {
            std::fs::copy(live.path().join(file), crashed.path().join(file)).expect("copy");
        }
        let (_, logged) = super::super::wal::Wal::open(&crashed.path().join("switchboard.wal")).expect("log");
        assert_eq!(logged.len(), 7, "the creation, five batches and the cursor are in the log, not yet checkpointed");
        // The same image twice: replaying onto a database that already holds some of the
        // log (a crash between a checkpoint and the log's emptying) changes nothing.
        let twice = tempfile::tempdir().expect("tempdir");
        std::fs::copy(live.path().join("switchboard.wal"), twice.path().join("switchboard.wal")).expect("copy");
        drop(store);
        std::fs::copy(live.path().join("switchboard.redb"), twice.path().join("switchboard.redb")).expect("copy checkpointed db");
        for dir in [crashed.path(), twice.path()] {
            let recovered = EmbeddedStore::open(dir).expect("recover");
            assert_eq!(recovered.last_seq(id).await.expect("last seq"), 50);
            assert_eq!(recovered.conversations_of(a).await.expect("list"), vec![id], "the logged creation was replayed too");
            let all = recovered.messages_after(id, 0, 100).await.expect("read");
            assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
            assert_eq!(recovered.member_cursors(id).await.expect("cursors"), vec![(b, MemberCursor { delivered: 50, read: 40 })]);
            let (_, left) = super::super::wal::Wal::open(&dir.join("switchboard.wal")).expect("log");
            assert!(left.is_empty(), "checkpointed after replay");
        }
    }

    /// With a commit linger, a logged write that arrives while the group waits joins it:
    /// the two are one record of the log, and both are answered.
    #[tokio::test]
    async fn writes_within_the_commit_linger_share_one_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options =
            EmbeddedOptions { commit_linger: Duration::from_secs(1), checkpoint_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open_with(dir.path(), &options).expect("open");
        let (a, b, id) = direct_conversation(&store).await;
        let first = store.apply(vec![WriteOp::Append(message(id, 1, a))]);
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.apply(vec![WriteOp::Append(message(id, 2, b))]).await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first.expect("first"), vec![WriteOutcome::Appended]);
        assert_eq!(second.expect("second"), vec![WriteOutcome::Appended]);
        let (_, records) = super::super::wal::Wal::open(&dir.path().join("switchboard.wal")).expect("log");
        assert_eq!(records.len(), 2, "the creation, then both appends in one group");
    }
}
