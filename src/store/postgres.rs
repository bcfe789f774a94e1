//! The PostgreSQL backend: the shared store operators already run, and the one every
//! machine here can start in tests.
//!
//! The schema (`migrations/postgres/*.sql`) is the embedded store's layout as tables; the
//! store contract's guarantees come from constraints and transactions:
//! - the sequencer's fence is a `last_seqs` row per conversation, created (at 0) and
//!   locked (`FOR UPDATE`, in id order) at the start of every batch that appends to the
//!   conversation, checked in memory (seq must be last + 1) and moved in the same
//!   transaction, so two sequencers of one conversation take turns and the second sees
//!   the first's seq;
//! - idempotency is the unique `(conversation, sender, client_msg_id)` of `messages`;
//! - cursors only grow (`GREATEST` in an upsert).
//!
//! Every write runs in one transaction at READ COMMITTED (the fence and member-cursor row
//! locks are what serialises racing writers) and is durable when its
//! COMMIT returns (`synchronous_commit` as configured on the server; the default, `on`,
//! waits for the WAL flush). Statements are prepared once per pooled connection.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::checked_bucket_key;
use super::transfer::{Record, Section};
use super::{
    ClaimedKey, CodeCheck, ContentKind, ConversationId, ConversationKind, ConversationRecord, Cursor, DeviceId, DeviceKeys, DeviceRecord, GroupState,
    KeysStored, MediaId, MediaRecord, MemberCursor, OneTimeKey, PairingApproval, PairingClaim, PairingRecord, PendingCode, PrivacySettings,
    PushToken, QueueBounds, Store, StoreError, StoredMessage, ToDeviceEntry, ToDeviceQueue, ToDeviceSend, ToDeviceStored, UserId, UserRecord,
    WriteOp, WriteOutcome,
};
use crate::cores::token_bucket::{self, BucketRule, BucketState, Decision, Taken};
use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

mod status;

/// Schema migrations, applied in order; the version of each is recorded in
/// `schema_migrations` so each runs once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_media.sql")),
    (3, include_str!("../../migrations/postgres/0003_keys.sql")),
    (4, include_str!("../../migrations/postgres/0004_to_device.sql")),
    (5, include_str!("../../migrations/postgres/0005_rate_buckets.sql")),
    (6, include_str!("../../migrations/postgres/0006_referrers.sql")),
    (7, include_str!("../../migrations/postgres/0007_contacts.sql")),
    (8, include_str!("../../migrations/postgres/0008_privacy.sql")),
    (9, include_str!("../../migrations/postgres/0009_pairings.sql")),
    (10, include_str!("../../migrations/postgres/0010_profiles.sql")),
    (11, include_str!("../../migrations/postgres/0011_chat_states.sql")),
    (12, include_str!("../../migrations/postgres/0012_status.sql")),
];

/// Key of the advisory lock that serialises migrations when several nodes start at once.
const MIGRATION_LOCK: i64 = 0x5357_4243_4844_0001;

/// Mixed into the key of a user's chat-state lock (`pg_advisory_xact_lock`), so that it
/// does not meet other advisory locks (the migration lock) by chance.
const CHAT_STATE_LOCK: i64 = 0x5357_4243_4844_0002;

/// A PostgreSQL-backed store over a connection pool. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Longest wait for a free connection, and for a new one to be established.
    pub connect_timeout: Duration,
    /// Server-side limit on one statement; a statement that hits it fails (and its
    /// transaction rolls back) instead of holding a writer forever.
    pub statement_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { pool_size: 16, connect_timeout: Duration::from_secs(5), statement_timeout: Duration::from_secs(10) }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => StoreError::Backend(format!("postgres: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Backend(format!("postgres pool: {other}")),
    }
}

/// Seqs, cursors and times are u64 in the contract and bigint in SQL; every real value
/// fits, and an absurd one (a client's cursor claim) saturates instead of wrapping.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, detail: detail.to_string() }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, table: &'static str, column: &str) -> Result<T, StoreError> {
    row.try_get(column).map_err(|e| corrupt(table, format!("{column}: {e}")))
}

/// A record as stored in a JSON text column.
fn json_text(table: &str, value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("{table}: {e}")))
}

/// Privacy settings as stored (JSON text).
fn privacy_json(settings: &PrivacySettings) -> Result<String, StoreError> {
    serde_json::to_string(settings).map_err(|e| StoreError::Backend(format!("privacy: {e}")))
}

fn hash32(table: &'static str, bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| corrupt(table, "hash is not 32 bytes"))
}

fn user_from(row: &Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord { user_id: get(row, "users", "user_id")?, phone: get(row, "users", "phone")?, created_ms: uint(get(row, "users", "created_ms")?) })
}

fn device_from(row: &Row) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        device_id: get(row, "devices", "device_id")?,
        user_id: get(row, "devices", "user_id")?,
        name: get(row, "devices", "name")?,
        primary: get(row, "devices", "is_primary")?,
        token_hash: hash32("devices", get(row, "devices", "token_hash")?)?,
        created_ms: uint(get(row, "devices", "created_ms")?),
        revoked_ms: get::<Option<i64>>(row, "devices", "revoked_ms")?.map(uint),
    })
}

fn device_keys_from(row: &Row) -> Result<DeviceKeys, StoreError> {
    const T: &str = "device_keys";
    Ok(DeviceKeys {
        user_id: get(row, T, "user_id")?,
        device_id: get(row, T, "device_id")?,
        curve25519: hash32(T, get(row, T, "curve25519")?)?,
        ed25519: hash32(T, get(row, T, "ed25519")?)?,
        signature: get(row, T, "signature")?,
        uploaded_ms: uint(get(row, T, "uploaded_ms")?),
    })
}

fn one_time_key_from(table: &'static str, row: &Row) -> Result<OneTimeKey, StoreError> {
    Ok(OneTimeKey {
        key_id: get(row, table, "key_id")?,
        key: hash32(table, get(row, table, "public_key")?)?,
        signature: get(row, table, "signature")?,
    })
}

fn conversation_from(row: &Row) -> Result<ConversationRecord, StoreError> {
    let kind = match get::<i16>(row, "conversations", "kind")? {
        0 => ConversationKind::Direct,
        1 => ConversationKind::Group,
        other => return Err(corrupt("conversations", format!("unknown kind {other}"))),
    };
    let group: Option<Json<GroupState>> = get(row, "conversations", "group_state")?;
    Ok(ConversationRecord {
        conversation_id: get(row, "conversations", "conversation_id")?,
        kind,
        members: get(row, "conversations", "members")?,
        created_ms: uint(get(row, "conversations", "created_ms")?),
        group: group.map(|Json(g)| Box::new(g)),
        retention_secs: get::<i32>(row, "conversations", "retention_secs")?.max(0) as u32,
    })
}

fn message_from(row: &Row) -> Result<StoredMessage, StoreError> {
    let kind = match get::<i16>(row, "messages", "content_kind")? {
        0 => ContentKind::Normal,
        1 => ContentKind::Edit,
        2 => ContentKind::Reaction,
        other => return Err(corrupt("messages", format!("unknown content kind {other}"))),
    };
    Ok(StoredMessage {
        conversation_id: get(row, "messages", "conversation_id")?,
        seq: uint(get(row, "messages", "seq")?),
        sender_user_id: get(row, "messages", "sender_user_id")?,
        sender_device_id: get(row, "messages", "sender_device_id")?,
        client_msg_id: get(row, "messages", "client_msg_id")?,
        server_time_ms: uint(get(row, "messages", "server_time_ms")?),
        payload: get::<Vec<u8>>(row, "messages", "payload")?.into(),
        event: get::<Option<Vec<u8>>>(row, "messages", "event")?.map(Into::into),
        kind,
        reference_seq: uint(get(row, "messages", "reference_seq")?),
        deleted: get(row, "messages", "deleted")?,
        attachments: get::<Vec<Uuid>>(row, "messages", "attachments")?.into_iter().map(MediaId::from_uuid).collect(),
    })
}

fn media_from(row: &Row) -> Result<MediaRecord, StoreError> {
    let Json(record): Json<MediaRecord> = get(row, "media", "record")?;
    Ok(record)
}

