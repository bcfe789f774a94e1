//! The ScyllaDB backend (also Cassandra 4+): the production store, on the `scylla` driver.
//!
//! ScyllaDB has no multi-partition transactions, so the contract's guarantees are built
//! from single-partition lightweight transactions (Paxos, serial consistency LOCAL_SERIAL)
//! and idempotent plain writes (LOCAL_QUORUM), in an order chosen so that a crash or a
//! timeout between any two steps leaves a state the next attempt repairs:
//!
//! 1. **Idempotency key first.** An append claims `(conversation, sender, client_msg_id)`
//!    in `message_dedup` with `INSERT … IF NOT EXISTS`, pointing at the seq it is about to
//!    take. If the key is already claimed, the log decides: the claimed seq holds this
//!    very message → `Duplicate`; it holds another message, or the fence never reached it
//!    → the claim is stale (an earlier attempt lost its race or died before the log) and is
//!    moved, with `UPDATE … IF seq = <old>`, to the new seq.
//! 2. **Fence and row together.** The log partition `(conversation, bucket = seq / 1024)`
//!    carries the bucket's fence as a static column; the append is one conditional batch on
//!    that partition: `IF last_seq = seq - 1` (or `IF last_seq = null` for a bucket's first
//!    seq, after checking that the previous bucket ends at `seq - 1`) sets the fence and
//!    writes the row, atomically. A lost race → `SeqConflict` and the claim is released.
//! 3. **Events carry the record.** An event's batch also stores the conversation record as
//!    the bucket's static `record`, and a new bucket inherits it. The `conversations` table
//!    is a projection written after the batch; a reader that finds it behind the log's
//!    record repairs it (and the member lists and invite index with it). A "delete for
//!    everyone" of a message in the same bucket is erased in the event's batch; one in an
//!    older bucket by a second conditional write after it, so a node dying in between
//!    leaves that payload until the delete is retried.
//!
//! `apply` is therefore not one transaction here: each op is atomic and idempotent on its
//! own, and an `Err` means "some ops may have happened" — which callers already treat as
//! "not acknowledged, retry": the retry finds what did happen through the dedup key.
//!
//! Cursors only grow: they are written with `USING TIMESTAMP` equal to the value, so the
//! largest value wins whatever order replicas see writes in. Receipt-log entries use
//! `i64::MAX - at_ms`, so the earliest time wins. Last-seen times keep the latest: written
//! `USING TIMESTAMP` = the time in microseconds (comparable with the default timestamps of
//! rows written before, so an older row never beats a later time).
//!
//! Disappearing messages expire by TTL (set on each row from the conversation's retention
//! when it is written), so `purge_expired` has nothing to do; as in WhatsApp, turning
//! retention on applies to messages sent from then on. Status posts and their views
//! expire by TTL too (`scylla/status.rs`).
//!
//! Every multi-row read is paged (`execute_single_page` with a paging state, never
//! unpaged). Statements are prepared once at connect; each names its whole partition key,
//! so the driver routes it token- and shard-aware. Timeouts and retries: see
//! [`ScyllaOptions`] and ARCHITECTURE.md.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::response::PagingState;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use uuid::Uuid;

mod status;
mod to_device;

use super::checked_bucket_key;
use super::transfer::{Record, Section};
use super::{
    ClaimedKey, CodeCheck, ContentKind, ConversationId, ConversationRecord, Cursor, DeviceId, DeviceKeys, DeviceRecord, KeysStored, MediaId,
    MediaRecord, MemberCursor, OneTimeKey, PairingApproval, PairingClaim, PairingRecord, PendingCode, PrivacySettings, PushToken, Store, StoreError,
    StoredMessage, ToDeviceQueue, ToDeviceSend, ToDeviceStored, UserId, UserRecord, WriteOp, WriteOutcome,
};
use crate::cores::token_bucket::{self, BucketRule, BucketState, Decision, Taken};

/// Numbers per IN list or per group of concurrent writes in the contact operations.
const CONTACT_CHUNK: usize = 100;

/// The TTL (s) of a pairing row expiring at `expires_ms`: a minute of margin past it.
fn pairing_ttl(expires_ms: u64) -> i32 {
    i32::try_from(expires_ms.saturating_sub(super::now_ms()) / 1000 + 60).unwrap_or(i32::MAX)
}

/// A profile as stored (JSON text).
fn profile_json(profile: &super::Profile) -> Result<String, StoreError> {
    serde_json::to_string(profile).map_err(|e| StoreError::Backend(format!("profiles: {e}")))
}

/// Privacy settings as stored (JSON text).
fn privacy_json(settings: &PrivacySettings) -> Result<String, StoreError> {
    serde_json::to_string(settings).map_err(|e| StoreError::Backend(format!("privacy: {e}")))
}

/// Messages per log partition: a reader finds a seq's partition as `seq / BUCKET`, and no
/// partition holds more than this many rows (≈1 MB at 1 KB per message).
pub const BUCKET: u64 = 1024;

/// How long after its time an unfinished append may still land (request timeouts are
/// seconds; this is a wide margin for clock differences between nodes).
const CLAIM_IN_FLIGHT_MS: u64 = 60_000;

/// Rows per page of every multi-row read.
const PAGE: i32 = 500;

/// How long a cached retention setting is trusted before it is read again (another node
/// may have changed it since; a newer setting reaches this node at the latest after this).
const RETENTION_CACHE: Duration = Duration::from_secs(10);

/// The schema's migrations, applied in order by [`ScyllaStore::migrate`]; the version of
/// each is recorded in `schema_migrations` so each runs once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/scylla/0001_init.cql")),
    (2, include_str!("../../migrations/scylla/0002_media.cql")),
    (3, include_str!("../../migrations/scylla/0003_keys.cql")),
    (4, include_str!("../../migrations/scylla/0004_to_device.cql")),
    (5, include_str!("../../migrations/scylla/0005_rate_buckets.cql")),
    (6, include_str!("../../migrations/scylla/0006_referrers.cql")),
    (7, include_str!("../../migrations/scylla/0007_contacts.cql")),
    (8, include_str!("../../migrations/scylla/0008_privacy.cql")),
    (9, include_str!("../../migrations/scylla/0009_pairings.cql")),
    (10, include_str!("../../migrations/scylla/0010_profiles.cql")),
    (11, include_str!("../../migrations/scylla/0011_chat_states.cql")),
    (12, include_str!("../../migrations/scylla/0012_status.cql")),
];

/// Whether a migration statement creates the keyspace or the migrations table: the
/// first files repeat them, the later ones do not; `migrate` runs them once, first.
fn is_preamble(statement: &str) -> bool {
    statement.starts_with("CREATE KEYSPACE ") || statement.starts_with("CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations ")
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Contact points (`host` or `host:port`).
    pub hosts: Vec<String>,
    /// Keyspace holding the schema.
    pub keyspace: String,
    /// Username and password, if the cluster requires authentication.
    pub credentials: Option<(String, String)>,
    /// Per-request timeout on the client. A write that times out may or may not have been
    /// applied: the caller sees an error, never an acknowledgement, and the dedup key makes
    /// its retry safe.
    pub request_timeout: Duration,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
}

impl ScyllaOptions {
    /// Options for these hosts and keyspace, with the default timeouts (5 s per request,
    /// 5 s to connect).
    pub fn new(hosts: Vec<String>, keyspace: String) -> Self {
        Self { hosts, keyspace, credentials: None, request_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(5) }
    }
}

fn driver<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(format!("scylla: {e}"))
}

fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, detail: detail.to_string() }
}

/// The write timestamp of a last-seen time: the time itself in microseconds, so that the
/// latest time wins on every replica whatever the order of writes (several nodes record a
/// user's last seen, e.g. each survivor of a node that died).
fn last_seen_timestamp(at_ms: u64) -> i64 {
    int(at_ms.saturating_mul(1000))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

fn bucket_of(seq: u64) -> i64 {
    int(seq / BUCKET)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(driver)
}

fn decode<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(table, e))
}

fn content_code(kind: ContentKind) -> i8 {
    match kind {
        ContentKind::Normal => 0,
        ContentKind::Edit => 1,
        ContentKind::Reaction => 2,
    }
}

/// TTL in seconds for a row written now with `server_time_ms` under `retention_secs`
/// (0 = keep forever). A row already past its retention gets 1 s, not "forever".
fn ttl_for(retention_secs: u32, server_time_ms: u64) -> i32 {
    if retention_secs == 0 {
        return 0;
    }
    let expires_ms = server_time_ms.saturating_add(u64::from(retention_secs) * 1000);
    let left = expires_ms.saturating_sub(super::now_ms()) / 1000;
    i32::try_from(left.max(1)).unwrap_or(i32::MAX)
}

/// The bind values of `put_message` (one log row) for `m`.
type LogRowValues<'a> = (ConversationId, i64, i64, UserId, DeviceId, &'a str, i64, &'a [u8], Option<&'a [u8]>, i8, i64, bool, &'a [MediaId], i32);

fn message_row(m: &StoredMessage, ttl: i32) -> LogRowValues<'_> {
    (
        m.conversation_id,
        bucket_of(m.seq),
        int(m.seq),
        m.sender_user_id,
        m.sender_device_id,
        m.client_msg_id.as_str(),
        int(m.server_time_ms),
        m.payload.as_ref(),
        m.event.as_deref(),
        content_code(m.kind),
        int(m.reference_seq),
        m.deleted,
        m.attachments.as_slice(),
        ttl,
    )
}

/// The result of a conditional statement: applied or not, and the current values the
/// server returned (ScyllaDB returns them in both cases, Cassandra only when not applied).
struct LwtResult {
    applied: bool,
    values: HashMap<String, CqlValue>,
}

impl LwtResult {
    fn bigint(&self, column: &str) -> Option<i64> {
        match self.values.get(column) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }

    fn uuid(&self, column: &str) -> Option<Uuid> {
        match self.values.get(column) {
            Some(CqlValue::Uuid(v)) => Some(*v),
            _ => None,
        }
    }
}

/// A row of `device_keys`: device, curve25519, ed25519, signature, uploaded_ms.
type KeysRow = (Uuid, Vec<u8>, Vec<u8>, Vec<u8>, i64);

fn keys_from(user_id: UserId, (device, curve, ed, signature, uploaded): KeysRow) -> Result<DeviceKeys, StoreError> {
    let bad = |what: &str| StoreError::Corrupt { table: "device_keys", detail: format!("{what} is not 32 bytes") };
    Ok(DeviceKeys {
        user_id,
        device_id: DeviceId::from_uuid(device),
        curve25519: curve.try_into().map_err(|_| bad("curve25519"))?,
        ed25519: ed.try_into().map_err(|_| bad("ed25519"))?,
        signature,
        uploaded_ms: uint(uploaded),
    })
}

fn lwt(result: QueryResult) -> Result<LwtResult, StoreError> {
    let rows = result.into_rows_result().map_err(driver)?;
    let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
    let Some(row) = rows.maybe_first_row::<Row>().map_err(driver)? else {
        return Err(StoreError::Backend("scylla: conditional statement returned no row".into()));
    };
    let mut values = HashMap::new();
    let mut applied = None;
    for (name, value) in names.into_iter().zip(row.columns) {
        if name == "[applied]" {
            applied = match value {
                Some(CqlValue::Boolean(b)) => Some(b),
                _ => None,
            };
        } else if let Some(v) = value {
            values.insert(name, v);
        }
    }
    let applied = applied.ok_or_else(|| StoreError::Backend("scylla: conditional result without [applied]".into()))?;
    Ok(LwtResult { applied, values })
}

/// Every statement, prepared once at connect.
struct Statements {
    put_code: PreparedStatement,
    get_code: PreparedStatement,
    delete_code: PreparedStatement,
    get_code_serial: PreparedStatement,
    consume_code: PreparedStatement,
    count_attempt: PreparedStatement,
    drop_code_at: PreparedStatement,
    claim_phone: PreparedStatement,
    get_phone: PreparedStatement,
    put_user: PreparedStatement,
    get_user: PreparedStatement,
    get_live_devices: PreparedStatement,
    cas_live_devices: PreparedStatement,
    cas_live_devices_from_null: PreparedStatement,
    put_device: PreparedStatement,
    put_device_by_user: PreparedStatement,
    put_token: PreparedStatement,
    get_device: PreparedStatement,
    get_token: PreparedStatement,
    devices_by_user: PreparedStatement,
    revoke_device: PreparedStatement,
    create_conversation: PreparedStatement,
    get_conversation: PreparedStatement,
    update_conversation: PreparedStatement,
    put_user_conversation: PreparedStatement,
    user_conversations: PreparedStatement,
    put_invite: PreparedStatement,
    delete_invite: PreparedStatement,
    get_invite: PreparedStatement,
    fence_next: PreparedStatement,
    fence_first: PreparedStatement,
    put_message: PreparedStatement,
    put_record: PreparedStatement,
    erase_message: PreparedStatement,
    erase_message_if_exists: PreparedStatement,
    bucket_head: PreparedStatement,
    message_at: PreparedStatement,
    messages_up: PreparedStatement,
    messages_down: PreparedStatement,
    get_head: PreparedStatement,
    put_head: PreparedStatement,
    claim_dedup: PreparedStatement,
    move_dedup: PreparedStatement,
    release_dedup: PreparedStatement,
    get_dedup: PreparedStatement,
    put_dedup: PreparedStatement,
    put_delivered: PreparedStatement,
    put_read: PreparedStatement,
    get_cursor: PreparedStatement,
    device_cursors: PreparedStatement,
    put_member_delivered: PreparedStatement,
    put_member_read: PreparedStatement,
    get_member_cursor: PreparedStatement,
    member_cursors: PreparedStatement,
    put_receipt: PreparedStatement,
    first_receipt: PreparedStatement,
    put_last_seen: PreparedStatement,
    get_last_seen: PreparedStatement,
    get_profile: PreparedStatement,
    put_profile: PreparedStatement,
    chat_states: PreparedStatement,
    chat_state: PreparedStatement,
    release_phone: PreparedStatement,
    delete_user_rows: Vec<PreparedStatement>,
    create_chat_state: PreparedStatement,
    cas_chat_state: PreparedStatement,
    put_chat_state: PreparedStatement,
    member_cursor: PreparedStatement,
    put_pairing: PreparedStatement,
    get_pairing: PreparedStatement,
    approve_pairing: PreparedStatement,
    consume_pairing: PreparedStatement,
    get_privacy: PreparedStatement,
    put_privacy: PreparedStatement,
    get_block: PreparedStatement,
    blocks_of: PreparedStatement,
    blockers_of: PreparedStatement,
    add_block: PreparedStatement,
    remove_block: PreparedStatement,
    add_blocker: PreparedStatement,
    remove_blocker: PreparedStatement,
    phone_user: PreparedStatement,
    known_contacts: PreparedStatement,
    contacts_of: PreparedStatement,
    add_contact: PreparedStatement,
    remove_contact: PreparedStatement,
    put_push_token: PreparedStatement,
    delete_push_token: PreparedStatement,
    push_tokens: PreparedStatement,
    import_fence: PreparedStatement,
    raise_fence: PreparedStatement,
    create_media: PreparedStatement,
    get_media: PreparedStatement,
    cas_media: PreparedStatement,
    delete_media: PreparedStatement,
    media_first_page: PreparedStatement,
    media_next_page: PreparedStatement,
    put_media_by_owner: PreparedStatement,
    delete_media_by_owner: PreparedStatement,
    media_by_owner: PreparedStatement,
    get_bucket: PreparedStatement,
    create_bucket: PreparedStatement,
    cas_bucket: PreparedStatement,
    put_media_by_digest: PreparedStatement,
    delete_media_by_digest: PreparedStatement,
    media_by_digest: PreparedStatement,
    put_media_ref: PreparedStatement,
    delete_media_ref: PreparedStatement,
    media_refs: PreparedStatement,
    attachments_at: PreparedStatement,
    put_referrer: PreparedStatement,
    referrers_of: PreparedStatement,
    reference_at: PreparedStatement,
    put_device_keys: PreparedStatement,
    get_device_keys: PreparedStatement,
    device_keys_of: PreparedStatement,
    delete_device_keys: PreparedStatement,
    put_one_time_key: PreparedStatement,
    one_time_keys: PreparedStatement,
    claim_one_time_key: PreparedStatement,
    delete_one_time_keys: PreparedStatement,
    put_fallback_key: PreparedStatement,
    import_spent_key: PreparedStatement,
    get_fallback_key: PreparedStatement,
    delete_fallback_key: PreparedStatement,
}