/// A message's attachments as one text value (`uuid,uuid`), so that a batch of messages
/// can go through `unnest` (which flattens arrays of arrays).
fn attachments_text(m: &StoredMessage) -> String {
    m.attachments.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

fn kind_code(kind: ConversationKind) -> i16 {
    match kind {
        ConversationKind::Direct => 0,
        ConversationKind::Group => 1,
    }
}

/// A message's dedup key: conversation, sender, client id.
type DedupKey = (ConversationId, UserId, String);
/// What a dedup key points at: seq, server time, and the conversation's retention when
/// the message can expire (not an event).
type Stored = (u64, u64, Option<u32>);

fn content_code(kind: ContentKind) -> i16 {
    match kind {
        ContentKind::Normal => 0,
        ContentKind::Edit => 1,
        ContentKind::Reaction => 2,
    }
}

/// A chat state row's `state` column, decoded.
fn chat_state_from(row: &Row) -> Result<super::ChatState, StoreError> {
    let text: String = get(row, "chat_states", "state")?;
    serde_json::from_str(&text).map_err(|e| corrupt("chat_states", e.to_string()))
}

/// One `WriteOp::AdvanceCursor`, as SQL values.
struct CursorMove {
    user_id: UserId,
    device_id: DeviceId,
    conversation_id: ConversationId,
    delivered: i64,
    read: i64,
    at_ms: i64,
}

const MESSAGE_COLUMNS: &str = "conversation_id, seq, sender_user_id, sender_device_id, client_msg_id, server_time_ms, payload, event, content_kind, reference_seq, deleted, attachments";
const CONVERSATION_COLUMNS: &str = "conversation_id, kind, members, created_ms, group_state, retention_secs";
const DEVICE_COLUMNS: &str = "device_id, user_id, name, is_primary, token_hash, created_ms, revoked_ms";

type Tx<'a> = deadpool_postgres::Transaction<'a>;

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) and checks that the server
    /// answers within the connect timeout. The schema is not touched: see [`Self::migrate`].
    /// `sslmode` and `sslrootcert` are honoured as libpq does (see [`super::pg_tls`]).
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let (url, tls) = super::pg_tls::split_url(url).map_err(|e| StoreError::Backend(format!("postgres url: {e}")))?;
        let connector = super::pg_tls::connector(&tls).map_err(|e| StoreError::Backend(format!("postgres tls: {e}")))?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Backend(format!("postgres url: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_options().is_none() {
            config.options(format!("-c statement_timeout={}", options.statement_timeout.as_millis()));
        }
        if config.get_application_name().is_none() {
            config.application_name("switchboard");
        }
        let manager = Manager::from_config(config, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))?;
        let store = Self { pool };
        store.ping().await?;
        Ok(store)
    }

    /// Whether a pooled connection to the server is encrypted (PostgreSQL's own view,
    /// `pg_stat_ssl`): for health reports and tests of `sslmode`.
    pub async fn connection_encrypted(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.map_err(pg)?;
        Ok(row.get(0))
    }

    /// Applies every migration not yet recorded, under an advisory lock so that nodes
    /// starting together apply each once. Returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
            .await
            .map_err(pg)?;
        let done: Vec<i32> = tx.query("SELECT version FROM schema_migrations", &[]).await.map_err(pg)?.iter().map(|r| r.get(0)).collect();
        let mut applied = Vec::new();
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", &[version, &int(super::now_ms())]).await.map_err(pg)?;
            applied.push(*version);
        }
        tx.commit().await.map_err(pg)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "postgres schema migrated");
        }
        Ok(applied)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one read statement on a pooled connection.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg)?;
        client.query(&statement, params).await.map_err(pg)
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs one write statement in its own (implicit) transaction.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg)?;
        client.execute(&statement, params).await.map_err(pg)
    }

    async fn run(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let statement = tx.prepare_cached(sql).await.map_err(pg)?;
        tx.execute(&statement, params).await.map_err(pg)
    }

    async fn rows(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let statement = tx.prepare_cached(sql).await.map_err(pg)?;
        tx.query(&statement, params).await.map_err(pg)
    }

    /// Removes a device's one-time keys (unclaimed and spent) and its fallback key.
    async fn remove_key_material(tx: &Tx<'_>, device_id: DeviceId) -> Result<(), StoreError> {
        Self::run(tx, "DELETE FROM one_time_keys WHERE device_id = $1", &[&device_id]).await?;
        Self::run(tx, "DELETE FROM fallback_keys WHERE device_id = $1", &[&device_id]).await?;
        Ok(())
    }

    async fn count_unclaimed(tx: &Tx<'_>, device_id: DeviceId) -> Result<u64, StoreError> {
        let rows = Self::rows(tx, "SELECT count(*) AS n FROM one_time_keys WHERE device_id = $1 AND claimed_ms IS NULL", &[&device_id]).await?;
        let n: i64 = rows.first().map(|r| get(r, "one_time_keys", "n")).transpose()?.unwrap_or(0);
        Ok(uint(n))
    }

    /// Prepares statements (or finds them in the connection's cache) before they are sent
    /// together: a `biased` join of already-prepared statements sends them in the order
    /// written, and PostgreSQL runs them in that order.
    async fn prepare_first(tx: &Tx<'_>, statements: &[&str]) -> Result<(), StoreError> {
        for sql in statements {
            tx.prepare_cached(sql).await.map_err(pg)?;
        }
        Ok(())
    }

    /// Creates (at 0) and locks the fence of every conversation the batch appends to, in id
    /// order, before any op runs: two batches touching the same conversations then take
    /// their locks in the same order and cannot deadlock, and every fence is read once.
    async fn lock_fences(tx: &Tx<'_>, ops: &[WriteOp]) -> Result<HashMap<ConversationId, i64>, StoreError> {
        let mut conversations: Vec<ConversationId> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Append(m) => Some(m.conversation_id),
                WriteOp::AppendEvent { message, .. } => Some(message.conversation_id),
                _ => None,
            })
            .collect();
        if conversations.is_empty() {
            return Ok(HashMap::new());
        }
        conversations.sort();
        conversations.dedup();
        const CREATE: &str =
            "INSERT INTO last_seqs (conversation_id, last_seq) SELECT c, 0 FROM unnest($1::uuid[]) AS c ORDER BY c ON CONFLICT DO NOTHING";
        const LOCK: &str = "SELECT conversation_id, last_seq FROM last_seqs WHERE conversation_id = ANY($1) ORDER BY conversation_id FOR UPDATE";
        let params: [&(dyn ToSql + Sync); 1] = [&conversations];
        // One round trip: created, then locked (sent and run in this order).
        Self::prepare_first(tx, &[CREATE, LOCK]).await?;
        let (_, locked) = tokio::try_join!(biased; Self::run(tx, CREATE, &params), Self::rows(tx, LOCK, &params))?;
        let mut fences = HashMap::new();
        for row in locked {
            fences.insert(get(&row, "last_seqs", "conversation_id")?, get(&row, "last_seqs", "last_seq")?);
        }
        Ok(fences)
    }

    /// Applies consecutive plain appends with the same outcomes as one by one, in two round
    /// trips (the fences are already locked and known): look up every dedup key, decide
    /// each append in order in memory, then insert the accepted messages and move the
    /// fences together.
    async fn append_run(
        tx: &Tx<'_>,
        run: Vec<(usize, StoredMessage)>,
        fences: &mut HashMap<ConversationId, i64>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let (keys_c, keys_s, keys_id): (Vec<Uuid>, Vec<Uuid>, Vec<&str>) = run
            .iter()
            .map(|(_, m)| (m.conversation_id.uuid(), m.sender_user_id.uuid(), m.client_msg_id.as_str()))
            .fold((Vec::new(), Vec::new(), Vec::new()), |(mut c, mut s, mut k), (a, b, d)| {
                c.push(a);
                s.push(b);
                k.push(d);
                (c, s, k)
            });
        // A nested loop over the unique index (LATERAL), whatever the table size.
        let found = Self::rows(
            tx,
            "SELECT k.c AS conversation_id, k.s AS sender_user_id, k.id AS client_msg_id, m.seq, m.server_time_ms, m.is_event, \
                 (SELECT retention_secs FROM conversations WHERE conversation_id = k.c) AS retention_secs \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(c, s, id) \
             CROSS JOIN LATERAL (SELECT seq, server_time_ms, event IS NOT NULL AS is_event FROM messages \
                 WHERE conversation_id = k.c AND sender_user_id = k.s AND client_msg_id = k.id) AS m",
            &[&keys_c, &keys_s, &keys_id],
        )
        .await?;
        let mut dedup: HashMap<DedupKey, Stored> = HashMap::new();
        for row in found {
            let is_event: bool = get(&row, "messages", "is_event")?;
            let retention = get::<Option<i32>>(&row, "conversations", "retention_secs")?.unwrap_or(0).max(0) as u32;
            dedup.insert(
                (get(&row, "messages", "conversation_id")?, get(&row, "messages", "sender_user_id")?, get(&row, "messages", "client_msg_id")?),
                (uint(get(&row, "messages", "seq")?), uint(get(&row, "messages", "server_time_ms")?), (!is_event).then_some(retention)),
            );
        }
        let mut accepted: Vec<&StoredMessage> = Vec::new();
        let mut moved: std::collections::BTreeMap<ConversationId, i64> = std::collections::BTreeMap::new();
        // Expired messages whose client id is used again: deleted before the new ones are
        // inserted (expiry is a rule, not an effect of the sweep; see the embedded store's
        // `free_expired_client_id`).
        let (mut stale_ids, mut stale_seqs): (Vec<ConversationId>, Vec<i64>) = (Vec::new(), Vec::new());
        for (i, m) in &run {
            let key = (m.conversation_id, m.sender_user_id, m.client_msg_id.clone());
            if let Some(&(seq, time_ms, Some(retention))) = dedup.get(&key)
                && super::is_expired(time_ms, retention, m.server_time_ms)
            {
                dedup.remove(&key);
                stale_ids.push(m.conversation_id);
                stale_seqs.push(int(seq));
            }
            let last = fences.get(&m.conversation_id).copied().unwrap_or(0);
            outcomes[*i] = Some(if let Some(&(seq, server_time_ms, _)) = dedup.get(&key) {
                WriteOutcome::Duplicate { seq, server_time_ms }
            } else if m.seq == 0 || int(m.seq) != last + 1 {
                WriteOutcome::SeqConflict
            } else {
                fences.insert(m.conversation_id, int(m.seq));
                moved.insert(m.conversation_id, int(m.seq));
                dedup.insert(key, (m.seq, m.server_time_ms, None));
                accepted.push(m);
                WriteOutcome::Appended
            });
        }
        if !stale_ids.is_empty() {
            Self::run(
                tx,
                "DELETE FROM messages m USING unnest($1::uuid[], $2::bigint[]) AS v(c, s) WHERE m.conversation_id = v.c AND m.seq = v.s",
                &[&stale_ids, &stale_seqs],
            )
            .await?;
        }
        if !accepted.is_empty() {
            let payloads: Vec<&[u8]> = accepted.iter().map(|m| m.payload.as_ref()).collect();
            let events: Vec<Option<&[u8]>> = accepted.iter().map(|m| m.event.as_deref()).collect();
            let ids_of_messages: Vec<ConversationId> = accepted.iter().map(|m| m.conversation_id).collect();
            let seqs_of_messages: Vec<i64> = accepted.iter().map(|m| int(m.seq)).collect();
            let senders: Vec<UserId> = accepted.iter().map(|m| m.sender_user_id).collect();
            let devices: Vec<DeviceId> = accepted.iter().map(|m| m.sender_device_id).collect();
            let client_ids: Vec<&str> = accepted.iter().map(|m| m.client_msg_id.as_str()).collect();
            let times: Vec<i64> = accepted.iter().map(|m| int(m.server_time_ms)).collect();
            let kinds: Vec<i16> = accepted.iter().map(|m| content_code(m.kind)).collect();
            let references: Vec<i64> = accepted.iter().map(|m| int(m.reference_seq)).collect();
            let deleted: Vec<bool> = accepted.iter().map(|m| m.deleted).collect();
            let attachments: Vec<String> = accepted.iter().map(|m| attachments_text(m)).collect();
            let (ids, seqs): (Vec<ConversationId>, Vec<i64>) = moved.into_iter().unzip();
            // Pipelined as well: one round trip for both.
            let message_params: [&(dyn ToSql + Sync); 12] = [
                &ids_of_messages,
                &seqs_of_messages,
                &senders,
                &devices,
                &client_ids,
                &times,
                &payloads,
                &events,
                &kinds,
                &references,
                &deleted,
                &attachments,
            ];
            let fence_params: [&(dyn ToSql + Sync); 2] = [&ids, &seqs];
            const INSERT_MESSAGES: &str = "INSERT INTO messages (conversation_id, seq, sender_user_id, sender_device_id, client_msg_id, server_time_ms, payload, event, content_kind, reference_seq, deleted, attachments) \
                 SELECT c, s, u, d, i, t, p, e, k, r, x, CASE WHEN a = '' THEN '{}'::uuid[] ELSE string_to_array(a, ',')::uuid[] END \
                 FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[], $7::bytea[], $8::bytea[], $9::smallint[], $10::bigint[], $11::bool[], $12::text[]) \
                 AS v(c, s, u, d, i, t, p, e, k, r, x, a)";
            const MOVE_FENCES: &str =
                "UPDATE last_seqs SET last_seq = v.l FROM unnest($1::uuid[], $2::bigint[]) AS v(c, l) WHERE last_seqs.conversation_id = v.c";
            Self::prepare_first(tx, &[INSERT_MESSAGES, MOVE_FENCES]).await?;
            tokio::try_join!(
                biased;
                Self::run(tx, INSERT_MESSAGES, &message_params),
                Self::run(tx, MOVE_FENCES, &fence_params)
            )?;
        }
        Ok(())
    }

    /// Applies cursor moves with the same outcomes as one by one, in two round trips: read
    /// the device cursors and lock the member cursors involved, decide every move in order
    /// in memory (each field only grows; a member's receipt-log entry when it grows), then
    /// write the final values and the receipt entries.
    async fn cursor_run(tx: &Tx<'_>, moves: Vec<(usize, CursorMove)>, outcomes: &mut [Option<WriteOutcome>]) -> Result<(), StoreError> {
        use std::collections::BTreeMap;
        if moves.is_empty() {
            return Ok(());
        }
        let device_keys: std::collections::BTreeSet<(DeviceId, ConversationId)> =
            moves.iter().map(|(_, m)| (m.device_id, m.conversation_id)).collect();
        let member_keys: std::collections::BTreeSet<(ConversationId, UserId)> = moves.iter().map(|(_, m)| (m.conversation_id, m.user_id)).collect();
        let (d_dev, d_conv): (Vec<DeviceId>, Vec<ConversationId>) = device_keys.iter().copied().unzip();
        let (m_conv, m_user): (Vec<ConversationId>, Vec<UserId>) = member_keys.iter().copied().unzip();
        let device_params: [&(dyn ToSql + Sync); 2] = [&d_dev, &d_conv];
        let member_params: [&(dyn ToSql + Sync); 2] = [&m_conv, &m_user];
        const READ_CURSORS: &str = "SELECT c.device_id, c.conversation_id, c.delivered, c.read FROM cursors c \
             JOIN unnest($1::uuid[], $2::uuid[]) AS k(d, v) ON c.device_id = k.d AND c.conversation_id = k.v";
        const LOCK_MEMBER_CURSORS: &str = "SELECT m.conversation_id, m.user_id, m.delivered, m.read FROM member_cursors m \
             JOIN unnest($1::uuid[], $2::uuid[]) AS k(v, u) ON m.conversation_id = k.v AND m.user_id = k.u \
             ORDER BY m.conversation_id, m.user_id FOR UPDATE OF m";
        Self::prepare_first(tx, &[READ_CURSORS, LOCK_MEMBER_CURSORS]).await?;
        let (device_rows, member_rows) = tokio::try_join!(
            biased;
            Self::rows(tx, READ_CURSORS, &device_params),
            // Locked in key order, so concurrent batches cannot deadlock on them.
            Self::rows(tx, LOCK_MEMBER_CURSORS, &member_params),
        )?;
        let mut devices: BTreeMap<(DeviceId, ConversationId), (i64, i64)> = BTreeMap::new();
        for r in device_rows {
            devices.insert(
                (get(&r, "cursors", "device_id")?, get(&r, "cursors", "conversation_id")?),
                (get(&r, "cursors", "delivered")?, get(&r, "cursors", "read")?),
            );
        }
        let mut members: BTreeMap<(ConversationId, UserId), (i64, i64)> = BTreeMap::new();
        for r in member_rows {
            members.insert(
                (get(&r, "member_cursors", "conversation_id")?, get(&r, "member_cursors", "user_id")?),
                (get(&r, "member_cursors", "delivered")?, get(&r, "member_cursors", "read")?),
            );
        }
        let mut changed_devices = std::collections::BTreeSet::new();
        let mut changed_members = std::collections::BTreeSet::new();
        let mut receipts: Vec<(ConversationId, UserId, i16, i64, i64)> = Vec::new();
        for (i, m) in &moves {
            let device = devices.entry((m.device_id, m.conversation_id)).or_insert((0, 0));
            let next = (device.0.max(m.delivered), device.1.max(m.read));
            if next != *device {
                *device = next;
                changed_devices.insert((m.device_id, m.conversation_id));
            }
            outcomes[*i] = Some(WriteOutcome::CursorAdvanced(Cursor { delivered: uint(next.0), read: uint(next.1) }));
            let member = members.entry((m.conversation_id, m.user_id)).or_insert((0, 0));
            let grown = (m.delivered > member.0, m.read > member.1);
            if grown.0 {
                member.0 = m.delivered;
                receipts.push((m.conversation_id, m.user_id, 0, m.delivered, m.at_ms));
            }
            if grown.1 {
                member.1 = m.read;
                receipts.push((m.conversation_id, m.user_id, 1, m.read, m.at_ms));
            }
            if grown.0 || grown.1 {
                changed_members.insert((m.conversation_id, m.user_id));
            }
        }
        type Columns = (Vec<Uuid>, Vec<Uuid>, Vec<i64>, Vec<i64>);
        let split = |rows: Vec<(Uuid, Uuid, i64, i64)>| -> Columns {
            let mut out: Columns = Default::default();
            for (a, b, c, d) in rows {
                out.0.push(a);
                out.1.push(b);
                out.2.push(c);
                out.3.push(d);
            }
            out
        };
        let dev = split(changed_devices.iter().map(|k| (k.0.uuid(), k.1.uuid(), devices[k].0, devices[k].1)).collect());
        let mem = split(changed_members.iter().map(|k| (k.0.uuid(), k.1.uuid(), members[k].0, members[k].1)).collect());
        // Every write in key order (as the locks above; the device and member sets are
        // ordered already), so two batches writing the same keys cannot wait on each other
        // in opposite orders.
        receipts.sort_by_key(|r| (r.0, r.1, r.2, r.3));
        let (r_conv, r_user, r_kind, r_seq, r_at) = receipts.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(mut a, mut b, mut c, mut d, mut e), (v, u, k, s, t)| {
                a.push(v);
                b.push(u);
                c.push(k);
                d.push(s);
                e.push(t);
                (a, b, c, d, e)
            },
        );
        let dev_params: [&(dyn ToSql + Sync); 4] = [&dev.0, &dev.1, &dev.2, &dev.3];
        let mem_params: [&(dyn ToSql + Sync); 4] = [&mem.0, &mem.1, &mem.2, &mem.3];
        let receipt_params: [&(dyn ToSql + Sync); 5] = [&r_conv, &r_user, &r_kind, &r_seq, &r_at];
        const UPSERT_CURSORS: &str = "INSERT INTO cursors (device_id, conversation_id, delivered, read) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (device_id, conversation_id) DO UPDATE SET delivered = GREATEST(cursors.delivered, EXCLUDED.delivered), \
             read = GREATEST(cursors.read, EXCLUDED.read)";
        const UPSERT_MEMBER_CURSORS: &str = "INSERT INTO member_cursors (conversation_id, user_id, delivered, read) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET delivered = GREATEST(member_cursors.delivered, EXCLUDED.delivered), \
             read = GREATEST(member_cursors.read, EXCLUDED.read)";
        const INSERT_RECEIPTS: &str = "INSERT INTO receipt_log (conversation_id, user_id, kind, seq, at_ms) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::smallint[], $4::bigint[], $5::bigint[]) ON CONFLICT DO NOTHING";
        // GREATEST again on write: a concurrent batch may have moved a device cursor since
        // the read above (device cursors are not locked; they only need to grow).
        Self::prepare_first(tx, &[UPSERT_CURSORS, UPSERT_MEMBER_CURSORS, INSERT_RECEIPTS]).await?;
        tokio::try_join!(
            biased;
            Self::run(tx, UPSERT_CURSORS, &dev_params),
            Self::run(tx, UPSERT_MEMBER_CURSORS, &mem_params),
            Self::run(tx, INSERT_RECEIPTS, &receipt_params),
        )?;
        Ok(())
    }

    /// Inserts one imported message row, leaving an existing one alone.
    async fn import_message(tx: &Tx<'_>, m: &StoredMessage) -> Result<(), StoreError> {
        let payload: &[u8] = &m.payload;
        let event: Option<&[u8]> = m.event.as_deref();
        let attachments: Vec<Uuid> = m.attachments.iter().map(|a| a.uuid()).collect();
        let sql = "INSERT INTO messages (conversation_id, seq, sender_user_id, sender_device_id, client_msg_id, server_time_ms, payload, event, content_kind, reference_seq, deleted, attachments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING";
        Self::run(
            tx,
            sql,
            &[
                &m.conversation_id,
                &int(m.seq),
                &m.sender_user_id,
                &m.sender_device_id,
                &m.client_msg_id,
                &int(m.server_time_ms),
                &payload,
                &event,
                &content_code(m.kind),
                &int(m.reference_seq),
                &m.deleted,
                &attachments,
            ],
        )
        .await
        .map(drop)
    }

    /// Writes a media record as given (import, creation); an existing one is left alone.
    async fn insert_media(tx: &Tx<'_>, record: &MediaRecord) -> Result<(), StoreError> {
        let digest: Option<Vec<u8>> = record.digest.map(|d| d.to_vec());
        Self::run(
            tx,
            "INSERT INTO media (media_id, owner, length, digest, version, record) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&record.media_id, &record.owner, &int(record.length), &digest, &int(record.version), &Json(record)],
        )
        .await
        .map(drop)
    }

    async fn put_conversation_record(tx: &Tx<'_>, record: &ConversationRecord) -> Result<(), StoreError> {
        let group = record.group.as_ref().map(Json);
        let invite: Option<Vec<u8>> = record.group.as_ref().and_then(|g| g.invite_hash).map(|h| h.to_vec());
        let retention = i32::try_from(record.retention_secs).unwrap_or(i32::MAX);
        Self::run(
            tx,
            "INSERT INTO conversations (conversation_id, kind, members, created_ms, group_state, retention_secs, invite_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (conversation_id) DO UPDATE SET kind = EXCLUDED.kind, members = EXCLUDED.members, \
             group_state = EXCLUDED.group_state, retention_secs = EXCLUDED.retention_secs, invite_hash = EXCLUDED.invite_hash",
            &[&record.conversation_id, &kind_code(record.kind), &record.members, &int(record.created_ms), &group, &retention, &invite],
        )
        .await?;
        Ok(())
    }

    /// What a stored group event changes besides the log: the erased message, the
    /// conversation's record, the new members' conversation lists.
    async fn apply_event(tx: &Tx<'_>, record: &ConversationRecord, joined: &[UserId], tombstone: Option<u64>) -> Result<(), StoreError> {
        if let Some(target) = tombstone {
            // The message and every edit and reaction that refers to it: nothing of a
            // deleted message is served.
            Self::run(
                tx,
                "UPDATE messages SET payload = ''::bytea, deleted = true, attachments = '{}' WHERE conversation_id = $1 AND seq = $2",
                &[&record.conversation_id, &int(target)],
            )
            .await?;
            Self::run(
                tx,
                "UPDATE messages SET payload = ''::bytea, deleted = true, attachments = '{}' \
                 WHERE conversation_id = $1 AND reference_seq = $2 AND content_kind <> 0",
                &[&record.conversation_id, &int(target)],
            )
            .await?;
        }
        Self::put_conversation_record(tx, record).await?;
        if !joined.is_empty() {
            Self::run(
                tx,
                "INSERT INTO user_conversations (user_id, conversation_id) SELECT u, $2 FROM unnest($1::uuid[]) AS u ON CONFLICT DO NOTHING",
                &[&joined, &record.conversation_id],
            )
            .await?;
        }
        Ok(())
    }
}

impl PostgresStore {
    /// Writes one exported record as it is; a record already there is left alone, cursors
    /// and fences keep the larger value (so a resumed copy is harmless).
    async fn import_one(tx: &Tx<'_>, record: Record) -> Result<(), StoreError> {
        match record {
            Record::User(u) => {
                Self::run(
                    tx,
                    "INSERT INTO users (user_id, phone, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&u.user_id, &u.phone, &int(u.created_ms)],
                )
                .await?;
            }
            Record::Device(d) => {
                let hash: &[u8] = &d.token_hash;
                Self::run(
                    tx,
                    "INSERT INTO devices (device_id, user_id, name, is_primary, token_hash, created_ms, revoked_ms)                      VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    &[&d.device_id, &d.user_id, &d.name, &d.primary, &hash, &int(d.created_ms), &d.revoked_ms.map(int)],
                )
                .await?;
            }
            Record::Conversation(c) => Self::put_conversation_record(tx, &c).await?,
            Record::Media(m) => Self::insert_media(tx, &m).await?,
            Record::Membership { user_id, conversation_id } => {
                Self::run(
                    tx,
                    "INSERT INTO user_conversations (user_id, conversation_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&user_id, &conversation_id],
                )
                .await?;
            }
            Record::Message(m) => Self::import_message(tx, &m).await?,
            Record::LastSeq { conversation_id, last_seq } => {
                Self::run(
                    tx,
                    "INSERT INTO last_seqs (conversation_id, last_seq) VALUES ($1, $2) \
                     ON CONFLICT (conversation_id) DO UPDATE SET last_seq = GREATEST(last_seqs.last_seq, EXCLUDED.last_seq)",
                    &[&conversation_id, &int(last_seq)],
                )
                .await?;
            }
            Record::Cursor { device_id, conversation_id, cursor } => {
                Self::run(
                    tx,
                    "INSERT INTO cursors (device_id, conversation_id, delivered, read) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (device_id, conversation_id) DO UPDATE SET delivered = GREATEST(cursors.delivered, EXCLUDED.delivered), \
                     read = GREATEST(cursors.read, EXCLUDED.read)",
                    &[&device_id, &conversation_id, &int(cursor.delivered), &int(cursor.read)],
                )
                .await?;
            }
            Record::MemberCursor { conversation_id, user_id, cursor } => {
                Self::run(
                    tx,
                    "INSERT INTO member_cursors (conversation_id, user_id, delivered, read) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (conversation_id, user_id) DO UPDATE SET delivered = GREATEST(member_cursors.delivered, EXCLUDED.delivered), \
                     read = GREATEST(member_cursors.read, EXCLUDED.read)",
                    &[&conversation_id, &user_id, &int(cursor.delivered), &int(cursor.read)],
                )
                .await?;
            }
            Record::Receipt { conversation_id, user_id, kind, seq, at_ms } => {
                Self::run(
                    tx,
                    "INSERT INTO receipt_log (conversation_id, user_id, kind, seq, at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&conversation_id, &user_id, &i16::from(kind), &int(seq), &int(at_ms)],
                )
                .await?;
            }
            Record::LastSeen { user_id, at_ms } => {
                Self::run(
                    tx,
                    "INSERT INTO last_seen (user_id, at_ms) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET at_ms = GREATEST(last_seen.at_ms, EXCLUDED.at_ms)",
                    &[&user_id, &int(at_ms)],
                )
                .await?;
            }
            Record::ChatState { user_id, conversation_id, state } => {
                let text = json_text("chat_states", &state)?;
                // The later change wins, so an import run twice (or after a change) keeps it.
                Self::run(
                    tx,
                    "INSERT INTO chat_states (user_id, conversation_id, state) VALUES ($1, $2, $3) ON CONFLICT (user_id, conversation_id) DO UPDATE SET state = EXCLUDED.state WHERE (chat_states.state::jsonb->>'changed_ms')::bigint < (EXCLUDED.state::jsonb->>'changed_ms')::bigint",
                    &[&user_id, &conversation_id, &text],
                )
                .await?;
            }
            Record::Status(post) => Self::import_status(tx, &post).await?,
            Record::StatusView { poster, post_id, view } => Self::import_status_view(tx, poster, post_id, &view).await?,
            Record::Profile { user_id, profile } => {
                let text = json_text("profiles", &profile)?;
                Self::run(
                    tx,
                    "INSERT INTO profiles (user_id, profile) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET profile = EXCLUDED.profile",
                    &[&user_id, &text],
                )
                .await?;
            }
            Record::Privacy { user_id, settings } => {
                let text = privacy_json(&settings)?;
                Self::run(
                    tx,
                    "INSERT INTO privacy (user_id, settings) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET settings = EXCLUDED.settings",
                    &[&user_id, &text],
                )
                .await?;
            }
            Record::Block { user_id, target, at_ms } => {
                Self::run(
                    tx,
                    "INSERT INTO blocks (user_id, target, at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&user_id, &target, &int(at_ms)],
                )
                .await?;
            }
            Record::Contact { owner, phone } => {
                Self::run(tx, "INSERT INTO contacts (owner, phone) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&owner, &phone]).await?;
            }
            Record::PushToken { user_id, device_id, token } => {
                Self::run(
                    tx,
                    "INSERT INTO push_tokens (user_id, device_id, platform, token) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&user_id, &device_id, &token.platform, &token.token],
                )
                .await?;
            }
            Record::DeviceKeys(k) => {
                let (curve, ed): (&[u8], &[u8]) = (&k.curve25519, &k.ed25519);
                Self::run(
                    tx,
                    "INSERT INTO device_keys (device_id, user_id, curve25519, ed25519, signature, uploaded_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO NOTHING",
                    &[&k.device_id, &k.user_id, &curve, &ed, &k.signature, &int(k.uploaded_ms)],
                )
                .await?;
            }
            Record::OneTimeKey { device_id, key } => {
                let public: &[u8] = &key.key;
                Self::run(
                    tx,
                    "INSERT INTO one_time_keys (device_id, key_id, public_key, signature) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&device_id, &key.key_id, &public, &key.signature],
                )
                .await?;
            }
            Record::SpentKey { device_id, key_id, claimed_ms } => {
                // Only its id matters now (it is never handed out again): no key material.
                let empty: &[u8] = &[];
                Self::run(
                    tx,
                    "INSERT INTO one_time_keys (device_id, key_id, public_key, signature, claimed_ms) VALUES ($1, $2, $3, $3, $4) \
                     ON CONFLICT (device_id, key_id) DO UPDATE SET claimed_ms = COALESCE(one_time_keys.claimed_ms, EXCLUDED.claimed_ms)",
                    &[&device_id, &key_id, &empty, &int(claimed_ms)],
                )
                .await?;
            }
            Record::FallbackKey { device_id, key } => {
                let public: &[u8] = &key.key;
                Self::run(
                    tx,
                    "INSERT INTO fallback_keys (device_id, key_id, public_key, signature) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&device_id, &key.key_id, &public, &key.signature],
                )
                .await?;
            }
            Record::ToDeviceQueue { device_id, last_position, acked } => {
                Self::run(
                    tx,
                    "INSERT INTO to_device_queues (device_id, last_position, acked) VALUES ($1, $2, $3) ON CONFLICT (device_id) DO UPDATE \
                     SET last_position = GREATEST(to_device_queues.last_position, EXCLUDED.last_position), \
                     acked = GREATEST(to_device_queues.acked, EXCLUDED.acked)",
                    &[&device_id, &int(last_position), &int(acked)],
                )
                .await?;
            }
            Record::ToDeviceEntry { device_id, entry } => {
                Self::run(
                    tx,
                    "INSERT INTO to_device_messages (device_id, position, sender_user_id, sender_device_id, payload, sent_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[&device_id, &int(entry.position), &entry.sender_user, &entry.sender_device, &entry.payload, &int(entry.sent_ms)],
                )
                .await?;
            }
            Record::DeviceListNotice { device_id, user_id, changed_ms } => {
                Self::run(
                    tx,
                    "INSERT INTO device_list_notices (device_id, user_id, changed_ms) VALUES ($1, $2, $3) ON CONFLICT (device_id, user_id) \
                     DO UPDATE SET changed_ms = GREATEST(device_list_notices.changed_ms, EXCLUDED.changed_ms)",
                    &[&device_id, &user_id, &int(changed_ms)],
                )
                .await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(drop)
    }

    async fn put_pending_code(&self, phone: &str, code: PendingCode) -> Result<(), StoreError> {
        let hash: &[u8] = &code.code_hash;
        self.execute(
            "INSERT INTO pending_codes (phone, code_hash, expires_ms, attempts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (phone) DO UPDATE SET code_hash = EXCLUDED.code_hash, expires_ms = EXCLUDED.expires_ms, attempts = EXCLUDED.attempts",
            &[&phone, &hash, &int(code.expires_ms), &i32::try_from(code.attempts).unwrap_or(i32::MAX)],
        )
        .await
        .map(drop)
    }

    async fn pending_code(&self, phone: &str) -> Result<Option<PendingCode>, StoreError> {
        let Some(row) = self.query_opt("SELECT code_hash, expires_ms, attempts FROM pending_codes WHERE phone = $1", &[&phone]).await? else {
            return Ok(None);
        };
        Ok(Some(PendingCode {
            code_hash: hash32("pending_codes", get(&row, "pending_codes", "code_hash")?)?,
            expires_ms: uint(get(&row, "pending_codes", "expires_ms")?),
            attempts: get::<i32>(&row, "pending_codes", "attempts")?.max(0) as u32,
        }))
    }

    async fn delete_pending_code(&self, phone: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM pending_codes WHERE phone = $1", &[&phone]).await.map(drop)
    }

    async fn use_pending_code(&self, phone: &str, guess_hash: [u8; 32], now_ms: u64, max_attempts: u32) -> Result<CodeCheck, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The row lock makes racing verifications of one phone take turns.
        let rows = Self::rows(&tx, "SELECT code_hash, expires_ms, attempts FROM pending_codes WHERE phone = $1 FOR UPDATE", &[&phone]).await?;
        let check = match rows.first() {
            None => CodeCheck::Missing,
            Some(row) => {
                let hash = hash32("pending_codes", get(row, "pending_codes", "code_hash")?)?;
                let expires = uint(get(row, "pending_codes", "expires_ms")?);
                let attempts = get::<i32>(row, "pending_codes", "attempts")?.max(0) as u32 + 1;
                let right = super::code_matches(&hash, &guess_hash);
                if expires < now_ms || right {
                    Self::run(&tx, "DELETE FROM pending_codes WHERE phone = $1", &[&phone]).await?;
                    if right && expires >= now_ms { CodeCheck::Accepted } else { CodeCheck::Missing }
                } else {
                    if attempts >= max_attempts {
                        Self::run(&tx, "DELETE FROM pending_codes WHERE phone = $1", &[&phone]).await?;
                    } else {
                        Self::run(
                            &tx,
                            "UPDATE pending_codes SET attempts = $2 WHERE phone = $1",
                            &[&phone, &i32::try_from(attempts).unwrap_or(i32::MAX)],
                        )
                        .await?;
                    }
                    CodeCheck::Wrong
                }
            }
        };
        tx.commit().await.map_err(pg)?;
        Ok(check)
    }

    async fn get_or_create_user(&self, phone: &str, new_user: UserRecord) -> Result<(UserRecord, bool), StoreError> {
        // Insert-or-nothing, then read: racing registrations of one phone both end with the
        // same user (the unique phone decides which insert wins).
        let inserted = self
            .execute(
                "INSERT INTO users (user_id, phone, created_ms) VALUES ($1, $2, $3) ON CONFLICT (phone) DO NOTHING",
                &[&new_user.user_id, &phone, &int(new_user.created_ms)],
            )
            .await?;
        if inserted == 1 {
            return Ok((UserRecord { phone: phone.to_owned(), ..new_user }, true));
        }
        let row =
            self.query_opt("SELECT user_id, phone, created_ms FROM users WHERE phone = $1", &[&phone]).await?.ok_or(StoreError::NotFound("user"))?;
        Ok((user_from(&row)?, false))
    }

    async fn change_phone(&self, user: UserId, new_phone: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let current = Self::rows(&tx, "SELECT phone FROM users WHERE user_id = $1 FOR UPDATE", &[&user]).await?;
        let current: String = current.first().map(|r| get(r, "users", "phone")).transpose()?.ok_or(StoreError::NotFound("user"))?;
        if current == new_phone {
            return Ok(true);
        }
        // A number another account holds stays theirs, also when its registration races
        // this change (the unique phone refuses the update).
        if !Self::rows(&tx, "SELECT 1 FROM users WHERE phone = $1", &[&new_phone]).await?.is_empty() {
            return Ok(false);
        }
        let statement = tx.prepare_cached("UPDATE users SET phone = $2 WHERE user_id = $1").await.map_err(pg)?;
        match tx.execute(&statement, &[&user, &new_phone]).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => return Ok(false),
            Err(e) => return Err(pg(e)),
        }
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn delete_account_data(&self, user: UserId) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        Self::run(&tx, "UPDATE users SET phone = $2 WHERE user_id = $1", &[&user, &super::deleted_phone(user)]).await?;
        for sql in [
            "DELETE FROM contacts WHERE owner = $1",
            "DELETE FROM chat_states WHERE user_id = $1",
            "DELETE FROM profiles WHERE user_id = $1",
            "DELETE FROM privacy WHERE user_id = $1",
        ] {
            Self::run(&tx, sql, &[&user]).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn create_accounts(&self, accounts: Vec<(UserRecord, DeviceRecord)>) -> Result<usize, StoreError> {
        // One statement for the whole batch: users whose phone is new, then the devices of
        // exactly those users.
        let mut user_ids = Vec::with_capacity(accounts.len());
        let mut phones = Vec::with_capacity(accounts.len());
        let mut user_created = Vec::with_capacity(accounts.len());
        let mut device_ids = Vec::with_capacity(accounts.len());
        let mut names = Vec::with_capacity(accounts.len());
        let mut primaries = Vec::with_capacity(accounts.len());
        let mut hashes = Vec::with_capacity(accounts.len());
        let mut device_created = Vec::with_capacity(accounts.len());
        for (user, device) in &accounts {
            user_ids.push(user.user_id);
            phones.push(user.phone.as_str());
            user_created.push(int(user.created_ms));
            device_ids.push(device.device_id);
            names.push(device.name.as_str());
            primaries.push(device.primary);
            hashes.push(device.token_hash.to_vec());
            device_created.push(int(device.created_ms));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let created = Self::run(
            &tx,
            "WITH new_users AS ( \
                INSERT INTO users (user_id, phone, created_ms) SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[]) \
                ON CONFLICT (phone) DO NOTHING RETURNING user_id) \
             INSERT INTO devices (device_id, user_id, name, is_primary, token_hash, created_ms) \
             SELECT d.device_id, d.user_id, d.name, d.is_primary, d.token_hash, d.created_ms \
             FROM unnest($4::uuid[], $1::uuid[], $5::text[], $6::bool[], $7::bytea[], $8::bigint[]) \
                  AS d(device_id, user_id, name, is_primary, token_hash, created_ms) \
             JOIN new_users USING (user_id)",
            &[&user_ids, &phones, &user_created, &device_ids, &names, &primaries, &hashes, &device_created],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(created as usize)
    }

    async fn user(&self, user_id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.query_opt("SELECT user_id, phone, created_ms FROM users WHERE user_id = $1", &[&user_id]).await?.as_ref().map(user_from).transpose()
    }

    async fn users_by_phone(&self, phones: Vec<String>) -> Result<Vec<(String, UserId)>, StoreError> {
        self.query("SELECT phone, user_id FROM users WHERE phone = ANY($1)", &[&phones])
            .await?
            .iter()
            .map(|r| Ok((get(r, "users", "phone")?, get(r, "users", "user_id")?)))
            .collect()
    }

    async fn known_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.query("SELECT phone FROM contacts WHERE owner = $1 AND phone = ANY($2)", &[&owner, &phones])
            .await?
            .iter()
            .map(|r| get(r, "contacts", "phone"))
            .collect()
    }

    async fn contacts_of(&self, owner: UserId) -> Result<Vec<String>, StoreError> {
        self.query("SELECT phone FROM contacts WHERE owner = $1", &[&owner]).await?.iter().map(|r| get(r, "contacts", "phone")).collect()
    }

    async fn add_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        self.execute("INSERT INTO contacts (owner, phone) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING", &[&owner, &phones]).await.map(drop)
    }

    async fn remove_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError> {
        self.execute("DELETE FROM contacts WHERE owner = $1 AND phone = ANY($2)", &[&owner, &phones]).await.map(drop)
    }

    async fn chat_states(&self, user: UserId) -> Result<Vec<(ConversationId, super::ChatState)>, StoreError> {
        self.query("SELECT conversation_id, state FROM chat_states WHERE user_id = $1", &[&user])
            .await?
            .iter()
            .map(|r| Ok((get(r, "chat_states", "conversation_id")?, chat_state_from(r)?)))
            .collect()
    }

    async fn chat_state(&self, user: UserId, conversation: ConversationId) -> Result<super::ChatState, StoreError> {
        let row = self.query_opt("SELECT state FROM chat_states WHERE user_id = $1 AND conversation_id = $2", &[&user, &conversation]).await?;
        Ok(row.as_ref().map(chat_state_from).transpose()?.unwrap_or_default())
    }

    async fn update_chat_state(
        &self,
        user: UserId,
        conversation: ConversationId,
        update: super::ChatUpdate,
        last_seq: u64,
        now_ms: u64,
    ) -> Result<Result<Option<super::ChatState>, super::InboxError>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // A lock per user for the transaction serialises a user's concurrent changes, so
        // the pin limit holds (an advisory lock: it needs no row to exist).
        let key = i64::from_be_bytes(user.as_bytes()[..8].try_into().unwrap_or_default()) ^ CHAT_STATE_LOCK;
        Self::run(&tx, "SELECT pg_advisory_xact_lock($1)", &[&key]).await?;
        let (mut current, mut pinned_others) = (super::ChatState::default(), 0);
        for row in Self::rows(&tx, "SELECT conversation_id, state FROM chat_states WHERE user_id = $1", &[&user]).await? {
            let id: ConversationId = get(&row, "chat_states", "conversation_id")?;
            let state = chat_state_from(&row)?;
            if id == conversation {
                current = state;
            } else if state.pinned_ms != 0 {
                pinned_others += 1;
            }
        }
        let outcome = crate::cores::inbox::apply(current, &update, pinned_others, last_seq, now_ms);
        if let Ok(Some(next)) = &outcome {
            let text = json_text("chat_states", next)?;
            Self::run(
                &tx,
                "INSERT INTO chat_states (user_id, conversation_id, state) VALUES ($1, $2, $3) ON CONFLICT (user_id, conversation_id) DO UPDATE SET state = EXCLUDED.state",
                &[&user, &conversation, &text],
            )
            .await?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(outcome)
    }

    async fn profile(&self, user: UserId) -> Result<Option<super::Profile>, StoreError> {
        match self.query_opt("SELECT profile FROM profiles WHERE user_id = $1", &[&user]).await? {
            Some(row) => {
                let text: String = get(&row, "profiles", "profile")?;
                serde_json::from_str(&text).map(Some).map_err(|e| corrupt("profiles", e.to_string()))
            }
            None => Ok(None),
        }
    }

    async fn set_profile(&self, user: UserId, profile: super::Profile) -> Result<(), StoreError> {
        let text = json_text("profiles", &profile)?;
        self.execute(
            "INSERT INTO profiles (user_id, profile) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET profile = EXCLUDED.profile",
            &[&user, &text],
        )
        .await
        .map(drop)
    }

    async fn put_status(&self, post: super::StatusPost, _now_ms: u64) -> Result<super::StatusPut, StoreError> {
        self.put_status_row(&post).await
    }

    async fn status_post(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<Option<super::StatusPost>, StoreError> {
        self.live_status(poster, post_id, now_ms).await
    }

    async fn status_posts(&self, posters: Vec<UserId>, now_ms: u64) -> Result<Vec<super::StatusPost>, StoreError> {
        self.live_statuses(&posters, now_ms).await
    }

    async fn delete_status(&self, poster: UserId, post_id: super::StatusId, now_ms: u64) -> Result<bool, StoreError> {
        self.delete_status_row(poster, post_id, now_ms).await
    }

    async fn mark_status_seen(&self, poster: UserId, post_id: super::StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
        self.mark_seen(poster, post_id, viewer, now_ms).await
    }

    async fn status_views(&self, poster: UserId, post_id: super::StatusId) -> Result<Vec<super::StatusView>, StoreError> {
        self.views_of(poster, post_id).await
    }

    async fn put_pairing(&self, p: PairingRecord) -> Result<(), StoreError> {
        let (code, claim): (&[u8], &[u8]) = (&p.code_hash, &p.claim_hash);
        self.execute(
            "INSERT INTO pairings (code_hash, claim_hash, device_name, expires_ms, approved_by, approved_device) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (code_hash) DO UPDATE SET claim_hash = EXCLUDED.claim_hash, device_name = EXCLUDED.device_name, \
             expires_ms = EXCLUDED.expires_ms, approved_by = EXCLUDED.approved_by, approved_device = EXCLUDED.approved_device",
            &[&code, &claim, &p.device_name, &int(p.expires_ms), &p.approved_by, &p.approved_device],
        )
        .await
        .map(drop)
    }

    async fn approve_pairing(&self, code_hash: [u8; 32], user: UserId, device: DeviceId, now_ms: u64) -> Result<PairingApproval, StoreError> {
        let code: &[u8] = &code_hash;
        // One statement decides (a racing approval finds approved_by set).
        let approved = self
            .query_opt(
                "UPDATE pairings SET approved_by = $2, approved_device = $4 WHERE code_hash = $1 AND approved_by IS NULL AND expires_ms >= $3 \
                 RETURNING claim_hash, device_name, expires_ms",
                &[&code, &user, &int(now_ms), &device],
            )
            .await?;
        if let Some(row) = approved {
            return Ok(PairingApproval::Approved(PairingRecord {
                code_hash,
                claim_hash: hash32("pairings", get(&row, "pairings", "claim_hash")?)?,
                device_name: get(&row, "pairings", "device_name")?,
                expires_ms: uint(get(&row, "pairings", "expires_ms")?),
                approved_by: Some(user),
                approved_device: Some(device),
            }));
        }
        let live = self.query_opt("SELECT 1 FROM pairings WHERE code_hash = $1 AND expires_ms >= $2", &[&code, &int(now_ms)]).await?;
        Ok(if live.is_some() { PairingApproval::AlreadyApproved } else { PairingApproval::Missing })
    }

    async fn claim_pairing(&self, code_hash: [u8; 32], claim_hash: [u8; 32], now_ms: u64) -> Result<PairingClaim, StoreError> {
        let code: &[u8] = &code_hash;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The row lock makes racing claims take turns: the first deletes it.
        let rows = Self::rows(
            &tx,
            "SELECT claim_hash, device_name, expires_ms, approved_by, approved_device FROM pairings WHERE code_hash = $1 FOR UPDATE",
            &[&code],
        )
        .await?;
        let outcome = match rows.first() {
            None => PairingClaim::Missing,
            Some(row) => {
                let stored = hash32("pairings", get(row, "pairings", "claim_hash")?)?;
                let expires = uint(get(row, "pairings", "expires_ms")?);
                let approved: Option<UserId> = get(row, "pairings", "approved_by")?;
                let approver: Option<DeviceId> = get(row, "pairings", "approved_device")?;
                if expires < now_ms || !super::code_matches(&stored, &claim_hash) {
                    PairingClaim::Missing
                } else if let (Some(user), Some(approver)) = (approved, approver) {
                    Self::run(&tx, "DELETE FROM pairings WHERE code_hash = $1", &[&code]).await?;
                    PairingClaim::Claimed { user, device_name: get(row, "pairings", "device_name")?, approver }
                } else {
                    PairingClaim::Pending
                }
            }
        };
        tx.commit().await.map_err(pg)?;
        Ok(outcome)
    }

    async fn privacy(&self, user: UserId) -> Result<PrivacySettings, StoreError> {
        match self.query_opt("SELECT settings FROM privacy WHERE user_id = $1", &[&user]).await? {
            Some(row) => {
                let text: String = get(&row, "privacy", "settings")?;
                serde_json::from_str(&text).map_err(|e| corrupt("privacy", e.to_string()))
            }
            None => Ok(PrivacySettings::default()),
        }
    }

    async fn set_privacy(&self, user: UserId, settings: PrivacySettings) -> Result<(), StoreError> {
        let text = privacy_json(&settings)?;
        self.execute(
            "INSERT INTO privacy (user_id, settings) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET settings = EXCLUDED.settings",
            &[&user, &text],
        )
        .await
        .map(drop)
    }

    async fn is_blocked(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        Ok(self.query_opt("SELECT 1 FROM blocks WHERE user_id = $1 AND target = $2", &[&user, &target]).await?.is_some())
    }

    async fn blocks_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.query("SELECT target FROM blocks WHERE user_id = $1", &[&user]).await?.iter().map(|r| get(r, "blocks", "target")).collect()
    }

    async fn blockers_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.query("SELECT user_id FROM blocks WHERE target = $1", &[&user]).await?.iter().map(|r| get(r, "blocks", "user_id")).collect()
    }

    async fn set_blocked(&self, user: UserId, target: UserId, blocked: bool, at_ms: u64) -> Result<bool, StoreError> {
        let changed = if blocked {
            self.execute("INSERT INTO blocks (user_id, target, at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&user, &target, &int(at_ms)])
                .await?
        } else {
            self.execute("DELETE FROM blocks WHERE user_id = $1 AND target = $2", &[&user, &target]).await?
        };
        Ok(changed > 0)
    }

    async fn add_device(&self, device: DeviceRecord, max_devices: usize) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The user's row lock serialises concurrent links of one user, so the limit holds.
        Self::run(&tx, "SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", &[&device.user_id]).await?;
        // A retry of a link that did commit (its answer was lost) succeeds again.
        let existing = Self::rows(&tx, "SELECT 1 FROM devices WHERE device_id = $1 AND user_id = $2", &[&device.device_id, &device.user_id]).await?;
        if !existing.is_empty() {
            return tx.commit().await.map_err(pg);
        }
        let live = Self::rows(&tx, "SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_ms IS NULL", &[&device.user_id]).await?;
        let live: i64 = live.first().map(|r| get(r, "devices", "count")).transpose()?.unwrap_or(0);
        if live >= int(max_devices as u64) {
            return Err(StoreError::TooManyDevices { max: max_devices });
        }
        let hash: &[u8] = &device.token_hash;
        Self::run(
            &tx,
            "INSERT INTO devices (device_id, user_id, name, is_primary, token_hash, created_ms, revoked_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&device.device_id, &device.user_id, &device.name, &device.primary, &hash, &int(device.created_ms), &device.revoked_ms.map(int)],
        )
        .await?;
        tx.commit().await.map_err(pg)
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        let hash: &[u8] = &token_hash;
        self.query_opt(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"), &[&hash]).await?.as_ref().map(device_from).transpose()
    }

    async fn device(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.query_opt(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"), &[&device_id])
            .await?
            .as_ref()
            .map(device_from)
            .transpose()
    }

    async fn devices_of(&self, user_id: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY created_ms, device_id"), &[&user_id])
            .await?
            .iter()
            .map(device_from)
            .collect()
    }

    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId, at_ms: u64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // COALESCE keeps the first revocation time when a revoke is retried.
        let changed = Self::run(
            &tx,
            "UPDATE devices SET revoked_ms = COALESCE(revoked_ms, $3) WHERE device_id = $1 AND user_id = $2",
            &[&device_id, &user_id, &int(at_ms)],
        )
        .await?;
        if changed == 1 {
            // Same transaction: a revoked device's keys are never claimed.
            Self::run(&tx, "DELETE FROM device_keys WHERE device_id = $1", &[&device_id]).await?;
            Self::remove_key_material(&tx, device_id).await?;
            // The queue's counter row stays: positions are never reused.
            Self::run(&tx, "DELETE FROM to_device_messages WHERE device_id = $1", &[&device_id]).await?;
            Self::run(&tx, "DELETE FROM device_list_notices WHERE device_id = $1", &[&device_id]).await?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(changed == 1)
    }

    async fn create_conversation(&self, conversation: ConversationRecord) -> Result<ConversationRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let group = conversation.group.as_ref().map(Json);
        let invite: Option<Vec<u8>> = conversation.group.as_ref().and_then(|g| g.invite_hash).map(|h| h.to_vec());
        let retention = i32::try_from(conversation.retention_secs).unwrap_or(i32::MAX);
        let inserted = Self::run(
            &tx,
            "INSERT INTO conversations (conversation_id, kind, members, created_ms, group_state, retention_secs, invite_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (conversation_id) DO NOTHING",
            &[
                &conversation.conversation_id,
                &kind_code(conversation.kind),
                &conversation.members,
                &int(conversation.created_ms),
                &group,
                &retention,
                &invite,
            ],
        )
        .await?;
        let stored = if inserted == 1 {
            Self::run(
                &tx,
                "INSERT INTO user_conversations (user_id, conversation_id) SELECT u, $2 FROM unnest($1::uuid[]) AS u ON CONFLICT DO NOTHING",
                &[&conversation.members, &conversation.conversation_id],
            )
            .await?;
            conversation
        } else {
            let rows = Self::rows(
                &tx,
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = $1"),
                &[&conversation.conversation_id],
            )
            .await?;
            conversation_from(rows.first().ok_or(StoreError::NotFound("conversation"))?)?
        };
        tx.commit().await.map_err(pg)?;
        Ok(stored)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        self.query_opt(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = $1"), &[&id])
            .await?
            .as_ref()
            .map(conversation_from)
            .transpose()
    }

    async fn conversation_by_invite(&self, hash: [u8; 32]) -> Result<Option<ConversationId>, StoreError> {
        let hash: &[u8] = &hash;
        self.query_opt("SELECT conversation_id FROM conversations WHERE invite_hash = $1", &[&hash])
            .await?
            .map(|r| get(&r, "conversations", "conversation_id"))
            .transpose()
    }

    async fn conversations_of(&self, user_id: UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.query("SELECT conversation_id FROM user_conversations WHERE user_id = $1 ORDER BY conversation_id", &[&user_id])
            .await?
            .iter()
            .map(|r| get(r, "user_conversations", "conversation_id"))
            .collect()
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut fences = Self::lock_fences(&tx, &ops).await?;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; ops.len()];
        // Plain appends are applied together, a handful of statements per run instead of
        // three per message; cursors and last-seen times do not touch what appends read,
        // so they do not end a run. A group event does (it moves the same fence).
        let mut run: Vec<(usize, StoredMessage)> = Vec::new();
        // Cursor moves touch only cursor tables: all of them are applied together too.
        let mut cursors: Vec<(usize, CursorMove)> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                WriteOp::Append(m) => run.push((i, m)),
                WriteOp::AppendEvent { message, record, joined, tombstone } => {
                    // The event is appended by the same rules as a message (after the
                    // messages before it), then its side effects follow if it was stored.
                    Self::append_run(&tx, std::mem::take(&mut run), &mut fences, &mut outcomes).await?;
                    Self::append_run(&tx, vec![(i, message)], &mut fences, &mut outcomes).await?;
                    if outcomes[i] == Some(WriteOutcome::Appended) {
                        Self::apply_event(&tx, &record, &joined, tombstone).await?;
                    }
                }
                WriteOp::AdvanceCursor { user_id, device_id, conversation_id, delivered, read, at_ms } => cursors
                    .push((i, CursorMove { user_id, device_id, conversation_id, delivered: int(delivered), read: int(read), at_ms: int(at_ms) })),
                WriteOp::LastSeen { user_id, at_ms } => {
                    Self::run(
                        &tx,
                        "INSERT INTO last_seen (user_id, at_ms) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET at_ms = GREATEST(last_seen.at_ms, EXCLUDED.at_ms)",
                        &[&user_id, &int(at_ms)],
                    )
                    .await?;
                    outcomes[i] = Some(WriteOutcome::Recorded);
                }
            }
        }
        Self::append_run(&tx, run, &mut fences, &mut outcomes).await?;
        Self::cursor_run(&tx, cursors, &mut outcomes).await?;
        // Dropping the transaction on an error above rolls it back: all or nothing.
        tx.commit().await.map_err(pg)?;
        outcomes.into_iter().map(|o| o.ok_or_else(|| StoreError::Backend("an op of the batch was not applied".into()))).collect()
    }

    async fn last_seq(&self, id: ConversationId) -> Result<u64, StoreError> {
        Ok(self
            .query_opt("SELECT last_seq FROM last_seqs WHERE conversation_id = $1", &[&id])
            .await?
            .map(|r| get::<i64>(&r, "last_seqs", "last_seq"))
            .transpose()?
            .map(uint)
            .unwrap_or(0))
    }

    async fn find_by_client_id(&self, id: ConversationId, sender: UserId, client_msg_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.query_opt(
            "SELECT seq, server_time_ms FROM messages WHERE conversation_id = $1 AND sender_user_id = $2 AND client_msg_id = $3",
            &[&id, &sender, &client_msg_id],
        )
        .await?
        .map(|r| Ok((uint(get(&r, "messages", "seq")?), uint(get(&r, "messages", "server_time_ms")?))))
        .transpose()
    }

    async fn messages_after(&self, id: ConversationId, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
            &[&id, &int(after), &int(limit as u64)],
        )
        .await?
        .iter()
        .map(message_from)
        .collect()
    }