/// What kind of statement, which decides consistency and whether the driver may retry or
/// speculate it on its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A read: LOCAL_QUORUM, idempotent (retried and speculated by the driver).
    Read,
    /// A read that must see in-flight Paxos rounds: LOCAL_SERIAL.
    SerialRead,
    /// A plain write whose effect is the same however often it runs: LOCAL_QUORUM,
    /// idempotent.
    Write,
    /// A conditional write (LWT): never retried by the driver (a retry of an applied
    /// round would report "not applied"); our own code retries it through the dedup key.
    Conditional,
}

async fn prepare(session: &Session, cql: &str, kind: Kind) -> Result<PreparedStatement, StoreError> {
    let mut statement = session.prepare(cql).await.map_err(|e| StoreError::Backend(format!("scylla: preparing {cql:?}: {e}")))?;
    statement.set_page_size(PAGE);
    match kind {
        Kind::Read => {
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_is_idempotent(true);
        }
        Kind::SerialRead => {
            statement.set_consistency(Consistency::LocalSerial);
            statement.set_is_idempotent(true);
        }
        Kind::Write => {
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_is_idempotent(true);
        }
        Kind::Conditional => {
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            statement.set_is_idempotent(false);
        }
    }
    Ok(statement)
}

impl Statements {
    async fn prepare_all(s: &Session) -> Result<Self, StoreError> {
        use Kind::*;
        const MESSAGE_COLUMNS: &str =
            "seq, sender_user_id, sender_device_id, client_msg_id, server_time_ms, payload, event, content_kind, reference_seq, deleted, attachments";
        Ok(Self {
            put_code: prepare(s, "INSERT INTO pending_codes (phone, code_hash, expires_ms, attempts) VALUES (?, ?, ?, ?) USING TTL ?", Write).await?,
            get_code: prepare(s, "SELECT code_hash, expires_ms, attempts FROM pending_codes WHERE phone = ?", Read).await?,
            delete_code: prepare(s, "DELETE FROM pending_codes WHERE phone = ?", Write).await?,
            get_code_serial: prepare(s, "SELECT code_hash, expires_ms, attempts FROM pending_codes WHERE phone = ?", SerialRead).await?,
            consume_code: prepare(s, "DELETE FROM pending_codes WHERE phone = ? IF code_hash = ?", Conditional).await?,
            count_attempt: prepare(s, "UPDATE pending_codes SET attempts = ? WHERE phone = ? IF code_hash = ? AND attempts = ?", Conditional).await?,
            drop_code_at: prepare(s, "DELETE FROM pending_codes WHERE phone = ? IF code_hash = ? AND attempts = ?", Conditional).await?,
            claim_phone: prepare(s, "INSERT INTO phones (phone, user_id) VALUES (?, ?) IF NOT EXISTS", Conditional).await?,
            get_phone: prepare(s, "SELECT user_id FROM phones WHERE phone = ?", SerialRead).await?,
            put_user: prepare(s, "INSERT INTO users (user_id, phone, created_ms) VALUES (?, ?, ?)", Write).await?,
            get_user: prepare(s, "SELECT user_id, phone, created_ms FROM users WHERE user_id = ?", Read).await?,
            get_live_devices: prepare(s, "SELECT live_devices FROM users WHERE user_id = ?", SerialRead).await?,
            cas_live_devices: prepare(s, "UPDATE users SET live_devices = ? WHERE user_id = ? IF live_devices = ?", Conditional).await?,
            cas_live_devices_from_null: prepare(s, "UPDATE users SET live_devices = ? WHERE user_id = ? IF live_devices = null", Conditional).await?,
            put_device: prepare(
                s,
                "INSERT INTO devices (device_id, user_id, name, is_primary, token_hash, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                Write,
            )
            .await?,
            put_device_by_user: prepare(s, "INSERT INTO devices_by_user (user_id, device_id) VALUES (?, ?)", Write).await?,
            put_token: prepare(s, "INSERT INTO device_tokens (token_hash, device_id) VALUES (?, ?)", Write).await?,
            get_device: prepare(
                s,
                "SELECT device_id, user_id, name, is_primary, token_hash, created_ms, revoked_ms FROM devices WHERE device_id = ?",
                Read,
            )
            .await?,
            get_token: prepare(s, "SELECT device_id FROM device_tokens WHERE token_hash = ?", Read).await?,
            devices_by_user: prepare(s, "SELECT device_id FROM devices_by_user WHERE user_id = ?", Read).await?,
            revoke_device: prepare(s, "UPDATE devices SET revoked_ms = ? WHERE device_id = ? IF revoked_ms = null", Conditional).await?,
            create_conversation: prepare(
                s,
                "INSERT INTO conversations (conversation_id, record, record_seq) VALUES (?, ?, ?) IF NOT EXISTS",
                Conditional,
            )
            .await?,
            get_conversation: prepare(s, "SELECT record, record_seq FROM conversations WHERE conversation_id = ?", Read).await?,
            update_conversation: prepare(
                s,
                "UPDATE conversations SET record = ?, record_seq = ? WHERE conversation_id = ? IF record_seq < ?",
                Conditional,
            )
            .await?,
            put_user_conversation: prepare(s, "INSERT INTO user_conversations (user_id, conversation_id) VALUES (?, ?)", Write).await?,
            user_conversations: prepare(s, "SELECT conversation_id FROM user_conversations WHERE user_id = ?", Read).await?,
            put_invite: prepare(s, "INSERT INTO invites (invite_hash, conversation_id) VALUES (?, ?)", Write).await?,
            delete_invite: prepare(s, "DELETE FROM invites WHERE invite_hash = ?", Write).await?,
            get_invite: prepare(s, "SELECT conversation_id FROM invites WHERE invite_hash = ?", Read).await?,
            fence_next: prepare(
                s,
                "UPDATE messages SET last_seq = ? WHERE conversation_id = ? AND bucket = ? IF last_seq = ?",
                Conditional,
            )
            .await?,
            fence_first: prepare(
                s,
                "UPDATE messages SET last_seq = ?, record = ?, record_seq = ? WHERE conversation_id = ? AND bucket = ? IF last_seq = null",
                Conditional,
            )
            .await?,
            put_message: prepare(
                s,
                "INSERT INTO messages (conversation_id, bucket, seq, sender_user_id, sender_device_id, client_msg_id, server_time_ms, \
                 payload, event, content_kind, reference_seq, deleted, attachments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
                Write,
            )
            .await?,
            put_record: prepare(s, "UPDATE messages SET record = ?, record_seq = ? WHERE conversation_id = ? AND bucket = ?", Write).await?,
            erase_message: prepare(
                s,
                "UPDATE messages SET payload = 0x, deleted = true, attachments = null WHERE conversation_id = ? AND bucket = ? AND seq = ?",
                Write,
            )
            .await?,
            erase_message_if_exists: prepare(
                s,
                "UPDATE messages SET payload = 0x, deleted = true, attachments = null WHERE conversation_id = ? AND bucket = ? AND seq = ? IF EXISTS",
                Conditional,
            )
            .await?,
            bucket_head: prepare(s, "SELECT last_seq, record, record_seq FROM messages WHERE conversation_id = ? AND bucket = ? LIMIT 1", SerialRead)
                .await?,
            message_at: prepare(
                s,
                "SELECT sender_user_id, client_msg_id, server_time_ms FROM messages WHERE conversation_id = ? AND bucket = ? AND seq = ?",
                SerialRead,
            )
            .await?,
            messages_up: prepare(
                s,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND bucket = ? AND seq > ? AND seq < ? LIMIT ?"),
                Read,
            )
            .await?,
            messages_down: prepare(
                s,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND bucket = ? AND seq > ? AND seq < ? ORDER BY seq DESC LIMIT ?"
                ),
                Read,
            )
            .await?,
            get_head: prepare(s, "SELECT bucket FROM conversation_heads WHERE conversation_id = ?", Read).await?,
            put_head: prepare(s, "INSERT INTO conversation_heads (conversation_id, bucket) VALUES (?, ?) USING TIMESTAMP ?", Write).await?,
            claim_dedup: prepare(
                s,
                "INSERT INTO message_dedup (conversation_id, sender_user_id, client_msg_id, seq, server_time_ms) VALUES (?, ?, ?, ?, ?) \
                 IF NOT EXISTS USING TTL ?",
                Conditional,
            )
            .await?,
            move_dedup: prepare(
                s,
                "UPDATE message_dedup USING TTL ? SET seq = ?, server_time_ms = ? \
                 WHERE conversation_id = ? AND sender_user_id = ? AND client_msg_id = ? IF seq = ?",
                Conditional,
            )
            .await?,
            release_dedup: prepare(
                s,
                "DELETE FROM message_dedup WHERE conversation_id = ? AND sender_user_id = ? AND client_msg_id = ? IF seq = ?",
                Conditional,
            )
            .await?,
            get_dedup: prepare(
                s,
                "SELECT seq, server_time_ms FROM message_dedup WHERE conversation_id = ? AND sender_user_id = ? AND client_msg_id = ?",
                Read,
            )
            .await?,
            put_dedup: prepare(
                s,
                "INSERT INTO message_dedup (conversation_id, sender_user_id, client_msg_id, seq, server_time_ms) VALUES (?, ?, ?, ?, ?) USING TTL ?",
                Write,
            )
            .await?,
            put_delivered: prepare(
                s,
                "UPDATE cursors USING TIMESTAMP ? SET delivered = ? WHERE device_id = ? AND conversation_id = ?",
                Write,
            )
            .await?,
            put_read: prepare(s, "UPDATE cursors USING TIMESTAMP ? SET read = ? WHERE device_id = ? AND conversation_id = ?", Write).await?,
            get_cursor: prepare(s, "SELECT delivered, read FROM cursors WHERE device_id = ? AND conversation_id = ?", Read).await?,
            device_cursors: prepare(s, "SELECT conversation_id, delivered, read FROM cursors WHERE device_id = ?", Read).await?,
            put_member_delivered: prepare(
                s,
                "UPDATE member_cursors USING TIMESTAMP ? SET delivered = ? WHERE conversation_id = ? AND user_id = ?",
                Write,
            )
            .await?,
            put_member_read: prepare(
                s,
                "UPDATE member_cursors USING TIMESTAMP ? SET read = ? WHERE conversation_id = ? AND user_id = ?",
                Write,
            )
            .await?,
            get_member_cursor: prepare(s, "SELECT delivered, read FROM member_cursors WHERE conversation_id = ? AND user_id = ?", Read).await?,
            member_cursors: prepare(s, "SELECT user_id, delivered, read FROM member_cursors WHERE conversation_id = ?", Read).await?,
            put_receipt: prepare(
                s,
                "INSERT INTO receipt_log (conversation_id, user_id, kind, seq, at_ms) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                Write,
            )
            .await?,
            first_receipt: prepare(
                s,
                "SELECT at_ms FROM receipt_log WHERE conversation_id = ? AND user_id = ? AND kind = ? AND seq >= ? LIMIT 1",
                Read,
            )
            .await?,
            put_last_seen: prepare(s, "INSERT INTO last_seen (user_id, at_ms) VALUES (?, ?) USING TIMESTAMP ?", Write).await?,
            get_last_seen: prepare(s, "SELECT at_ms FROM last_seen WHERE user_id = ?", Read).await?,
            get_profile: prepare(s, "SELECT profile FROM profiles WHERE user_id = ?", Read).await?,
            put_profile: prepare(s, "INSERT INTO profiles (user_id, profile) VALUES (?, ?)", Write).await?,
            chat_states: prepare(s, "SELECT conversation_id, state FROM chat_states WHERE user_id = ?", Read).await?,
            chat_state: prepare(s, "SELECT state FROM chat_states WHERE user_id = ? AND conversation_id = ?", Read).await?,
            release_phone: prepare(s, "DELETE FROM phones WHERE phone = ? IF user_id = ?", Conditional).await?,
            delete_user_rows: vec![
                prepare(s, "DELETE FROM contacts WHERE owner = ?", Write).await?,
                prepare(s, "DELETE FROM chat_states WHERE user_id = ?", Write).await?,
                prepare(s, "DELETE FROM profiles WHERE user_id = ?", Write).await?,
                prepare(s, "DELETE FROM privacy WHERE user_id = ?", Write).await?,
            ],
            create_chat_state: prepare(s, "INSERT INTO chat_states (user_id, conversation_id, state) VALUES (?, ?, ?) IF NOT EXISTS", Conditional).await?,
            cas_chat_state: prepare(s, "UPDATE chat_states SET state = ? WHERE user_id = ? AND conversation_id = ? IF state = ?", Conditional).await?,
            put_chat_state: prepare(s, "INSERT INTO chat_states (user_id, conversation_id, state) VALUES (?, ?, ?)", Write).await?,
            member_cursor: prepare(s, "SELECT delivered, read FROM member_cursors WHERE conversation_id = ? AND user_id = ?", Read).await?,
            put_pairing: prepare(
                s,
                "INSERT INTO pairings (code_hash, claim_hash, device_name, expires_ms, approved_by, approved_device) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
                Write,
            )
            .await?,
            get_pairing: prepare(
                s,
                "SELECT claim_hash, device_name, expires_ms, approved_by, approved_device FROM pairings WHERE code_hash = ?",
                SerialRead,
            )
            .await?,
            // Compare-and-set: one of racing approvals wins; the cells live as long as the
            // row. The expiry in the condition also fails it on a row that is gone (its
            // columns read as null), so no stub row is created.
            approve_pairing: prepare(
                s,
                "UPDATE pairings USING TTL ? SET approved_by = ?, approved_device = ? WHERE code_hash = ? IF expires_ms >= ? AND approved_by = null",
                Conditional,
            )
            .await?,
            consume_pairing: prepare(s, "DELETE FROM pairings WHERE code_hash = ? IF approved_by = ?", Conditional).await?,
            get_privacy: prepare(s, "SELECT settings FROM privacy WHERE user_id = ?", Read).await?,
            put_privacy: prepare(s, "INSERT INTO privacy (user_id, settings) VALUES (?, ?)", Write).await?,
            get_block: prepare(s, "SELECT at_ms FROM blocks WHERE user_id = ? AND target = ?", Read).await?,
            blocks_of: prepare(s, "SELECT target FROM blocks WHERE user_id = ?", Read).await?,
            blockers_of: prepare(s, "SELECT user_id FROM blockers WHERE target = ?", Read).await?,
            // Conditional: the answer says whether this call changed anything.
            add_block: prepare(s, "INSERT INTO blocks (user_id, target, at_ms) VALUES (?, ?, ?) IF NOT EXISTS", Conditional).await?,
            remove_block: prepare(s, "DELETE FROM blocks WHERE user_id = ? AND target = ? IF EXISTS", Conditional).await?,
            add_blocker: prepare(s, "INSERT INTO blockers (target, user_id) VALUES (?, ?)", Write).await?,
            remove_blocker: prepare(s, "DELETE FROM blockers WHERE target = ? AND user_id = ?", Write).await?,
            phone_user: prepare(s, "SELECT user_id FROM phones WHERE phone = ?", Read).await?,
            known_contacts: prepare(s, "SELECT phone FROM contacts WHERE owner = ? AND phone IN ?", Read).await?,
            contacts_of: prepare(s, "SELECT phone FROM contacts WHERE owner = ?", Read).await?,
            add_contact: prepare(s, "INSERT INTO contacts (owner, phone) VALUES (?, ?)", Write).await?,
            remove_contact: prepare(s, "DELETE FROM contacts WHERE owner = ? AND phone = ?", Write).await?,
            put_push_token: prepare(s, "INSERT INTO push_tokens (user_id, device_id, platform, token) VALUES (?, ?, ?, ?)", Write).await?,
            delete_push_token: prepare(s, "DELETE FROM push_tokens WHERE user_id = ? AND device_id = ?", Write).await?,
            push_tokens: prepare(s, "SELECT device_id, platform, token FROM push_tokens WHERE user_id = ?", Read).await?,
            import_fence: prepare(
                s,
                "UPDATE messages SET last_seq = ?, record = ?, record_seq = ? WHERE conversation_id = ? AND bucket = ? IF last_seq = null",
                Conditional,
            )
            .await?,
            raise_fence: prepare(s, "UPDATE messages SET last_seq = ? WHERE conversation_id = ? AND bucket = ? IF last_seq < ?", Conditional).await?,
            create_media: prepare(s, "INSERT INTO media (media_id, version, record) VALUES (?, ?, ?) IF NOT EXISTS", Conditional).await?,
            get_media: prepare(s, "SELECT version, record FROM media WHERE media_id = ?", SerialRead).await?,
            cas_media: prepare(s, "UPDATE media SET version = ?, record = ? WHERE media_id = ? IF version = ?", Conditional).await?,
            delete_media: prepare(s, "DELETE FROM media WHERE media_id = ? IF version = ?", Conditional).await?,
            media_first_page: prepare(s, "SELECT media_id, record FROM media LIMIT ?", Read).await?,
            media_next_page: prepare(s, "SELECT media_id, record FROM media WHERE token(media_id) > token(?) LIMIT ?", Read).await?,
            put_media_by_owner: prepare(s, "INSERT INTO media_by_owner (owner, media_id, length) VALUES (?, ?, ?)", Write).await?,
            delete_media_by_owner: prepare(s, "DELETE FROM media_by_owner WHERE owner = ? AND media_id = ?", Write).await?,
            media_by_owner: prepare(s, "SELECT length FROM media_by_owner WHERE owner = ?", Read).await?,
            get_bucket: prepare(s, "SELECT tokens_milli, at_ms FROM rate_buckets WHERE key = ?", Read).await?,
            // Rows live RATE_BUCKET_IDLE_MS past their last take (172,800 s): full again by then.
            create_bucket: prepare(
                s,
                "INSERT INTO rate_buckets (key, tokens_milli, at_ms) VALUES (?, ?, ?) IF NOT EXISTS USING TTL 172800",
                Conditional,
            )
            .await?,
            cas_bucket: prepare(
                s,
                "UPDATE rate_buckets USING TTL 172800 SET tokens_milli = ?, at_ms = ? WHERE key = ? IF tokens_milli = ? AND at_ms = ?",
                Conditional,
            )
            .await?,
            put_media_by_digest: prepare(s, "INSERT INTO media_by_digest (digest, media_id) VALUES (?, ?)", Write).await?,
            delete_media_by_digest: prepare(s, "DELETE FROM media_by_digest WHERE digest = ? AND media_id = ?", Write).await?,
            media_by_digest: prepare(s, "SELECT media_id FROM media_by_digest WHERE digest = ? LIMIT ?", Read).await?,
            put_media_ref: prepare(s, "INSERT INTO media_refs (media_id, conversation_id, seq) VALUES (?, ?, ?) USING TTL ?", Write).await?,
            delete_media_ref: prepare(s, "DELETE FROM media_refs WHERE media_id = ? AND conversation_id = ? AND seq = ?", Write).await?,
            media_refs: prepare(s, "SELECT conversation_id, seq FROM media_refs WHERE media_id = ?", Read).await?,
            attachments_at: prepare(s, "SELECT deleted, attachments FROM messages WHERE conversation_id = ? AND bucket = ? AND seq = ?", Read).await?,
            put_referrer: prepare(s, "INSERT INTO message_referrers (conversation_id, target_seq, seq) VALUES (?, ?, ?) USING TTL ?", Write).await?,
            referrers_of: prepare(s, "SELECT seq FROM message_referrers WHERE conversation_id = ? AND target_seq = ?", Read).await?,
            reference_at: prepare(s, "SELECT content_kind, reference_seq FROM messages WHERE conversation_id = ? AND bucket = ? AND seq = ?", Read)
                .await?,
            put_device_keys: prepare(
                s,
                "INSERT INTO device_keys (user_id, device_id, curve25519, ed25519, signature, uploaded_ms) VALUES (?, ?, ?, ?, ?, ?)",
                Write,
            )
            .await?,
            get_device_keys: prepare(
                s,
                "SELECT device_id, curve25519, ed25519, signature, uploaded_ms FROM device_keys WHERE user_id = ? AND device_id = ?",
                Read,
            )
            .await?,
            device_keys_of: prepare(s, "SELECT device_id, curve25519, ed25519, signature, uploaded_ms FROM device_keys WHERE user_id = ?", Read).await?,
            delete_device_keys: prepare(s, "DELETE FROM device_keys WHERE user_id = ? AND device_id = ?", Write).await?,
            // A plain insert writes no claimed_ms: a spent key re-uploaded stays spent.
            put_one_time_key: prepare(s, "INSERT INTO one_time_keys (device_id, key_id, public_key, signature) VALUES (?, ?, ?, ?)", Write).await?,
            one_time_keys: prepare(s, "SELECT key_id, public_key, signature, claimed_ms FROM one_time_keys WHERE device_id = ?", Read).await?,
            // The key must still be there (public_key matches: a deleted row does not) and
            // unclaimed: Paxos decides between racing claims, on every node.
            claim_one_time_key: prepare(
                s,
                "UPDATE one_time_keys SET claimed_ms = ? WHERE device_id = ? AND key_id = ? IF public_key = ? AND claimed_ms = null",
                Conditional,
            )
            .await?,
            delete_one_time_keys: prepare(s, "DELETE FROM one_time_keys WHERE device_id = ?", Write).await?,
            put_fallback_key: prepare(s, "INSERT INTO fallback_keys (device_id, key_id, public_key, signature) VALUES (?, ?, ?, ?)", Write).await?,
            // `store copy` of a claimed key: its id only (no public key, so no claim's
            // condition can ever match it).
            import_spent_key: prepare(s, "UPDATE one_time_keys SET claimed_ms = ? WHERE device_id = ? AND key_id = ?", Write).await?,
            get_fallback_key: prepare(s, "SELECT key_id, public_key, signature FROM fallback_keys WHERE device_id = ?", Read).await?,
            delete_fallback_key: prepare(s, "DELETE FROM fallback_keys WHERE device_id = ?", Write).await?,
        })
    }
}

/// The ScyllaDB-backed store. Cloning shares the session.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    st: Arc<Statements>,
    td: Arc<to_device::ToDeviceStatements>,
    ss: Arc<status::StatusStatements>,
    /// Conversation → (retention, when read): the TTL of new rows.
    retention: Arc<Mutex<HashMap<ConversationId, (u32, Instant)>>>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScyllaStore")
    }
}

/// The state of a conversation's log: its newest bucket's fence and the record as of the
/// latest event.
#[derive(Debug, Clone, Default)]
struct LogHead {
    last_seq: u64,
    record: Option<Vec<u8>>,
    record_seq: u64,
}

/// A bucket's static columns as read: `last_seq`, `record`, `record_seq` (each null until
/// first written).
type BucketHeadRow = (Option<i64>, Option<Vec<u8>>, Option<i64>);

impl ScyllaStore {
    /// Connects to the cluster, uses the keyspace and prepares every statement (which
    /// fails if the schema is missing: run `switchboard store migrate` first).
    pub async fn connect(options: &ScyllaOptions) -> Result<Self, StoreError> {
        let session = Self::session(options, true).await?;
        let st = Statements::prepare_all(&session).await?;
        let td = to_device::ToDeviceStatements::prepare_all(&session).await?;
        let ss = status::StatusStatements::prepare_all(&session).await?;
        Ok(Self { session: Arc::new(session), st: Arc::new(st), td: Arc::new(td), ss: Arc::new(ss), retention: Arc::new(Mutex::new(HashMap::new())) })
    }