    async fn messages_before(&self, id: ConversationId, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let before = if before == 0 { i64::MAX } else { int(before) };
        self.query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"),
            &[&id, &before, &int(limit as u64)],
        )
        .await?
        .iter()
        .map(message_from)
        .collect()
    }

    async fn member_cursor(&self, id: ConversationId, user: UserId) -> Result<MemberCursor, StoreError> {
        let row = self.query_opt("SELECT delivered, read FROM member_cursors WHERE conversation_id = $1 AND user_id = $2", &[&id, &user]).await?;
        match row {
            Some(r) => Ok(MemberCursor { delivered: uint(get(&r, "member_cursors", "delivered")?), read: uint(get(&r, "member_cursors", "read")?) }),
            None => Ok(MemberCursor::default()),
        }
    }

    async fn member_cursors(&self, id: ConversationId) -> Result<Vec<(UserId, MemberCursor)>, StoreError> {
        self.query("SELECT user_id, delivered, read FROM member_cursors WHERE conversation_id = $1 ORDER BY user_id", &[&id])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    get(r, "member_cursors", "user_id")?,
                    MemberCursor { delivered: uint(get(r, "member_cursors", "delivered")?), read: uint(get(r, "member_cursors", "read")?) },
                ))
            })
            .collect()
    }

    async fn receipt_times(&self, id: ConversationId, user: UserId, seq: u64) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let mut times = [None, None];
        for (kind, slot) in times.iter_mut().enumerate() {
            *slot = self
                .query_opt(
                    "SELECT at_ms FROM receipt_log WHERE conversation_id = $1 AND user_id = $2 AND kind = $3 AND seq >= $4 ORDER BY seq LIMIT 1",
                    &[&id, &user, &(kind as i16), &int(seq)],
                )
                .await?
                .map(|r| get::<i64>(&r, "receipt_log", "at_ms"))
                .transpose()?
                .map(uint);
        }
        Ok((times[0], times[1]))
    }

    async fn set_push_token(&self, user_id: UserId, device_id: DeviceId, token: Option<PushToken>) -> Result<(), StoreError> {
        match token {
            Some(t) => self
                .execute(
                    "INSERT INTO push_tokens (user_id, device_id, platform, token) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, device_id) DO UPDATE SET platform = EXCLUDED.platform, token = EXCLUDED.token",
                    &[&user_id, &device_id, &t.platform, &t.token],
                )
                .await
                .map(drop),
            None => self.execute("DELETE FROM push_tokens WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id]).await.map(drop),
        }
    }

    async fn push_tokens_of(&self, user_id: UserId) -> Result<Vec<(DeviceId, PushToken)>, StoreError> {
        self.query("SELECT device_id, platform, token FROM push_tokens WHERE user_id = $1 ORDER BY device_id", &[&user_id])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    get(r, "push_tokens", "device_id")?,
                    PushToken { platform: get(r, "push_tokens", "platform")?, token: get(r, "push_tokens", "token")? },
                ))
            })
            .collect()
    }

    async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM to_device_sends WHERE ctid IN (SELECT ctid FROM to_device_sends WHERE sent_ms < $1 LIMIT $2)",
            &[&int(now_ms.saturating_sub(super::to_device::SEND_IDS_KEPT_MS)), &int(limit as u64)],
        )
        .await?;
        self.execute(
            "DELETE FROM pairings WHERE ctid IN (SELECT ctid FROM pairings WHERE expires_ms < $1 LIMIT $2)",
            &[&int(now_ms), &int(limit as u64)],
        )
        .await?;
        self.purge_statuses(now_ms, limit).await?;
        // Idle rate buckets are full again: forget them.
        self.execute(
            "DELETE FROM rate_buckets WHERE ctid IN (SELECT ctid FROM rate_buckets WHERE at_ms < $1 LIMIT $2)",
            &[&int(now_ms.saturating_sub(super::RATE_BUCKET_IDLE_MS)), &int(limit as u64)],
        )
        .await?;
        // Events are kept (they carry the group's history); the dedup key goes with the
        // message, as in the embedded store.
        self.execute(
            "WITH doomed AS ( \
                SELECT m.conversation_id, m.seq FROM messages m JOIN conversations c USING (conversation_id) \
                WHERE c.retention_secs > 0 AND m.event IS NULL AND m.server_time_ms < $1 - c.retention_secs::bigint * 1000 \
                ORDER BY m.conversation_id, m.seq LIMIT $2) \
             DELETE FROM messages m USING doomed d WHERE m.conversation_id = d.conversation_id AND m.seq = d.seq",
            &[&int(now_ms), &int(limit as u64)],
        )
        .await
    }

    async fn create_media(&self, record: MediaRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        Self::insert_media(&tx, &record).await?;
        tx.commit().await.map_err(pg)
    }

    async fn media(&self, id: MediaId) -> Result<Option<MediaRecord>, StoreError> {
        self.query_opt("SELECT record FROM media WHERE media_id = $1", &[&id]).await?.as_ref().map(media_from).transpose()
    }

    async fn update_media(&self, record: MediaRecord) -> Result<bool, StoreError> {
        let digest: Option<Vec<u8>> = record.digest.map(|d| d.to_vec());
        let n = self
            .execute(
                "UPDATE media SET digest = $2, version = $3, record = $4 WHERE media_id = $1 AND version = $5 AND owner = $6",
                &[&record.media_id, &digest, &int(record.version), &Json(&record), &int(record.version.saturating_sub(1)), &record.owner],
            )
            .await?;
        Ok(n == 1)
    }

    async fn delete_media(&self, id: MediaId, version: u64) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM media WHERE media_id = $1 AND version = $2", &[&id, &int(version)]).await? == 1)
    }

    async fn media_refs(&self, id: MediaId, limit: usize) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        self.query(
            "SELECT conversation_id, seq FROM messages WHERE cardinality(attachments) > 0 AND attachments @> ARRAY[$1::uuid] \
             ORDER BY conversation_id, seq LIMIT $2",
            &[&id, &int(limit as u64)],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, "messages", "conversation_id")?, uint(get(r, "messages", "seq")?))))
        .collect()
    }

    async fn media_usage(&self, owner: UserId) -> Result<u64, StoreError> {
        let row = self.query_opt("SELECT COALESCE(sum(length), 0)::bigint AS total FROM media WHERE owner = $1", &[&owner]).await?;
        Ok(row.map(|r| get::<i64>(&r, "media", "total")).transpose()?.map(uint).unwrap_or(0))
    }

    async fn take_token(&self, key: &str, rule: BucketRule, now_ms: u64) -> Result<Taken, StoreError> {
        let key = checked_bucket_key(key)?;
        let mut client = self.client().await?;
        // A bucket never used has no row: two nodes may both try to create it, and the
        // loser (no row inserted) starts again and finds the winner's row to lock.
        for _ in 0..3 {
            let tx = client.transaction().await.map_err(pg)?;
            let row = tx.query_opt("SELECT tokens_milli, at_ms FROM rate_buckets WHERE key = $1 FOR UPDATE", &[&key]).await.map_err(pg)?;
            let current = row
                .map(|r| -> Result<BucketState, StoreError> {
                    Ok(BucketState { tokens_milli: uint(get(&r, "rate_buckets", "tokens_milli")?), at_ms: uint(get(&r, "rate_buckets", "at_ms")?) })
                })
                .transpose()?;
            let next = match token_bucket::take(current, rule, now_ms) {
                Decision::Take(next) => next,
                Decision::Refuse { retry_after_ms } => return Ok(Taken::No { retry_after_ms }),
            };
            let (tokens, at) = (int(next.tokens_milli), int(next.at_ms));
            let written = if current.is_some() {
                tx.execute("UPDATE rate_buckets SET tokens_milli = $2, at_ms = $3 WHERE key = $1", &[&key, &tokens, &at]).await.map_err(pg)?
            } else {
                tx.execute(
                    "INSERT INTO rate_buckets (key, tokens_milli, at_ms) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
                    &[&key, &tokens, &at],
                )
                .await
                .map_err(pg)?
            };
            tx.commit().await.map_err(pg)?;
            if written == 1 {
                return Ok(Taken::Yes);
            }
        }
        Err(StoreError::Backend(format!("postgres: rate bucket {key:?} kept changing under three attempts")))
    }

    async fn media_page(&self, after: Option<MediaId>, limit: usize) -> Result<Vec<MediaRecord>, StoreError> {
        let after = after.unwrap_or(MediaId::nil());
        // The nil id is never issued (ids are random v4), so "after nil" is "from the start".
        self.query("SELECT record FROM media WHERE media_id > $1 ORDER BY media_id LIMIT $2", &[&after, &int(limit as u64)])
            .await?
            .iter()
            .map(media_from)
            .collect()
    }

    async fn media_with_digest(&self, digest: [u8; 32], limit: usize) -> Result<Vec<MediaId>, StoreError> {
        let digest: &[u8] = &digest;
        self.query("SELECT media_id FROM media WHERE digest = $1 ORDER BY media_id LIMIT $2", &[&digest, &int(limit as u64)])
            .await?
            .iter()
            .map(|r| get(r, "media", "media_id"))
            .collect()
    }

    async fn put_device_keys(&self, keys: DeviceKeys) -> Result<KeysStored, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // FOR SHARE: a concurrent revocation (an UPDATE of this row) waits for us, or we
        // for it and then see it revoked.
        let device = Self::rows(&tx, "SELECT user_id, revoked_ms FROM devices WHERE device_id = $1 FOR SHARE", &[&keys.device_id]).await?;
        let live = match device.first() {
            Some(row) => {
                get::<Uuid>(row, "devices", "user_id")? == keys.user_id.uuid() && get::<Option<i64>>(row, "devices", "revoked_ms")?.is_none()
            }
            None => false,
        };
        if !live {
            return Err(StoreError::NotFound("device"));
        }
        let current = Self::rows(
            &tx,
            "SELECT device_id, user_id, curve25519, ed25519, signature, uploaded_ms FROM device_keys WHERE device_id = $1 FOR UPDATE",
            &[&keys.device_id],
        )
        .await?;
        let current = current.first().map(device_keys_from).transpose()?;
        let stored = match current {
            Some(c) if c.same_keys(&keys) => KeysStored::Unchanged,
            current => {
                Self::run(
                    &tx,
                    "INSERT INTO device_keys (device_id, user_id, curve25519, ed25519, signature, uploaded_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO UPDATE SET curve25519 = EXCLUDED.curve25519, ed25519 = EXCLUDED.ed25519, \
                     signature = EXCLUDED.signature, uploaded_ms = EXCLUDED.uploaded_ms",
                    &[&keys.device_id, &keys.user_id, &keys.curve25519.as_slice(), &keys.ed25519.as_slice(), &keys.signature, &int(keys.uploaded_ms)],
                )
                .await?;
                if current.is_some() {
                    Self::remove_key_material(&tx, keys.device_id).await?;
                    KeysStored::Replaced
                } else {
                    KeysStored::New
                }
            }
        };
        tx.commit().await.map_err(pg)?;
        Ok(stored)
    }

    async fn device_keys_of(&self, user_id: UserId) -> Result<Vec<DeviceKeys>, StoreError> {
        self.query(
            "SELECT device_id, user_id, curve25519, ed25519, signature, uploaded_ms FROM device_keys WHERE user_id = $1 ORDER BY uploaded_ms, device_id",
            &[&user_id],
        )
        .await?
        .iter()
        .map(device_keys_from)
        .collect()
    }

    async fn add_one_time_keys(&self, device_id: DeviceId, keys: Vec<OneTimeKey>, fallback: Option<OneTimeKey>) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        if !keys.is_empty() {
            let ids: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
            let publics: Vec<&[u8]> = keys.iter().map(|k| k.key.as_slice()).collect();
            let signatures: Vec<&[u8]> = keys.iter().map(|k| k.signature.as_slice()).collect();
            // A key id already present (unclaimed, or spent: the row stays when claimed) is
            // skipped, so a retried upload never puts a handed-out key back.
            Self::run(
                &tx,
                "INSERT INTO one_time_keys (device_id, key_id, public_key, signature) \
                 SELECT $1, k, p, s FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS u(k, p, s) ON CONFLICT DO NOTHING",
                &[&device_id, &ids, &publics, &signatures],
            )
            .await?;
        }
        if let Some(f) = &fallback {
            Self::run(
                &tx,
                "INSERT INTO fallback_keys (device_id, key_id, public_key, signature) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
                &[&device_id, &f.key_id, &f.key.as_slice(), &f.signature],
            )
            .await?;
        }
        let count = Self::count_unclaimed(&tx, device_id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(count)
    }

    async fn one_time_key_count(&self, device_id: DeviceId) -> Result<u64, StoreError> {
        let row = self.query_opt("SELECT count(*) AS n FROM one_time_keys WHERE device_id = $1 AND claimed_ms IS NULL", &[&device_id]).await?;
        Ok(row.map(|r| get::<i64>(&r, "one_time_keys", "n")).transpose()?.map_or(0, uint))
    }

    async fn claim_one_time_key(&self, device_id: DeviceId, at_ms: u64) -> Result<Option<ClaimedKey>, StoreError> {
        // One statement: the subquery locks the first unclaimed key (skipping keys other
        // claims hold locked, so concurrent claims take different keys instead of queueing
        // on one), the update marks it claimed. Under READ COMMITTED a row another claim
        // committed in between is re-checked against `claimed_ms IS NULL` and skipped, so
        // no key is returned twice.
        let claimed = self
            .query_opt(
                "UPDATE one_time_keys SET claimed_ms = $2 WHERE device_id = $1 AND claimed_ms IS NULL AND key_id = ( \
                 SELECT key_id FROM one_time_keys WHERE device_id = $1 AND claimed_ms IS NULL ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING key_id, public_key, signature",
                &[&device_id, &int(at_ms)],
            )
            .await?;
        if let Some(row) = claimed {
            return Ok(Some(ClaimedKey { key: one_time_key_from("one_time_keys", &row)?, fallback: false }));
        }
        let fallback = self.query_opt("SELECT key_id, public_key, signature FROM fallback_keys WHERE device_id = $1", &[&device_id]).await?;
        fallback.map(|row| Ok(ClaimedKey { key: one_time_key_from("fallback_keys", &row)?, fallback: true })).transpose()
    }

    async fn enqueue_to_device(&self, send: ToDeviceSend, bounds: QueueBounds) -> Result<ToDeviceStored, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The id first: a concurrent retry waits on this row's lock and then sees it.
        let fresh = Self::rows(
            &tx,
            "INSERT INTO to_device_sends (sender_device_id, client_id, sent_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (sender_device_id, client_id) DO UPDATE SET sent_ms = EXCLUDED.sent_ms WHERE to_device_sends.sent_ms < $4 \
             RETURNING sent_ms",
            &[&send.sender_device, &send.client_id, &int(send.sent_ms), &int(send.sent_ms.saturating_sub(super::to_device::SEND_IDS_KEPT_MS))],
        )
        .await?;
        if fresh.is_empty() {
            return Ok(ToDeviceStored::Duplicate);
        }
        // Targets in device id order, so that two sends lock shared queues in one order.
        let mut targets = send.targets;
        targets.sort_by_key(|t| t.device);
        let devices: Vec<DeviceId> = targets.iter().map(|t| t.device).collect();
        // Live devices, locked against a concurrent revocation until commit.
        let live: HashMap<DeviceId, UserId> = Self::rows(
            &tx,
            "SELECT device_id, user_id FROM devices WHERE device_id = ANY($1) AND revoked_ms IS NULL ORDER BY device_id FOR SHARE",
            &[&devices],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, "devices", "device_id")?, get(r, "devices", "user_id")?)))
        .collect::<Result<_, StoreError>>()?;
        if let Some(t) = targets.iter().find(|t| live.get(&t.device) != Some(&t.user)) {
            return Ok(ToDeviceStored::UnknownDevice { user: t.user, device: t.device });
        }
        // One statement allocates every target's next position (the rows lock in the
        // order given).
        let positions: HashMap<DeviceId, (i64, i64)> = Self::rows(
            &tx,
            "INSERT INTO to_device_queues (device_id, last_position, acked) SELECT d, 1, 0 FROM unnest($1::uuid[]) AS d \
             ON CONFLICT (device_id) DO UPDATE SET last_position = to_device_queues.last_position + 1 \
             RETURNING device_id, last_position, acked",
            &[&devices],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, "to_device_queues", "device_id")?, (get(r, "to_device_queues", "last_position")?, get(r, "to_device_queues", "acked")?))))
        .collect::<Result<_, StoreError>>()?;
        let mut stored = Vec::with_capacity(targets.len());
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(targets.len());
        let mut at: Vec<i64> = Vec::with_capacity(targets.len());
        for t in &targets {
            let (last, acked) = positions.get(&t.device).copied().ok_or_else(|| corrupt("to_device_queues", "a target got no position"))?;
            // `last` is already this send's position: the queue held one entry fewer.
            let queued = uint(last).saturating_sub(uint(acked)).saturating_sub(1);
            if queued >= bounds.per_device {
                // Dropping the transaction rolls back every allocation and the id.
                return Ok(ToDeviceStored::QueueFull { device: t.device });
            }
            if crate::cores::to_device::sender_bound_applies(send.sender_user, t.user, queued, &bounds) {
                // The queue's row is locked (allocated above) until commit: no other send
                // to this device can add an entry between this count and the insert.
                let from_sender = Self::rows(
                    &tx,
                    "SELECT count(*) AS n FROM to_device_messages WHERE device_id = $1 AND sender_user_id = $2",
                    &[&t.device, &send.sender_user],
                )
                .await?;
                let n: i64 = from_sender.first().map(|r| get(r, "to_device_messages", "n")).transpose()?.unwrap_or(0);
                if uint(n) >= bounds.per_sender {
                    return Ok(ToDeviceStored::SenderFull { device: t.device });
                }
            }
            stored.push((t.user, t.device, uint(last)));
            payloads.push(&t.payload);
            at.push(last);
        }
        Self::run(
            &tx,
            "INSERT INTO to_device_messages (device_id, position, sender_user_id, sender_device_id, payload, sent_ms) \
             SELECT d, p, $3, $4, b, $5 FROM unnest($1::uuid[], $2::bigint[], $6::bytea[]) AS t(d, p, b)",
            &[&devices, &at, &send.sender_user, &send.sender_device, &int(send.sent_ms), &payloads],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(ToDeviceStored::Stored(stored))
    }

    async fn to_device_after(&self, device_id: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError> {
        let acked = self.query_opt("SELECT acked FROM to_device_queues WHERE device_id = $1", &[&device_id]).await?;
        let acked = acked.map(|r| get::<i64>(&r, "to_device_queues", "acked")).transpose()?.map_or(0, uint);
        let entries = self
            .query(
                "SELECT position, sender_user_id, sender_device_id, payload, sent_ms FROM to_device_messages \
                 WHERE device_id = $1 AND position > $2 ORDER BY position LIMIT $3",
                &[&device_id, &int(after), &int(limit as u64)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ToDeviceEntry {
                    position: uint(get(r, "to_device_messages", "position")?),
                    sender_user: get(r, "to_device_messages", "sender_user_id")?,
                    sender_device: get(r, "to_device_messages", "sender_device_id")?,
                    payload: get(r, "to_device_messages", "payload")?,
                    sent_ms: uint(get(r, "to_device_messages", "sent_ms")?),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(ToDeviceQueue { acked, entries })
    }

    async fn ack_to_device(&self, device_id: DeviceId, up_to: u64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Never past what was given out; never backwards.
        let moved = Self::rows(
            &tx,
            "UPDATE to_device_queues SET acked = LEAST($2, last_position) WHERE device_id = $1 AND acked < LEAST($2, last_position) RETURNING acked",
            &[&device_id, &int(up_to)],
        )
        .await?;
        if let Some(row) = moved.first() {
            let acked: i64 = get(row, "to_device_queues", "acked")?;
            Self::run(&tx, "DELETE FROM to_device_messages WHERE device_id = $1 AND position <= $2", &[&device_id, &acked]).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn note_device_list_change(&self, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO device_list_notices (device_id, user_id, changed_ms) SELECT d, $2, $3 FROM unnest($1::uuid[]) AS d \
             ON CONFLICT (device_id, user_id) DO UPDATE SET changed_ms = GREATEST(device_list_notices.changed_ms, EXCLUDED.changed_ms)",
            &[&devices, &changed, &int(at_ms)],
        )
        .await
        .map(drop)
    }

    async fn device_list_changes(&self, device_id: DeviceId) -> Result<Vec<UserId>, StoreError> {
        self.query("SELECT user_id FROM device_list_notices WHERE device_id = $1 ORDER BY user_id", &[&device_id])
            .await?
            .iter()
            .map(|r| get(r, "device_list_notices", "user_id"))
            .collect()
    }

    async fn ack_device_list_changes(&self, device_id: DeviceId, users: Vec<UserId>) -> Result<(), StoreError> {
        self.execute("DELETE FROM device_list_notices WHERE device_id = $1 AND user_id = ANY($2)", &[&device_id, &users]).await.map(drop)
    }

    async fn cursors_of(&self, device_id: DeviceId) -> Result<Vec<(ConversationId, Cursor)>, StoreError> {
        self.query(
            "SELECT conversation_id, delivered, read FROM cursors WHERE device_id = $1 AND (delivered > 0 OR read > 0) ORDER BY conversation_id",
            &[&device_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                get(r, "cursors", "conversation_id")?,
                Cursor { delivered: uint(get(r, "cursors", "delivered")?), read: uint(get(r, "cursors", "read")?) },
            ))
        })
        .collect()
    }

    async fn last_seen(&self, user_id: UserId) -> Result<Option<u64>, StoreError> {
        self.query_opt("SELECT at_ms FROM last_seen WHERE user_id = $1", &[&user_id])
            .await?
            .map(|r| get::<i64>(&r, "last_seen", "at_ms"))
            .transpose()
            .map(|v| v.map(uint))
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        for record in records {
            Self::import_one(&tx, record).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn count(&self, section: Section) -> Result<u64, StoreError> {
        let table = match section {
            Section::Users => "users",
            Section::Devices => "devices",
            Section::Conversations => "conversations",
            Section::Memberships => "user_conversations",
            Section::Messages => "messages",
            Section::LastSeqs => "last_seqs WHERE last_seq > 0",
            Section::Cursors => "cursors",
            Section::MemberCursors => "member_cursors",
            Section::Receipts => "receipt_log",
            Section::LastSeen => "last_seen",
            Section::PushTokens => "push_tokens",
            Section::Media => "media",
            Section::DeviceKeys => "device_keys",
            Section::OneTimeKeys => "one_time_keys",
            Section::FallbackKeys => "fallback_keys",
            Section::ToDeviceQueues => "to_device_queues",
            Section::ToDeviceEntries => "to_device_messages",
            Section::DeviceListNotices => "device_list_notices",
            Section::Contacts => "contacts",
            Section::Privacy => "privacy",
            Section::Blocks => "blocks",
            Section::Profiles => "profiles",
            Section::ChatStates => "chat_states",
            Section::Statuses => "status_posts",
            Section::StatusViews => "status_views",
        };
        let row = self.query_opt(&format!("SELECT count(*) FROM {table}"), &[]).await?;
        Ok(row.map(|r| get::<i64>(&r, "count", "count")).transpose()?.map(uint).unwrap_or(0))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every COMMIT above was durable when it returned: nothing is pending.
        Ok(())
    }
}