    async fn session(options: &ScyllaOptions, use_keyspace: bool) -> Result<Session, StoreError> {
        // Reads may be retried and, after 100 ms without an answer, sent to a second
        // replica (speculative execution); the policy only applies to statements marked
        // idempotent, so LWTs are never duplicated by the driver.
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(options.request_timeout))
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 1,
                retry_interval: Duration::from_millis(100),
            })))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&options.hosts)
            .connection_timeout(options.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some((user, password)) = &options.credentials {
            builder = builder.user(user, password);
        }
        if use_keyspace {
            builder = builder.use_keyspace(&options.keyspace, false);
        }
        builder.build().await.map_err(driver)
    }

    /// Creates the keyspace (with `replication`, a CQL map such as
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`) and every table of
    /// `migrations/scylla/*.cql` not applied yet, waiting for schema agreement after each
    /// statement. Returns the versions applied.
    pub async fn migrate(options: &ScyllaOptions, replication: &str) -> Result<Vec<i32>, StoreError> {
        if !options.keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || options.keyspace.is_empty() {
            return Err(StoreError::Backend(format!("scylla: invalid keyspace name {:?}", options.keyspace)));
        }
        let session = Self::session(options, false).await?;
        let ks = &options.keyspace;
        let cql = |s: &str| s.replace("{keyspace}", ks).replace("{replication}", replication);
        // The keyspace and the migrations table come first; then we know what ran.
        for statement in split_cql(MIGRATIONS[0].1).iter().filter(|s| is_preamble(s)) {
            session.query_unpaged(cql(statement), ()).await.map_err(driver)?;
        }
        session.await_schema_agreement().await.map_err(driver)?;
        let mut applied = Vec::new();
        for (version, text) in MIGRATIONS {
            let done = session
                .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations WHERE version = ?"), (version,))
                .await
                .map_err(driver)?
                .into_rows_result()
                .map_err(driver)?
                .rows_num()
                > 0;
            if done {
                continue;
            }
            for statement in split_cql(text).iter().filter(|s| !is_preamble(s)) {
                session.query_unpaged(cql(statement), ()).await.map_err(driver)?;
                session.await_schema_agreement().await.map_err(driver)?;
            }
            session
                .query_unpaged(format!("INSERT INTO {ks}.schema_migrations (version, applied_ms) VALUES (?, ?)"), (version, int(super::now_ms())))
                .await
                .map_err(driver)?;
            applied.push(*version);
        }
        Ok(applied)
    }

    async fn exec(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<QueryResult, StoreError> {
        self.session.execute_unpaged(statement, values).await.map_err(driver)
    }

    /// Every row of a (paged) query, page by page.
    async fn all_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
        mut f: impl FnMut(R) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let mut paging = PagingState::start();
        loop {
            let (result, next) = self.session.execute_single_page(statement, values.clone(), paging).await.map_err(driver)?;
            let rows = result.into_rows_result().map_err(driver)?;
            for row in rows.rows::<R>().map_err(driver)? {
                f(row.map_err(driver)?)?;
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(()),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    async fn first_row<R>(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Option<R>, StoreError>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let rows = self.exec(statement, values).await?.into_rows_result().map_err(driver)?;
        rows.maybe_first_row::<R>().map_err(driver)
    }

    async fn conditional(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<LwtResult, StoreError> {
        lwt(self.exec(statement, values).await?)
    }

    /// A user's chat states, each with its stored text (the compare-and-set's operand).
    async fn chat_state_rows(&self, user: UserId) -> Result<Vec<(ConversationId, super::ChatState, String)>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.chat_states, (user,), |(id, text): (ConversationId, Option<String>)| {
            let text = text.unwrap_or_default();
            let state = serde_json::from_str(&text).map_err(|e| corrupt("chat_states", e.to_string()))?;
            out.push((id, state, text));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// A pairing row, read serially (it is changed only by compare-and-set).
    async fn pairing(&self, code_hash: [u8; 32]) -> Result<Option<PairingRecord>, StoreError> {
        type Row = (Option<Vec<u8>>, Option<String>, Option<i64>, Option<UserId>, Option<DeviceId>);
        let row: Option<Row> = self.first_row(&self.st.get_pairing, (code_hash.to_vec(),)).await?;
        match row {
            Some((Some(claim), Some(device_name), Some(expires), approved_by, approved_device)) => Ok(Some(PairingRecord {
                code_hash,
                claim_hash: claim.try_into().map_err(|_| corrupt("pairings", "claim hash is not 32 bytes"))?,
                device_name,
                expires_ms: uint(expires),
                approved_by,
                approved_device,
            })),
            _ => Ok(None),
        }
    }

    // ---- the key directory -----------------------------------------------------------

    /// Removes a device's one-time keys (unclaimed and spent) and its fallback key.
    async fn remove_key_material(&self, device_id: DeviceId) -> Result<(), StoreError> {
        self.exec(&self.st.delete_one_time_keys, (device_id,)).await?;
        self.exec(&self.st.delete_fallback_key, (device_id,)).await?;
        Ok(())
    }

    /// Every one-time key row of a device, spent ones included (claimed_ms set).
    async fn one_time_key_rows(&self, device_id: DeviceId) -> Result<Vec<(OneTimeKey, Option<i64>)>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.one_time_keys, (device_id,), |(key_id, key, signature, claimed): (String, Vec<u8>, Vec<u8>, Option<i64>)| {
            let key = key.try_into().map_err(|_| StoreError::Corrupt { table: "one_time_keys", detail: "key is not 32 bytes".into() })?;
            out.push((OneTimeKey { key_id, key, signature }, claimed));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    // ---- the log -------------------------------------------------------------------

    /// The static columns of one bucket (None if the bucket was never written).
    async fn bucket_head(&self, conversation: ConversationId, bucket: i64) -> Result<Option<LogHead>, StoreError> {
        let row: Option<BucketHeadRow> = self.first_row(&self.st.bucket_head, (conversation, bucket)).await?;
        Ok(row.and_then(|(last, record, record_seq)| {
            last.map(|l| LogHead { last_seq: uint(l), record, record_seq: record_seq.map(uint).unwrap_or(0) })
        }))
    }

    /// The newest bucket and its head: from the hint in `conversation_heads`, probing
    /// forward (the hint is written after a bucket starts, so it may be one behind).
    async fn log_head(&self, conversation: ConversationId) -> Result<(i64, LogHead), StoreError> {
        let hint: Option<(Option<i64>,)> = self.first_row(&self.st.get_head, (conversation,)).await?;
        let mut bucket = hint.and_then(|(b,)| b).unwrap_or(0);
        let mut head = self.bucket_head(conversation, bucket).await?;
        if head.is_none() && bucket > 0 {
            // A hint can only be ahead of the log if its bucket is empty, which an append
            // never leaves behind; treat it as corrupt rather than guess.
            return Err(corrupt("conversation_heads", format!("hint {bucket} points at an empty bucket")));
        }
        let start = bucket;
        while let Some(next) = self.bucket_head(conversation, bucket + 1).await? {
            bucket += 1;
            head = Some(next);
        }
        if bucket > start {
            self.exec(&self.st.put_head, (conversation, bucket, bucket)).await?;
        }
        Ok((bucket, head.unwrap_or_default()))
    }

    async fn retention_of(&self, conversation: ConversationId) -> Result<u32, StoreError> {
        if let Some((secs, at)) = self.retention.lock().unwrap_or_else(|p| p.into_inner()).get(&conversation).copied()
            && at.elapsed() < RETENTION_CACHE
        {
            return Ok(secs);
        }
        let secs = self.conversation(conversation).await?.map(|r| r.retention_secs).unwrap_or(0);
        self.retention.lock().unwrap_or_else(|p| p.into_inner()).insert(conversation, (secs, Instant::now()));
        Ok(secs)
    }

    fn remember_retention(&self, conversation: ConversationId, secs: u32) {
        self.retention.lock().unwrap_or_else(|p| p.into_inner()).insert(conversation, (secs, Instant::now()));
    }

    /// Who holds `seq` in the log, if anyone (serial read: sees in-flight rounds).
    async fn holder_of(&self, conversation: ConversationId, seq: u64) -> Result<Option<(UserId, String, u64)>, StoreError> {
        let row: Option<(Option<UserId>, Option<String>, Option<i64>)> =
            self.first_row(&self.st.message_at, (conversation, bucket_of(seq), int(seq))).await?;
        Ok(row.and_then(|(sender, client, time)| Some((sender?, client?, uint(time?)))))
    }

    /// Step 1 of an append: own the dedup key for `m.seq`, or learn that the message is
    /// already stored. Returns Some(outcome) if the append must stop here.
    async fn claim_dedup(&self, m: &StoredMessage, ttl: i32, retention: u32) -> Result<Option<WriteOutcome>, StoreError> {
        let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.as_str());
        let claim = self.conditional(&self.st.claim_dedup, (key.0, key.1, key.2, int(m.seq), int(m.server_time_ms), ttl)).await?;
        if claim.applied {
            return Ok(None);
        }
        let (old_seq, old_time) = match (claim.bigint("seq"), claim.bigint("server_time_ms")) {
            (Some(s), Some(t)) => (uint(s), uint(t)),
            // Cassandra-style answer without values: read them.
            _ => match self.first_row::<(Option<i64>, Option<i64>)>(&self.st.get_dedup, key).await? {
                Some((Some(s), Some(t))) => (uint(s), uint(t)),
                _ => return Err(StoreError::Backend("scylla: dedup key vanished during the claim; retry".into())),
            },
        };
        let holder = self.holder_of(m.conversation_id, old_seq).await?;
        if let Some((sender, client, time)) = &holder
            && *sender == m.sender_user_id
            && *client == m.client_msg_id
            // A message expired by this one's time frees its client id (expiry is a rule,
            // not the TTL's effect, which lags by up to a second and ignores a retention
            // shortened later): the key moves to this attempt below.
            && !(m.event.is_none() && super::is_expired(*time, retention, m.server_time_ms))
        {
            return Ok(Some(WriteOutcome::Duplicate { seq: old_seq, server_time_ms: *time }));
        }
        if old_seq == m.seq && old_time == m.server_time_ms {
            // Our own claim from an earlier attempt of this very op, which did not reach
            // the log: carry on with it.
            return Ok(None);
        }
        if holder.is_none() {
            let (_, head) = self.log_head(m.conversation_id).await?;
            // Not passed by the fence: the earlier attempt could still land at old_seq as
            // long as its request may be in flight (client and server timeouts are seconds).
            // Moving the claim away from it then could store the message twice.
            let in_flight = super::now_ms().saturating_sub(old_time) < CLAIM_IN_FLIGHT_MS;
            if head.last_seq < old_seq && old_seq != m.seq && in_flight {
                return Err(StoreError::Backend("scylla: an earlier attempt of this message may still be in flight; retry".into()));
            }
        }
        // Stale: the claimed seq holds another message, was passed by the fence without
        // ours, or (the same seq) is being retried; point the key at this attempt.
        let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.as_str());
        let moved = self.conditional(&self.st.move_dedup, (ttl, int(m.seq), int(m.server_time_ms), key.0, key.1, key.2, int(old_seq))).await?;
        if moved.applied { Ok(None) } else { Err(StoreError::Backend("scylla: dedup key changed concurrently; retry".into())) }
    }

    /// Step 2: the conditional batch on the log partition. Returns whether it applied.
    async fn append_to_log(
        &self,
        m: &StoredMessage,
        ttl: i32,
        record: Option<(&[u8], u64)>,
        tombstone_here: Option<u64>,
    ) -> Result<bool, StoreError> {
        let conv = m.conversation_id;
        let bucket = bucket_of(m.seq);
        let seq = int(m.seq);
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        batch.set_is_idempotent(false);
        let row = message_row(m, ttl);
        let first_of_bucket = m.seq.is_multiple_of(BUCKET) || m.seq == 1;
        let result = if first_of_bucket {
            // A new bucket: the previous one must end at seq - 1 (it can no longer change
            // once it does), and the record carries over unless this event brings one.
            let (carried, carried_seq) = if m.seq > 1 {
                match self.bucket_head(conv, bucket - 1).await? {
                    Some(prev) if prev.last_seq + 1 == m.seq => (prev.record, prev.record_seq),
                    _ => return Ok(false),
                }
            } else {
                (None, 0)
            };
            let (record, record_seq) = match record {
                Some((bytes, at)) => (Some(bytes.to_vec()), at),
                None => (carried, carried_seq),
            };
            batch.append_statement(self.st.fence_first.clone());
            batch.append_statement(self.st.put_message.clone());
            self.session.batch(&batch, ((seq, record, int(record_seq), conv, bucket), row)).await.map_err(driver)?
        } else {
            batch.append_statement(self.st.fence_next.clone());
            batch.append_statement(self.st.put_message.clone());
            match (record, tombstone_here) {
                (Some((bytes, at)), Some(target)) => {
                    batch.append_statement(self.st.put_record.clone());
                    batch.append_statement(self.st.erase_message.clone());
                    self.session.batch(&batch, ((seq, conv, bucket, seq - 1), row, (bytes, int(at), conv, bucket), (conv, bucket, int(target)))).await
                }
                (Some((bytes, at)), None) => {
                    batch.append_statement(self.st.put_record.clone());
                    self.session.batch(&batch, ((seq, conv, bucket, seq - 1), row, (bytes, int(at), conv, bucket))).await
                }
                (None, _) => self.session.batch(&batch, ((seq, conv, bucket, seq - 1), row)).await,
            }
            .map_err(driver)?
        };
        let applied = lwt(result)?.applied;
        if applied && first_of_bucket {
            // Also for bucket 0: a head row per conversation with messages (what `count`
            // reports for the fences).
            self.exec(&self.st.put_head, (conv, bucket, bucket)).await?;
        }
        Ok(applied)
    }

    async fn append(&self, m: &StoredMessage, record: Option<&ConversationRecord>, tombstone: Option<u64>) -> Result<WriteOutcome, StoreError> {
        if m.seq == 0 {
            return Ok(WriteOutcome::SeqConflict);
        }
        let retention = match record {
            Some(r) => r.retention_secs,
            None => self.retention_of(m.conversation_id).await?,
        };
        // Events are kept forever (they carry the group's history), as in every backend.
        let ttl = if m.event.is_some() { 0 } else { ttl_for(retention, m.server_time_ms) };
        if let Some(outcome) = self.claim_dedup(m, ttl, retention).await? {
            if let (WriteOutcome::Duplicate { seq, .. }, Some(r)) = (&outcome, record) {
                // A retried event: make sure its side effects happened.
                self.project_record(r, *seq, tombstone).await?;
                if let Some(target) = tombstone {
                    self.erase_referrers(m.conversation_id, target).await?;
                }
            }
            return Ok(outcome);
        }
        // Candidate references first: a reference whose append then fails is ignored when
        // read (checked against the log), while one written after a crash could be lost.
        self.put_refs(m, ttl).await?;
        let encoded = record.map(encode).transpose()?;
        let tombstone_here = tombstone.filter(|t| bucket_of(*t) == bucket_of(m.seq) && *t < m.seq);
        let applied = self.append_to_log(m, ttl, encoded.as_deref().map(|b| (b, m.seq)), tombstone_here).await?;
        if !applied {
            // An earlier attempt of this same message may have taken the seq meanwhile.
            if let Some((sender, client, time)) = self.holder_of(m.conversation_id, m.seq).await?
                && sender == m.sender_user_id
                && client == m.client_msg_id
            {
                return Ok(WriteOutcome::Duplicate { seq: m.seq, server_time_ms: time });
            }
            // Lost the race for this seq: give the key back so a retry can take another.
            let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.as_str());
            self.conditional(&self.st.release_dedup, (key.0, key.1, key.2, int(m.seq))).await?;
            return Ok(WriteOutcome::SeqConflict);
        }
        if let Some(r) = record {
            self.remember_retention(r.conversation_id, r.retention_secs);
            self.project_record(r, m.seq, tombstone.filter(|t| Some(*t) != tombstone_here)).await?;
        }
        if let Some(target) = tombstone {
            self.erase_referrers(m.conversation_id, target).await?;
        }
        Ok(WriteOutcome::Appended)
    }

    /// Writes what an event implies outside its log partition: the `conversations`
    /// projection (unless a newer one is there), members' conversation lists, the invite
    /// index, and the erase of a message in an older bucket. Idempotent.
    async fn project_record(&self, record: &ConversationRecord, record_seq: u64, tombstone: Option<u64>) -> Result<(), StoreError> {
        let id = record.conversation_id;
        let old = self.projection(id).await?;
        let encoded = encode(record)?;
        match &old {
            Some((_, old_seq)) if *old_seq >= record_seq => {}
            Some(_) => {
                self.conditional(&self.st.update_conversation, (encoded.as_slice(), int(record_seq), id, int(record_seq))).await?;
            }
            None => {
                self.conditional(&self.st.create_conversation, (id, encoded.as_slice(), int(record_seq))).await?;
            }
        }
        let mut users: BTreeSet<UserId> = record.members.iter().copied().collect();
        if let Some(g) = &record.group {
            users.extend(g.former.iter().map(|(u, _, _)| *u));
        }
        for user in users {
            self.exec(&self.st.put_user_conversation, (user, id)).await?;
        }
        let old_hash = old.as_ref().and_then(|(r, _)| r.group.as_ref()).and_then(|g| g.invite_hash);
        let new_hash = record.group.as_ref().and_then(|g| g.invite_hash);
        if old_hash != new_hash
            && let Some(h) = old_hash
        {
            self.exec(&self.st.delete_invite, (h.to_vec(),)).await?;
        }
        if let Some(h) = new_hash {
            self.exec(&self.st.put_invite, (h.to_vec(), id)).await?;
        }
        if let Some(target) = tombstone {
            self.conditional(&self.st.erase_message_if_exists, (id, bucket_of(target), int(target))).await?;
        }
        Ok(())
    }

    /// Writes the candidate references of a message's attachments.
    async fn put_refs(&self, m: &StoredMessage, ttl: i32) -> Result<(), StoreError> {
        for media in &m.attachments {
            self.exec(&self.st.put_media_ref, (*media, m.conversation_id, int(m.seq), ttl)).await?;
        }
        if m.kind != ContentKind::Normal && m.reference_seq > 0 {
            self.exec(&self.st.put_referrer, (m.conversation_id, int(m.reference_seq), int(m.seq), ttl)).await?;
        }
        Ok(())
    }

    /// Blanks the edits and reactions that refer to `target` (a delete for everyone
    /// cascades to them), each checked against the log: a candidate whose seq holds
    /// another message (its append lost the race) is left alone. Idempotent.
    async fn erase_referrers(&self, id: ConversationId, target: u64) -> Result<(), StoreError> {
        let mut seqs: Vec<i64> = Vec::new();
        self.all_rows(&self.st.referrers_of, (id, int(target)), |(seq,): (i64,)| {
            seqs.push(seq);
            Ok(())
        })
        .await?;
        for seq in seqs {
            let bucket = bucket_of(uint(seq));
            let row: Option<(Option<i8>, Option<i64>)> = self.first_row(&self.st.reference_at, (id, bucket, seq)).await?;
            if matches!(row, Some((Some(kind), Some(reference))) if kind != 0 && uint(reference) == target) {
                self.conditional(&self.st.erase_message_if_exists, (id, bucket, seq)).await?;
            }
        }
        Ok(())
    }

    /// Writes a media record's owner and digest index rows (idempotent).
    async fn put_media_index(&self, record: &MediaRecord) -> Result<(), StoreError> {
        self.exec(&self.st.put_media_by_owner, (record.owner, record.media_id, int(record.length))).await?;
        if let Some(d) = record.digest {
            self.exec(&self.st.put_media_by_digest, (d.to_vec(), record.media_id)).await?;
        }
        Ok(())
    }

    async fn projection(&self, id: ConversationId) -> Result<Option<(ConversationRecord, u64)>, StoreError> {
        let row: Option<(Option<Vec<u8>>, Option<i64>)> = self.first_row(&self.st.get_conversation, (id,)).await?;
        match row {
            Some((Some(bytes), seq)) => Ok(Some((decode("conversations", &bytes)?, seq.map(uint).unwrap_or(0)))),
            _ => Ok(None),
        }
    }

    async fn page(
        &self,
        conversation: ConversationId,
        after: u64,
        before: u64,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        type MessageRow = (
            i64,
            Option<UserId>,
            Option<DeviceId>,
            Option<String>,
            Option<i64>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<i8>,
            Option<i64>,
            Option<bool>,
            Option<Vec<MediaId>>,
        );
        let mut out = Vec::new();
        if limit == 0 || before <= after.saturating_add(1) {
            return Ok(out);
        }
        let (last_bucket, _) = self.log_head(conversation).await?;
        let lowest = bucket_of(after.saturating_add(1));
        let highest = bucket_of(before - 1).min(last_bucket);
        let buckets: Vec<i64> = if descending { (lowest..=highest).rev().collect() } else { (lowest..=highest).collect() };
        let statement = if descending { &self.st.messages_down } else { &self.st.messages_up };
        for bucket in buckets {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let mut rows: Vec<MessageRow> = Vec::new();
            self.all_rows(statement, (conversation, bucket, int(after), int(before), want), |r: MessageRow| {
                rows.push(r);
                Ok(())
            })
            .await?;
            for (seq, sender, device, client, time, payload, event, kind, reference, deleted, attachments) in rows {
                // A row without a sender is a stray erase of a message that had expired.
                let (Some(sender_user_id), Some(sender_device_id)) = (sender, device) else { continue };
                out.push(StoredMessage {
                    conversation_id: conversation,
                    seq: uint(seq),
                    sender_user_id,
                    sender_device_id,
                    client_msg_id: client.unwrap_or_default(),
                    server_time_ms: time.map(uint).unwrap_or(0),
                    payload: payload.unwrap_or_default().into(),
                    event: event.map(Into::into),
                    kind: match kind.unwrap_or(0) {
                        1 => ContentKind::Edit,
                        2 => ContentKind::Reaction,
                        _ => ContentKind::Normal,
                    },
                    reference_seq: reference.map(uint).unwrap_or(0),
                    deleted: deleted.unwrap_or(false),
                    attachments: attachments.unwrap_or_default(),
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    async fn set_live_devices(
        &self,
        user_id: UserId,
        change: impl Fn(&mut BTreeSet<DeviceId>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // Compare-and-set on the whole set; contention (two links of one user at once) is
        // rare, so a few rounds always suffice.
        for _ in 0..16 {
            let current: Option<(Option<Vec<DeviceId>>,)> = self.first_row(&self.st.get_live_devices, (user_id,)).await?;
            let current: Option<BTreeSet<DeviceId>> = current.and_then(|(s,)| s).map(|v| v.into_iter().collect());
            let mut next = current.clone().unwrap_or_default();
            if !change(&mut next)? {
                return Ok(());
            }
            let next: Vec<DeviceId> = next.into_iter().collect();
            let result = match current {
                Some(old) if !old.is_empty() => {
                    let old: Vec<DeviceId> = old.into_iter().collect();
                    self.conditional(&self.st.cas_live_devices, (next, user_id, old)).await?
                }
                _ => self.conditional(&self.st.cas_live_devices_from_null, (next, user_id)).await?,
            };
            if result.applied {
                return Ok(());
            }
        }
        Err(StoreError::Backend("scylla: live-device set under constant contention; retry".into()))
    }

    async fn write_cursor(&self, device_id: DeviceId, conversation_id: ConversationId, delivered: u64, read: u64) -> Result<(), StoreError> {
        if delivered > 0 {
            self.exec(&self.st.put_delivered, (int(delivered), int(delivered), device_id, conversation_id)).await?;
        }
        if read > 0 {
            self.exec(&self.st.put_read, (int(read), int(read), device_id, conversation_id)).await?;
        }
        Ok(())
    }

    async fn write_member_cursor(&self, conversation_id: ConversationId, user_id: UserId, delivered: u64, read: u64) -> Result<(), StoreError> {
        if delivered > 0 {
            self.exec(&self.st.put_member_delivered, (int(delivered), int(delivered), conversation_id, user_id)).await?;
        }
        if read > 0 {
            self.exec(&self.st.put_member_read, (int(read), int(read), conversation_id, user_id)).await?;
        }
        Ok(())
    }

    async fn write_receipt(&self, conversation_id: ConversationId, user_id: UserId, kind: u8, seq: u64, at_ms: u64) -> Result<(), StoreError> {
        // The earliest time wins: a smaller at_ms is a larger write timestamp.
        let ts = i64::MAX - int(at_ms);
        self.exec(&self.st.put_receipt, (conversation_id, user_id, kind as i8, int(seq), int(at_ms), ts)).await.map(drop)
    }

    async fn read_cursor(&self, device_id: DeviceId, conversation_id: ConversationId) -> Result<Cursor, StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.st.get_cursor, (device_id, conversation_id)).await?;
        Ok(row.map(|(d, r)| Cursor { delivered: d.map(uint).unwrap_or(0), read: r.map(uint).unwrap_or(0) }).unwrap_or_default())
    }

    async fn advance_cursor(
        &self,
        user_id: UserId,
        device_id: DeviceId,
        conversation_id: ConversationId,
        delivered: u64,
        read: u64,
        at_ms: u64,
    ) -> Result<Cursor, StoreError> {
        let member: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.st.get_member_cursor, (conversation_id, user_id)).await?;
        let (old_d, old_r) = member.map(|(d, r)| (d.map(uint).unwrap_or(0), r.map(uint).unwrap_or(0))).unwrap_or((0, 0));
        self.write_cursor(device_id, conversation_id, delivered, read).await?;
        if delivered > old_d || read > old_r {
            self.write_member_cursor(conversation_id, user_id, delivered.max(old_d), read.max(old_r)).await?;
            if delivered > old_d {
                self.write_receipt(conversation_id, user_id, 0, delivered, at_ms).await?;
            }
            if read > old_r {
                self.write_receipt(conversation_id, user_id, 1, read, at_ms).await?;
            }
        }
        if delivered == 0 && read == 0 {
            return self.read_cursor(device_id, conversation_id).await;
        }
        let now = self.read_cursor(device_id, conversation_id).await?;
        Ok(Cursor { delivered: now.delivered.max(delivered), read: now.read.max(read) })
    }

    /// Rows of a full scan whose first column is not null (a verification tool, not for
    /// serving).
    async fn count_rows(&self, cql: &str) -> Result<u64, StoreError> {
        let mut statement = self.session.prepare(cql).await.map_err(driver)?;
        statement.set_page_size(5000);
        statement.set_is_idempotent(true);
        let mut n = 0u64;
        self.all_rows(&statement, (), |row: Row| {
            n += u64::from(row.columns.first().is_some_and(Option::is_some));
            Ok(())
        })
        .await?;
        Ok(n)
    }

    async fn import_one(&self, record: Record) -> Result<(), StoreError> {
        match record {
            Record::User(u) => {
                self.conditional(&self.st.claim_phone, (u.phone.as_str(), u.user_id)).await?;
                self.exec(&self.st.put_user, (u.user_id, u.phone.as_str(), int(u.created_ms))).await?;
            }
            Record::Device(d) => {
                self.put_device_rows(&d).await?;
                if let Some(at) = d.revoked_ms {
                    self.conditional(&self.st.revoke_device, (int(at), d.device_id)).await?;
                } else {
                    self.set_live_devices(d.user_id, |set| Ok(set.insert(d.device_id))).await?;
                }
            }
            Record::Conversation(c) => {
                self.remember_retention(c.conversation_id, c.retention_secs);
                let encoded = encode(&c)?;
                self.conditional(&self.st.create_conversation, (c.conversation_id, encoded.as_slice(), 0i64)).await?;
                if let Some(h) = c.group.as_ref().and_then(|g| g.invite_hash) {
                    self.exec(&self.st.put_invite, (h.to_vec(), c.conversation_id)).await?;
                }
            }
            Record::Membership { user_id, conversation_id } => {
                self.exec(&self.st.put_user_conversation, (user_id, conversation_id)).await?;
            }
            Record::Media(m) => {
                self.conditional(&self.st.create_media, (m.media_id, int(m.version), encode(&m)?)).await?;
                self.put_media_index(&m).await?;
            }
            Record::Message(m) => {
                let retention = self.retention_of(m.conversation_id).await?;
                let ttl = if m.event.is_some() { 0 } else { ttl_for(retention, m.server_time_ms) };
                self.put_refs(&m, ttl).await?;
                let row = message_row(&m, ttl);
                self.exec(&self.st.put_message, row).await?;
                self.exec(
                    &self.st.put_dedup,
                    (m.conversation_id, m.sender_user_id, m.client_msg_id.as_str(), int(m.seq), int(m.server_time_ms), ttl),
                )
                .await?;
            }
            Record::LastSeq { conversation_id, last_seq } => {
                // Every bucket up to the last gets its fence (full buckets end at their last
                // seq); the newest one carries the record.
                let record = self.projection(conversation_id).await?.map(|(r, _)| encode(&r)).transpose()?;
                let last_bucket = bucket_of(last_seq);
                for bucket in 0..=last_bucket {
                    let end = (uint(bucket) + 1) * BUCKET - 1;
                    let fence = int(end.min(last_seq));
                    let carried = if bucket == last_bucket { record.clone() } else { None };
                    let set = self.conditional(&self.st.import_fence, (fence, carried, 0i64, conversation_id, bucket)).await?;
                    if !set.applied {
                        // A fence already there keeps the larger value.
                        self.conditional(&self.st.raise_fence, (fence, conversation_id, bucket, fence)).await?;
                    }
                }
                self.exec(&self.st.put_head, (conversation_id, last_bucket, last_bucket)).await?;
            }
            Record::Cursor { device_id, conversation_id, cursor } => {
                self.write_cursor(device_id, conversation_id, cursor.delivered, cursor.read).await?;
            }
            Record::MemberCursor { conversation_id, user_id, cursor } => {
                self.write_member_cursor(conversation_id, user_id, cursor.delivered, cursor.read).await?;
            }
            Record::Receipt { conversation_id, user_id, kind, seq, at_ms } => {
                self.write_receipt(conversation_id, user_id, kind, seq, at_ms).await?;
            }
            Record::LastSeen { user_id, at_ms } => {
                // The later time wins (the write timestamp is the time itself).
                self.exec(&self.st.put_last_seen, (user_id, int(at_ms), last_seen_timestamp(at_ms))).await?;
            }
            Record::Profile { user_id, profile } => {
                self.exec(&self.st.put_profile, (user_id, profile_json(&profile)?)).await?;
            }
            Record::Status(post) => self.import_status(&post).await?,
            Record::StatusView { poster, post_id, view } => self.import_status_view(poster, post_id, &view).await?,
            Record::ChatState { user_id, conversation_id, state } => {
                // A copy runs before the cluster serves: no change races it.
                let text = serde_json::to_string(&state).map_err(|e| StoreError::Backend(format!("chat_states: {e}")))?;
                self.exec(&self.st.put_chat_state, (user_id, conversation_id, text)).await?;
            }
            Record::Privacy { user_id, settings } => {
                self.exec(&self.st.put_privacy, (user_id, privacy_json(&settings)?)).await?;
            }
            Record::Block { user_id, target, at_ms } => {
                self.conditional(&self.st.add_block, (user_id, target, int(at_ms))).await?;
                self.exec(&self.st.add_blocker, (target, user_id)).await?;
            }
            Record::Contact { owner, phone } => {
                self.exec(&self.st.add_contact, (owner, phone.as_str())).await?;
            }
            Record::PushToken { user_id, device_id, token } => {
                self.exec(&self.st.put_push_token, (user_id, device_id, token.platform.as_str(), token.token.as_str())).await?;
            }
            Record::DeviceKeys(k) => {
                self.exec(
                    &self.st.put_device_keys,
                    (k.user_id, k.device_id, k.curve25519.as_slice(), k.ed25519.as_slice(), k.signature.as_slice(), int(k.uploaded_ms)),
                )
                .await?;
            }
            Record::OneTimeKey { device_id, key } => {
                self.exec(&self.st.put_one_time_key, (device_id, key.key_id.as_str(), key.key.as_slice(), key.signature.as_slice())).await?;
            }
            Record::SpentKey { device_id, key_id, claimed_ms } => {
                self.exec(&self.st.import_spent_key, (int(claimed_ms), device_id, key_id.as_str())).await?;
            }
            Record::FallbackKey { device_id, key } => {
                self.exec(&self.st.put_fallback_key, (device_id, key.key_id.as_str(), key.key.as_slice(), key.signature.as_slice())).await?;
            }
            other @ (Record::ToDeviceQueue { .. } | Record::ToDeviceEntry { .. } | Record::DeviceListNotice { .. }) => {
                self.import_to_device(other).await?;
            }
        }
        Ok(())
    }

    async fn put_device_rows(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        self.exec(&self.st.put_device, (d.device_id, d.user_id, d.name.as_str(), d.primary, d.token_hash.to_vec(), int(d.created_ms))).await?;
        self.exec(&self.st.put_device_by_user, (d.user_id, d.device_id)).await?;
        self.exec(&self.st.put_token, (d.token_hash.to_vec(), d.device_id)).await?;
        Ok(())
    }

    async fn user_by_phone(&self, phone: &str) -> Result<Option<UserId>, StoreError> {
        let row: Option<(Option<UserId>,)> = self.first_row(&self.st.get_phone, (phone,)).await?;
        Ok(row.and_then(|(u,)| u))
    }
}

/// Splits a .cql file into statements: `--` comments dropped, split on `;`.
pub fn split_cql(text: &str) -> Vec<String> {
    let without_comments: String = text.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    without_comments.split(';').map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|s| !s.is_empty()).collect()
}

#[async_trait::async_trait]
impl Store for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session.query_unpaged("SELECT now() FROM system.local", ()).await.map(drop).map_err(driver)
    }

    async fn put_pending_code(&self, phone: &str, code: PendingCode) -> Result<(), StoreError> {
        let ttl = i32::try_from(code.expires_ms.saturating_sub(super::now_ms()) / 1000 + 60).unwrap_or(i32::MAX);
        self.exec(&self.st.put_code, (phone, code.code_hash.to_vec(), int(code.expires_ms), i32::try_from(code.attempts).unwrap_or(i32::MAX), ttl))
            .await
            .map(drop)
    }

    async fn pending_code(&self, phone: &str) -> Result<Option<PendingCode>, StoreError> {
        let row: Option<(Option<Vec<u8>>, Option<i64>, Option<i32>)> = self.first_row(&self.st.get_code, (phone,)).await?;
        match row {
            Some((Some(hash), Some(expires), attempts)) => Ok(Some(PendingCode {
                code_hash: hash.try_into().map_err(|_| corrupt("pending_codes", "hash is not 32 bytes"))?,
                expires_ms: uint(expires),
                attempts: attempts.unwrap_or(0).max(0) as u32,
            })),
            _ => Ok(None),
        }
    }

    async fn delete_pending_code(&self, phone: &str) -> Result<(), StoreError> {
        self.exec(&self.st.delete_code, (phone,)).await.map(drop)
    }

    async fn use_pending_code(&self, phone: &str, guess_hash: [u8; 32], now_ms: u64, max_attempts: u32) -> Result<CodeCheck, StoreError> {
        // Compare-and-set rounds: the right code is consumed by a conditional delete (only
        // one racing verification sees it applied); a wrong guess moves the attempt count
        // from the value it read, so parallel guesses cannot share one attempt.
        for _ in 0..16 {
            let row: Option<(Option<Vec<u8>>, Option<i64>, Option<i32>)> = self.first_row(&self.st.get_code_serial, (phone,)).await?;
            let Some((Some(hash), Some(expires), attempts)) = row else { return Ok(CodeCheck::Missing) };
            let attempts = attempts.unwrap_or(0);
            if uint(expires) < now_ms {
                self.exec(&self.st.delete_code, (phone,)).await?;
                return Ok(CodeCheck::Missing);
            }
            if <[u8; 32]>::try_from(hash.as_slice()).is_ok_and(|stored| super::code_matches(&stored, &guess_hash)) {
                let consumed = self.conditional(&self.st.consume_code, (phone, hash)).await?;
                return Ok(if consumed.applied { CodeCheck::Accepted } else { CodeCheck::Missing });
            }
            let next = attempts.saturating_add(1);
            let counted = if next.max(0) as u32 >= max_attempts {
                self.conditional(&self.st.drop_code_at, (phone, hash, attempts)).await?
            } else {
                self.conditional(&self.st.count_attempt, (next, phone, hash, attempts)).await?
            };
            if counted.applied {
                return Ok(CodeCheck::Wrong);
            }
        }
        Err(StoreError::Backend("scylla: pending code under constant contention; retry".into()))
    }

    async fn get_or_create_user(&self, phone: &str, new_user: UserRecord) -> Result<(UserRecord, bool), StoreError> {
        let mut claim = self.conditional(&self.st.claim_phone, (phone, new_user.user_id)).await?;
        // A phones row whose user's row holds another number was left behind by a number
        // change or a deletion cut short between its statements: it is no one's number.
        // Release it (only if it still says that user) and claim again.
        for _ in 0..3 {
            let Some(owner) = claim.uuid("user_id").map(UserId::from_uuid) else { break };
            if claim.applied || owner == new_user.user_id {
                break;
            }
            match self.user(owner).await? {
                Some(found) if found.phone != phone => {
                    self.conditional(&self.st.release_phone, (phone, owner)).await?;
                    claim = self.conditional(&self.st.claim_phone, (phone, new_user.user_id)).await?;
                }
                _ => break,
            }
        }
        let owner = if claim.applied {
            new_user.user_id
        } else {
            match claim.uuid("user_id") {
                Some(u) => UserId::from_uuid(u),
                None => self.user_by_phone(phone).await?.ok_or(StoreError::NotFound("user"))?,
            }
        };
        if owner == new_user.user_id {
            // Written after the claim; a retry after a crash in between writes it again.
            let record = UserRecord { phone: phone.to_owned(), ..new_user };
            self.exec(&self.st.put_user, (record.user_id, record.phone.as_str(), int(record.created_ms))).await?;
            return Ok((record, claim.applied));
        }
        match self.user(owner).await? {
            Some(found) => Ok((found, false)),
            None => {
                // The creator died between claiming the phone and writing the user.
                let record = UserRecord { user_id: owner, phone: phone.to_owned(), created_ms: new_user.created_ms };
                self.exec(&self.st.put_user, (owner, phone, int(record.created_ms))).await?;
                Ok((record, false))
            }
        }
    }

    /// The new number is claimed by compare-and-set first (a number another account holds
    /// stays theirs), then the user row is rewritten and the old number released (only if
    /// it still points at this user). The user row decides whose a number is: a phones row
    /// left behind by a crash in between is released when the number is next claimed
    /// (`get_or_create_user`) and ignored by lookups (`users_by_phone`).
    async fn change_phone(&self, user: UserId, new_phone: &str) -> Result<bool, StoreError> {
        let record = self.user(user).await?.ok_or(StoreError::NotFound("user"))?;
        if record.is_deleted() {
            return Err(StoreError::NotFound("user"));
        }
        if record.phone == new_phone {
            return Ok(true);
        }
        let claim = self.conditional(&self.st.claim_phone, (new_phone, user)).await?;
        if !claim.applied && claim.uuid("user_id") != Some(user.uuid()) {
            return Ok(false);
        }
        self.exec(&self.st.put_user, (user, new_phone, int(record.created_ms))).await?;
        self.conditional(&self.st.release_phone, (record.phone.as_str(), user)).await?;
        Ok(true)
    }

    async fn delete_account_data(&self, user: UserId) -> Result<(), StoreError> {
        if let Some(record) = self.user(user).await? {
            let deleted = super::deleted_phone(user);
            self.exec(&self.st.put_user, (user, deleted.as_str(), int(record.created_ms))).await?;
            if record.phone != deleted {
                self.conditional(&self.st.release_phone, (record.phone.as_str(), user)).await?;
            }
        }
        for statement in &self.st.delete_user_rows {
            self.exec(statement, (user,)).await?;
        }
        Ok(())
    }

    async fn create_accounts(&self, accounts: Vec<(UserRecord, DeviceRecord)>) -> Result<usize, StoreError> {
        let mut created = 0;
        for (user, device) in accounts {
            let claim = self.conditional(&self.st.claim_phone, (user.phone.as_str(), user.user_id)).await?;
            let ours = claim.applied || claim.uuid("user_id") == Some(user.user_id.uuid());
            if !ours {
                continue;
            }
            self.exec(&self.st.put_user, (user.user_id, user.phone.as_str(), int(user.created_ms))).await?;
            self.put_device_rows(&device).await?;
            self.set_live_devices(user.user_id, |set| Ok(set.insert(device.device_id))).await?;
            if claim.applied {
                created += 1;
            }
        }
        Ok(created)
    }

    async fn user(&self, user_id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<(UserId, Option<String>, Option<i64>)> = self.first_row(&self.st.get_user, (user_id,)).await?;
        Ok(row.and_then(|(user_id, phone, created)| Some(UserRecord { user_id, phone: phone?, created_ms: created.map(uint).unwrap_or(0) })))
    }

    async fn add_device(&self, device: DeviceRecord, max_devices: usize) -> Result<(), StoreError> {
        let id = device.device_id;
        self.set_live_devices(device.user_id, |set| {
            if set.contains(&id) {
                return Ok(false);
            }
            if set.len() >= max_devices {
                return Err(StoreError::TooManyDevices { max: max_devices });
            }
            set.insert(id);
            Ok(true)
        })
        .await?;
        self.put_device_rows(&device).await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        let row: Option<(Option<DeviceId>,)> = self.first_row(&self.st.get_token, (token_hash.to_vec(),)).await?;
        match row.and_then(|(d,)| d) {
            Some(device) => self.device(device).await,
            None => Ok(None),
        }
    }

    async fn device(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        type DeviceRow = (DeviceId, Option<UserId>, Option<String>, Option<bool>, Option<Vec<u8>>, Option<i64>, Option<i64>);
        let row: Option<DeviceRow> = self.first_row(&self.st.get_device, (device_id,)).await?;
        let Some((device_id, Some(user_id), name, primary, Some(hash), created, revoked)) = row else { return Ok(None) };
        Ok(Some(DeviceRecord {
            device_id,
            user_id,
            name: name.unwrap_or_default(),
            primary: primary.unwrap_or(false),
            token_hash: hash.try_into().map_err(|_| corrupt("devices", "hash is not 32 bytes"))?,
            created_ms: created.map(uint).unwrap_or(0),
            revoked_ms: revoked.map(uint),
        }))
    }

    async fn devices_of(&self, user_id: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut ids = Vec::new();
        self.all_rows(&self.st.devices_by_user, (user_id,), |(d,): (DeviceId,)| {
            ids.push(d);
            Ok(())
        })
        .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(d) = self.device(id).await? {
                out.push(d);
            }
        }
        out.sort_by_key(|d| (d.created_ms, d.device_id));
        Ok(out)
    }

    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId, at_ms: u64) -> Result<bool, StoreError> {
        match self.device(device_id).await? {
            Some(d) if d.user_id == user_id => {
                self.conditional(&self.st.revoke_device, (int(at_ms), device_id)).await?;
                self.set_live_devices(user_id, |set| Ok(set.remove(&device_id))).await?;
                // After the revocation (no multi-partition transactions): a crash in
                // between leaves keys that readers ignore (the key directory lists and
                // claims live devices only), and a retried revoke removes them.
                self.exec(&self.st.delete_device_keys, (user_id, device_id)).await?;
                self.remove_key_material(device_id).await?;
                self.remove_to_device(device_id).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn create_conversation(&self, conversation: ConversationRecord) -> Result<ConversationRecord, StoreError> {
        let encoded = encode(&conversation)?;
        let created = self.conditional(&self.st.create_conversation, (conversation.conversation_id, encoded.as_slice(), 0i64)).await?;
        let stored = if created.applied {
            conversation
        } else {
            self.conversation(conversation.conversation_id).await?.ok_or(StoreError::NotFound("conversation"))?
        };
        // Written after the creation, and again by any retry: idempotent.
        for member in &stored.members {
            self.exec(&self.st.put_user_conversation, (*member, stored.conversation_id)).await?;
        }
        self.remember_retention(stored.conversation_id, stored.retention_secs);
        Ok(stored)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let projected = self.projection(id).await?;
        let (_, head) = self.log_head(id).await?;
        match (&projected, head.record) {
            (Some((_, seq)), Some(bytes)) if head.record_seq > *seq => {
                // The log has a newer event than the projection: the writer died in between.
                let record: ConversationRecord = decode("messages", &bytes)?;
                self.project_record(&record, head.record_seq, None).await?;
                Ok(Some(record))
            }
            (None, Some(bytes)) => {
                let record: ConversationRecord = decode("messages", &bytes)?;
                self.project_record(&record, head.record_seq, None).await?;
                Ok(Some(record))
            }
            _ => Ok(projected.map(|(r, _)| r)),
        }
    }

    async fn conversation_by_invite(&self, hash: [u8; 32]) -> Result<Option<ConversationId>, StoreError> {
        let row: Option<(Option<ConversationId>,)> = self.first_row(&self.st.get_invite, (hash.to_vec(),)).await?;
        let Some(id) = row.and_then(|(c,)| c) else { return Ok(None) };
        // The index may lag a replaced invite by one crash: confirm against the record.
        let current = self.conversation(id).await?.and_then(|r| r.group).and_then(|g| g.invite_hash);
        Ok((current == Some(hash)).then_some(id))
    }

    async fn conversations_of(&self, user_id: UserId) -> Result<Vec<ConversationId>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.user_conversations, (user_id,), |(c,): (ConversationId,)| {
            out.push(c);
            Ok(())
        })
        .await?;
        out.sort();
        Ok(out)
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(match op {
                WriteOp::Append(m) => self.append(&m, None, None).await?,
                WriteOp::AppendEvent { message, record, joined, tombstone } => {
                    let outcome = self.append(&message, Some(&record), tombstone).await?;
                    if outcome == WriteOutcome::Appended {
                        for user in joined {
                            self.exec(&self.st.put_user_conversation, (user, record.conversation_id)).await?;
                        }
                    }
                    outcome
                }
                WriteOp::AdvanceCursor { user_id, device_id, conversation_id, delivered, read, at_ms } => {
                    WriteOutcome::CursorAdvanced(self.advance_cursor(user_id, device_id, conversation_id, delivered, read, at_ms).await?)
                }
                WriteOp::LastSeen { user_id, at_ms } => {
                    self.exec(&self.st.put_last_seen, (user_id, int(at_ms), last_seen_timestamp(at_ms))).await?;
                    WriteOutcome::Recorded
                }
            });
        }
        Ok(outcomes)
    }

    async fn last_seq(&self, id: ConversationId) -> Result<u64, StoreError> {
        Ok(self.log_head(id).await?.1.last_seq)
    }

    async fn find_by_client_id(&self, id: ConversationId, sender: UserId, client_msg_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.st.get_dedup, (id, sender, client_msg_id)).await?;
        let Some((Some(seq), Some(_))) = row else { return Ok(None) };
        // A claim is only an answer once its message is in the log, and the log's time is
        // the one that was acknowledged (a retry may have moved the claim's).
        match self.holder_of(id, uint(seq)).await? {
            Some((s, c, time)) if s == sender && c == client_msg_id => Ok(Some((uint(seq), time))),
            _ => Ok(None),
        }
    }

    async fn messages_after(&self, id: ConversationId, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.page(id, after, int(u64::MAX) as u64, limit, false).await
    }

    async fn messages_before(&self, id: ConversationId, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let before = if before == 0 { int(u64::MAX) as u64 } else { before };
        self.page(id, 0, before, limit, true).await
    }

    async fn member_cursor(&self, id: ConversationId, user: UserId) -> Result<MemberCursor, StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.st.member_cursor, (id, user)).await?;
        Ok(row.map(|(d, r)| MemberCursor { delivered: d.map(uint).unwrap_or(0), read: r.map(uint).unwrap_or(0) }).unwrap_or_default())
    }

    async fn member_cursors(&self, id: ConversationId) -> Result<Vec<(UserId, MemberCursor)>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.member_cursors, (id,), |(u, d, r): (UserId, Option<i64>, Option<i64>)| {
            out.push((u, MemberCursor { delivered: d.map(uint).unwrap_or(0), read: r.map(uint).unwrap_or(0) }));
            Ok(())
        })
        .await?;
        out.sort_by_key(|(u, _)| *u);
        Ok(out)
    }

    async fn receipt_times(&self, id: ConversationId, user: UserId, seq: u64) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let mut times = [None, None];
        for (kind, slot) in times.iter_mut().enumerate() {
            let row: Option<(Option<i64>,)> = self.first_row(&self.st.first_receipt, (id, user, kind as i8, int(seq))).await?;
            *slot = row.and_then(|(t,)| t).map(uint);
        }
        Ok((times[0], times[1]))
    }

    async fn chat_states(&self, user: UserId) -> Result<Vec<(ConversationId, super::ChatState)>, StoreError> {
        Ok(self.chat_state_rows(user).await?.into_iter().map(|(id, state, _)| (id, state)).collect())
    }

    async fn chat_state(&self, user: UserId, conversation: ConversationId) -> Result<super::ChatState, StoreError> {
        let row: Option<(Option<String>,)> = self.first_row(&self.st.chat_state, (user, conversation)).await?;
        match row.and_then(|(text,)| text) {
            Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("chat_states", e.to_string())),
            None => Ok(super::ChatState::default()),
        }
    }

    /// Compare-and-set of the entry (retried when another change won), the other entries'
    /// pin count read just before: two devices pinning two different conversations at the
    /// same moment can pass the pin limit (no transaction spans entries).
    async fn update_chat_state(
        &self,
        user: UserId,
        conversation: ConversationId,
        update: super::ChatUpdate,
        last_seq: u64,
        now_ms: u64,
    ) -> Result<Result<Option<super::ChatState>, super::InboxError>, StoreError> {
        for _ in 0..8 {
            let rows = self.chat_state_rows(user).await?;
            let pinned_others = rows.iter().filter(|(id, state, _)| *id != conversation && state.pinned_ms != 0).count();
            let (current, text) = rows.into_iter().find(|(id, ..)| *id == conversation).map(|(_, s, t)| (s, Some(t))).unwrap_or_default();
            let next = match crate::cores::inbox::apply(current, &update, pinned_others, last_seq, now_ms) {
                Ok(Some(next)) => next,
                other => return Ok(other),
            };
            let json = serde_json::to_string(&next).map_err(|e| StoreError::Backend(format!("chat_states: {e}")))?;
            let applied = match text {
                None => self.conditional(&self.st.create_chat_state, (user, conversation, json)).await?.applied,
                Some(old) => self.conditional(&self.st.cas_chat_state, (json, user, conversation, old)).await?.applied,
            };
            if applied {
                return Ok(Ok(Some(next)));
            }
        }
        Err(StoreError::Backend("chat_states: too many concurrent changes".into()))
    }

    async fn profile(&self, user: UserId) -> Result<Option<super::Profile>, StoreError> {
        let row: Option<(Option<String>,)> = self.first_row(&self.st.get_profile, (user,)).await?;
        match row.and_then(|(text,)| text) {
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| corrupt("profiles", e.to_string())),
            None => Ok(None),
        }
    }

    async fn set_profile(&self, user: UserId, profile: super::Profile) -> Result<(), StoreError> {
        self.exec(&self.st.put_profile, (user, profile_json(&profile)?)).await.map(drop)
    }

    async fn put_status(&self, post: super::StatusPost, now_ms: u64) -> Result<super::StatusPut, StoreError> {
        self.create_status(&post, now_ms).await
    }

    async fn status_post(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<Option<super::StatusPost>, StoreError> {
        self.live_status(poster, post_id, now_ms).await
    }

    async fn status_posts(&self, posters: Vec<UserId>, now_ms: u64) -> Result<Vec<super::StatusPost>, StoreError> {
        self.live_statuses(&posters, now_ms).await
    }

    async fn delete_status(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<bool, StoreError> {
        self.delete_status_rows(poster, post_id, now_ms).await
    }

    async fn mark_status_seen(&self, poster: UserId, post_id: super::StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
        self.mark_seen(poster, post_id, viewer, now_ms).await
    }

    async fn status_views(&self, poster: UserId, post_id: super::StatusId) -> Result<Vec<super::StatusView>, StoreError> {
        self.views_of(poster, post_id).await
    }

    async fn put_pairing(&self, p: PairingRecord) -> Result<(), StoreError> {
        let ttl = pairing_ttl(p.expires_ms);
        let values = (p.code_hash.to_vec(), p.claim_hash.to_vec(), p.device_name.as_str(), int(p.expires_ms), p.approved_by, p.approved_device, ttl);
        self.exec(&self.st.put_pairing, values).await.map(drop)
    }

    async fn approve_pairing(&self, code_hash: [u8; 32], user: UserId, device: DeviceId, now_ms: u64) -> Result<PairingApproval, StoreError> {
        let Some(mut record) = self.pairing(code_hash).await? else { return Ok(PairingApproval::Missing) };
        if record.expires_ms < now_ms {
            return Ok(PairingApproval::Missing);
        }
        if record.approved_by.is_some() {
            return Ok(PairingApproval::AlreadyApproved);
        }
        let values = (pairing_ttl(record.expires_ms), user, device, code_hash.to_vec(), int(now_ms));
        let applied = self.conditional(&self.st.approve_pairing, values).await?.applied;
        if !applied {
            // Another approval won, or the row expired in between.
            return Ok(if self.pairing(code_hash).await?.is_some() { PairingApproval::AlreadyApproved } else { PairingApproval::Missing });
        }
        record.approved_by = Some(user);
        record.approved_device = Some(device);
        Ok(PairingApproval::Approved(record))
    }

    async fn claim_pairing(&self, code_hash: [u8; 32], claim_hash: [u8; 32], now_ms: u64) -> Result<PairingClaim, StoreError> {
        let Some(record) = self.pairing(code_hash).await? else { return Ok(PairingClaim::Missing) };
        if record.expires_ms < now_ms || !super::code_matches(&record.claim_hash, &claim_hash) {
            return Ok(PairingClaim::Missing);
        }
        let (Some(user), Some(approver)) = (record.approved_by, record.approved_device) else { return Ok(PairingClaim::Pending) };
        // The conditional delete hands the pairing to exactly one of racing claims.
        if self.conditional(&self.st.consume_pairing, (code_hash.to_vec(), user)).await?.applied {
            Ok(PairingClaim::Claimed { user, device_name: record.device_name, approver })
        } else {
            Ok(PairingClaim::Missing)
        }
    }

    async fn privacy(&self, user: UserId) -> Result<PrivacySettings, StoreError> {
        let row: Option<(Option<String>,)> = self.first_row(&self.st.get_privacy, (user,)).await?;
        match row.and_then(|(text,)| text) {
            Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("privacy", e.to_string())),
            None => Ok(PrivacySettings::default()),
        }
    }

    async fn set_privacy(&self, user: UserId, settings: PrivacySettings) -> Result<(), StoreError> {
        self.exec(&self.st.put_privacy, (user, privacy_json(&settings)?)).await.map(drop)
    }

    async fn is_blocked(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        let row: Option<(Option<i64>,)> = self.first_row(&self.st.get_block, (user, target)).await?;
        Ok(row.is_some())
    }

    async fn blocks_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.blocks_of, (user,), |(t,): (UserId,)| {
            out.push(t);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn blockers_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.blockers_of, (user,), |(u,): (UserId,)| {
            out.push(u);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn set_blocked(&self, user: UserId, target: UserId, blocked: bool, at_ms: u64) -> Result<bool, StoreError> {
        // The blocks row decides (compare-and-set); the blockers index follows it, and is
        // written again even when nothing changed so that a write lost after the decision
        // (a crash between the two) is repaired by the retry.
        if blocked {
            let changed = self.conditional(&self.st.add_block, (user, target, int(at_ms))).await?.applied;
            self.exec(&self.st.add_blocker, (target, user)).await?;
            Ok(changed)
        } else {
            let changed = self.conditional(&self.st.remove_block, (user, target)).await?.applied;
            self.exec(&self.st.remove_blocker, (target, user)).await?;
            Ok(changed)
        }
    }

    async fn users_by_phone(&self, phones: Vec<String>) -> Result<Vec<(String, UserId)>, StoreError> {
        let mut out = Vec::new();
        // One point read per number (each routed to its own replicas), a chunk at a time
        // concurrently: no multi-partition IN list for a coordinator to fan out.
        for chunk in phones.chunks(CONTACT_CHUNK) {
            let rows = futures_util::future::try_join_all(chunk.iter().map(|p| async move {
                let row: Option<(Option<UserId>,)> = self.first_row(&self.st.phone_user, (p.as_str(),)).await?;
                match row.and_then(|(u,)| u) {
                    // The user row decides: a phones row left behind by a number change or
                    // a deletion cut short is no one's number.
                    Some(u) if self.user(u).await?.is_some_and(|r| r.phone == *p) => Ok::<_, StoreError>(Some((p.clone(), u))),
                    _ => Ok(None),
                }
            }))
            .await?;
            out.extend(rows.into_iter().flatten());
        }
        Ok(out)
    }

    async fn known_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in phones.chunks(CONTACT_CHUNK) {
            self.all_rows(&self.st.known_contacts, (owner, chunk.to_vec()), |(p,): (String,)| {
                out.push(p);
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    async fn contacts_of(&self, owner: UserId) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.contacts_of, (owner,), |(p,): (String,)| {
            out.push(p);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn add_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        for chunk in phones.chunks(CONTACT_CHUNK) {
            futures_util::future::try_join_all(chunk.iter().map(|p| self.exec(&self.st.add_contact, (owner, p.as_str())))).await?;
        }
        Ok(())
    }

    async fn remove_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        for chunk in phones.chunks(CONTACT_CHUNK) {
            futures_util::future::try_join_all(chunk.iter().map(|p| self.exec(&self.st.remove_contact, (owner, p.as_str())))).await?;
        }
        Ok(())
    }

    async fn set_push_token(&self, user_id: UserId, device_id: DeviceId, token: Option<PushToken>) -> Result<(), StoreError> {
        match token {
            Some(t) => self.exec(&self.st.put_push_token, (user_id, device_id, t.platform.as_str(), t.token.as_str())).await.map(drop),
            None => self.exec(&self.st.delete_push_token, (user_id, device_id)).await.map(drop),
        }
    }

    async fn push_tokens_of(&self, user_id: UserId) -> Result<Vec<(DeviceId, PushToken)>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.push_tokens, (user_id,), |(d, p, t): (DeviceId, Option<String>, Option<String>)| {
            out.push((d, PushToken { platform: p.unwrap_or_default(), token: t.unwrap_or_default() }));
            Ok(())
        })
        .await?;
        out.sort_by_key(|(d, _)| *d);
        Ok(out)
    }

    async fn purge_expired(&self, _now_ms: u64, _limit: usize) -> Result<u64, StoreError> {
        // Rows expire by TTL, set when they are written (see the module docs).
        Ok(0)
    }

    async fn put_device_keys(&self, keys: DeviceKeys) -> Result<KeysStored, StoreError> {
        match self.device(keys.device_id).await? {
            Some(d) if d.user_id == keys.user_id && d.revoked_ms.is_none() => {}
            _ => return Err(StoreError::NotFound("device")),
        }
        let current: Option<KeysRow> = self.first_row(&self.st.get_device_keys, (keys.user_id, keys.device_id)).await?;
        let current = current.map(|row| keys_from(keys.user_id, row)).transpose()?;
        if current.as_ref().is_some_and(|c| c.same_keys(&keys)) {
            return Ok(KeysStored::Unchanged);
        }
        if current.is_some() {
            // The old account's keys first: a crash after this leaves the device without
            // one-time keys (it uploads again), never with keys of the wrong account.
            self.remove_key_material(keys.device_id).await?;
        }
        self.exec(
            &self.st.put_device_keys,
            (keys.user_id, keys.device_id, keys.curve25519.as_slice(), keys.ed25519.as_slice(), keys.signature.as_slice(), int(keys.uploaded_ms)),
        )
        .await?;
        Ok(if current.is_some() { KeysStored::Replaced } else { KeysStored::New })
    }

    async fn device_keys_of(&self, user_id: UserId) -> Result<Vec<DeviceKeys>, StoreError> {
        let mut rows: Vec<KeysRow> = Vec::new();
        self.all_rows(&self.st.device_keys_of, (user_id,), |row: KeysRow| {
            rows.push(row);
            Ok(())
        })
        .await?;
        rows.into_iter().map(|row| keys_from(user_id, row)).collect()
    }

    async fn add_one_time_keys(&self, device_id: DeviceId, keys: Vec<OneTimeKey>, fallback: Option<OneTimeKey>) -> Result<u64, StoreError> {
        for key in &keys {
            self.exec(&self.st.put_one_time_key, (device_id, key.key_id.as_str(), key.key.as_slice(), key.signature.as_slice())).await?;
        }
        if let Some(f) = &fallback {
            self.exec(&self.st.put_fallback_key, (device_id, f.key_id.as_str(), f.key.as_slice(), f.signature.as_slice())).await?;
        }
        self.one_time_key_count(device_id).await
    }

    async fn one_time_key_count(&self, device_id: DeviceId) -> Result<u64, StoreError> {
        Ok(self.one_time_key_rows(device_id).await?.iter().filter(|(_, claimed)| claimed.is_none()).count() as u64)
    }

    async fn claim_one_time_key(&self, device_id: DeviceId, at_ms: u64) -> Result<Option<ClaimedKey>, StoreError> {
        let mut candidates: Vec<OneTimeKey> =
            self.one_time_key_rows(device_id).await?.into_iter().filter(|(_, c)| c.is_none()).map(|(k, _)| k).collect();
        // Racing claimers start at different keys instead of all contending for the first
        // one's Paxos round; the LWT alone decides who gets a key.
        if !candidates.is_empty() {
            let start = rand::random_range(0..candidates.len());
            candidates.rotate_left(start);
        }
        for key in candidates {
            let round = self.conditional(&self.st.claim_one_time_key, (int(at_ms), device_id, key.key_id.as_str(), key.key.as_slice())).await?;
            if round.applied {
                return Ok(Some(ClaimedKey { key, fallback: false }));
            }
        }
        let fallback: Option<(String, Vec<u8>, Vec<u8>)> = self.first_row(&self.st.get_fallback_key, (device_id,)).await?;
        fallback
            .map(|(key_id, key, signature)| {
                let key = key.try_into().map_err(|_| StoreError::Corrupt { table: "fallback_keys", detail: "key is not 32 bytes".into() })?;
                Ok(ClaimedKey { key: OneTimeKey { key_id, key, signature }, fallback: true })
            })
            .transpose()
    }

    async fn enqueue_to_device(&self, send: ToDeviceSend, bounds: crate::store::QueueBounds) -> Result<ToDeviceStored, StoreError> {
        self.enqueue_to_device_impl(send, bounds).await
    }

    async fn to_device_after(&self, device_id: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError> {
        self.to_device_after_impl(device_id, after, limit).await
    }

    async fn ack_to_device(&self, device_id: DeviceId, up_to: u64) -> Result<(), StoreError> {
        self.ack_to_device_impl(device_id, up_to).await
    }

    async fn note_device_list_change(&self, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError> {
        self.note_device_list_change_impl(changed, devices, at_ms).await
    }

    async fn device_list_changes(&self, device_id: DeviceId) -> Result<Vec<UserId>, StoreError> {
        self.device_list_changes_impl(device_id).await
    }

    async fn ack_device_list_changes(&self, device_id: DeviceId, users: Vec<UserId>) -> Result<(), StoreError> {
        self.ack_device_list_changes_impl(device_id, users).await
    }

    async fn cursors_of(&self, device_id: DeviceId) -> Result<Vec<(ConversationId, Cursor)>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.st.device_cursors, (device_id,), |(c, d, r): (ConversationId, Option<i64>, Option<i64>)| {
            let cursor = Cursor { delivered: d.map(uint).unwrap_or(0), read: r.map(uint).unwrap_or(0) };
            if cursor != Cursor::default() {
                out.push((c, cursor));
            }
            Ok(())
        })
        .await?;
        // CQL orders uuid clustering keys by version first; the contract orders by bytes.
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    async fn last_seen(&self, user_id: UserId) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> = self.first_row(&self.st.get_last_seen, (user_id,)).await?;
        Ok(row.and_then(|(t,)| t).map(uint))
    }

    async fn create_media(&self, record: MediaRecord) -> Result<(), StoreError> {
        // The record first (the compare-and-set decides who created it), then its index
        // rows; a crash between leaves a record the quota does not count yet, never a
        // quota row without a record.
        let created = self.conditional(&self.st.create_media, (record.media_id, int(record.version), encode(&record)?)).await?;
        if created.applied {
            self.put_media_index(&record).await?;
        }
        Ok(())
    }

    async fn media(&self, id: MediaId) -> Result<Option<MediaRecord>, StoreError> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = self.first_row(&self.st.get_media, (id,)).await?;
        match row {
            Some((_, Some(bytes))) => Ok(Some(decode("media", &bytes)?)),
            _ => Ok(None),
        }
    }

    async fn update_media(&self, record: MediaRecord) -> Result<bool, StoreError> {
        let Some(current) = self.media(record.media_id).await? else { return Ok(false) };
        if current.owner != record.owner {
            return Ok(false);
        }
        let expected = int(record.version.saturating_sub(1));
        let result = self.conditional(&self.st.cas_media, (int(record.version), encode(&record)?, record.media_id, expected)).await?;
        if result.applied {
            self.put_media_index(&record).await?;
        }
        Ok(result.applied)
    }

    async fn delete_media(&self, id: MediaId, version: u64) -> Result<bool, StoreError> {
        let Some(current) = self.media(id).await? else { return Ok(false) };
        let result = self.conditional(&self.st.delete_media, (id, int(version))).await?;
        if result.applied {
            self.exec(&self.st.delete_media_by_owner, (current.owner, id)).await?;
            if let Some(d) = current.digest {
                self.exec(&self.st.delete_media_by_digest, (d.to_vec(), id)).await?;
            }
        }
        Ok(result.applied)
    }

    async fn media_refs(&self, id: MediaId, limit: usize) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        let mut candidates: Vec<(ConversationId, i64)> = Vec::new();
        self.all_rows(&self.st.media_refs, (id,), |r: (ConversationId, i64)| {
            candidates.push(r);
            Ok(())
        })
        .await?;
        let mut out = Vec::new();
        for (conversation, seq) in candidates {
            if out.len() >= limit {
                break;
            }
            let row: Option<(Option<bool>, Option<Vec<MediaId>>)> =
                self.first_row(&self.st.attachments_at, (conversation, bucket_of(uint(seq)), seq)).await?;
            let live = matches!(&row, Some((deleted, Some(list))) if !deleted.unwrap_or(false) && list.contains(&id));
            if live {
                out.push((conversation, uint(seq)));
            } else if row.is_some() {
                // The message exists but no longer declares it (deleted for everyone): the
                // reference is over. (No row at all may be an append still in flight, so
                // that candidate is left for its TTL or a later read.)
                self.exec(&self.st.delete_media_ref, (id, conversation, seq)).await?;
            }
        }
        Ok(out)
    }

    async fn media_usage(&self, owner: UserId) -> Result<u64, StoreError> {
        let mut total = 0u64;
        self.all_rows(&self.st.media_by_owner, (owner,), |(len,): (Option<i64>,)| {
            total = total.saturating_add(len.map(uint).unwrap_or(0));
            Ok(())
        })
        .await?;
        Ok(total)
    }

    async fn take_token(&self, key: &str, rule: BucketRule, now_ms: u64) -> Result<Taken, StoreError> {
        let key = checked_bucket_key(key)?.to_owned();
        let row: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.st.get_bucket, (key.as_str(),)).await?;
        let state = |tokens: Option<i64>, at: Option<i64>| Some(BucketState { tokens_milli: uint(tokens?), at_ms: uint(at?) });
        let mut current = row.and_then(|(t, a)| state(t, a));
        // Compare-and-set until this node's decision is applied to the state it saw; a
        // refused condition returns the current values, so each retry is one round trip.
        for _ in 0..16 {
            let next = match token_bucket::take(current, rule, now_ms) {
                Decision::Take(next) => next,
                Decision::Refuse { retry_after_ms } => return Ok(Taken::No { retry_after_ms }),
            };
            let (tokens, at) = (int(next.tokens_milli), int(next.at_ms));
            let result = match current {
                None => self.conditional(&self.st.create_bucket, (key.as_str(), tokens, at)).await?,
                Some(seen) => self.conditional(&self.st.cas_bucket, (tokens, at, key.as_str(), int(seen.tokens_milli), int(seen.at_ms))).await?,
            };
            if result.applied {
                return Ok(Taken::Yes);
            }
            current = state(result.bigint("tokens_milli"), result.bigint("at_ms"));
        }
        Err(StoreError::Backend(format!("scylla: rate bucket {key:?} kept changing under 16 attempts")))
    }

    async fn media_page(&self, after: Option<MediaId>, limit: usize) -> Result<Vec<MediaRecord>, StoreError> {
        // Token order (the partitioner's), not id order: what matters to the sweep is a
        // walk that resumes after the last id it saw.
        let want = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut rows: Vec<(MediaId, Option<Vec<u8>>)> = Vec::new();
        let push = |r: (MediaId, Option<Vec<u8>>)| {
            rows.push(r);
            Ok(())
        };
        match after {
            None => self.all_rows(&self.st.media_first_page, (want,), push).await?,
            Some(a) => self.all_rows(&self.st.media_next_page, (a, want), push).await?,
        }
        rows.into_iter().filter_map(|(_, bytes)| bytes).take(limit).map(|b| decode("media", &b)).collect()
    }

    async fn media_with_digest(&self, digest: [u8; 32], limit: usize) -> Result<Vec<MediaId>, StoreError> {
        let mut out = Vec::new();
        let want = i32::try_from(limit).unwrap_or(i32::MAX);
        self.all_rows(&self.st.media_by_digest, (digest.to_vec(), want), |(id,): (MediaId,)| {
            out.push(id);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        for record in records {
            self.import_one(record).await?;
        }
        Ok(())
    }

    async fn count(&self, section: Section) -> Result<u64, StoreError> {
        let cql = match section {
            Section::Users => "SELECT user_id FROM users",
            Section::Devices => "SELECT device_id FROM devices",
            Section::Conversations => "SELECT conversation_id FROM conversations",
            Section::Memberships => "SELECT user_id FROM user_conversations",
            // A static-only partition (a bucket whose rows all expired) comes back as one
            // row with a null seq: not a message.
            Section::Messages => "SELECT seq FROM messages",
            Section::LastSeqs => "SELECT conversation_id FROM conversation_heads",
            Section::Cursors => "SELECT device_id FROM cursors",
            Section::MemberCursors => "SELECT user_id FROM member_cursors",
            Section::Receipts => "SELECT seq FROM receipt_log",
            Section::LastSeen => "SELECT user_id FROM last_seen",
            Section::PushTokens => "SELECT device_id FROM push_tokens",
            Section::Media => "SELECT media_id FROM media",
            Section::DeviceKeys => "SELECT device_id FROM device_keys",
            Section::OneTimeKeys => "SELECT key_id FROM one_time_keys",
            Section::FallbackKeys => "SELECT device_id FROM fallback_keys",
            // One row per partition; a queue is a partition whose fence is set.
            Section::ToDeviceQueues => "SELECT DISTINCT last_position, device_id FROM to_device",
            // A static-only row (a queue with no entry) has no sender.
            Section::ToDeviceEntries => "SELECT sender_user_id FROM to_device",
            Section::DeviceListNotices => "SELECT user_id FROM device_list_notices",
            Section::Contacts => "SELECT phone FROM contacts",
            Section::Privacy => "SELECT user_id FROM privacy",
            Section::Blocks => "SELECT target FROM blocks",
            Section::Profiles => "SELECT user_id FROM profiles",
            Section::ChatStates => "SELECT user_id FROM chat_states",
            Section::Statuses => "SELECT post_id FROM status_posts",
            Section::StatusViews => "SELECT viewer FROM status_views",
        };
        self.count_rows(cql).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write was acknowledged by a quorum of replicas before it returned.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preamble_is_run_once_and_every_migration_has_a_body() {
        let first = split_cql(MIGRATIONS[0].1);
        assert_eq!(first.iter().take(2).filter(|s| is_preamble(s)).count(), 2, "0001 starts with the keyspace and the migrations table");
        for (version, text) in MIGRATIONS {
            let body: Vec<String> = split_cql(text).into_iter().filter(|s| !is_preamble(s)).collect();
            assert!(!body.is_empty(), "migration {version} has nothing but the preamble");
            assert!(
                body.iter().all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS {keyspace}.") || s.starts_with("ALTER TABLE {keyspace}.")),
                "{version}: {body:?}"
            );
        }
        assert_eq!(
            MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>(),
            "versions in order, none missing"
        );
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/scylla")).expect("migrations").count();
        assert_eq!(files, MIGRATIONS.len(), "every file of migrations/scylla is applied");
    }
}
