//! Durable state: accounts, devices, conversations, the per-conversation message log and
//! per-device cursors, behind one contract ([`Store`]) that every backend implements.
//!
//! The model is Scylla-first (see ARCHITECTURE.md, "Store contract"): a message is stored
//! once in its conversation's log under `(conversation_id, seq)`; a device tracks each
//! conversation by a delivered and a read cursor; idempotency is a dedup key
//! `(conversation_id, sender_user_id, client_msg_id) → seq` written in the same
//! transaction as the message. The store knows nothing of sockets, frames or actors.

mod columns;
pub mod embedded;
mod embedded_contacts;
mod embedded_e2ee_copy;
mod embedded_inbox;
mod embedded_messages;
mod embedded_pairing;
mod embedded_privacy;
mod embedded_profiles;
mod embedded_snapshot;
mod embedded_status;
mod embedded_to_device;
mod embedded_writer;
pub mod keys;
pub mod media;
pub mod pg_tls;
pub mod postgres;
pub mod scylla;
pub mod shared_records;
pub mod spec;
pub mod status;
pub mod to_device;
pub mod transfer;
pub mod wal;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use postgres::{PostgresOptions, PostgresStore};
pub use scylla::{ScyllaOptions, ScyllaStore};
pub use spec::StoreSpec;
pub use transfer::{Record, Section};

pub use crate::cores::token_bucket::{BucketRule, Taken};
pub use crate::ids::{ConversationId, DeviceId, StatusId, UserId};
pub use keys::{ClaimedKey, DeviceKeys, KeysStored, OneTimeKey};
pub use media::{MediaId, MediaKind, MediaPart, MediaRecord};
pub use status::{StatusAudience, StatusPost, StatusPut, StatusView};
pub use to_device::{QueueBounds, ToDeviceEntry, ToDeviceQueue, ToDeviceSend, ToDeviceStored, ToDeviceTarget};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, timeout): the operation may or may not have
    /// taken effect; callers must not report success.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored record did not decode: the data is corrupt or from an unknown version.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table holding the record.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The user already has the maximum number of devices.
    #[error("user already has {max} devices")]
    TooManyDevices {
        /// The limit.
        max: usize,
    },
    /// No such record.
    #[error("{0} not found")]
    NotFound(&'static str),
}

impl StoreError {
    fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Stable id.
    pub user_id: UserId,
    /// E.164 phone number of the account ([`deleted_phone`] once it was deleted).
    pub phone: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

impl UserRecord {
    /// True once the account was deleted (its phone is [`deleted_phone`]).
    pub fn is_deleted(&self) -> bool {
        self.phone == deleted_phone(self.user_id)
    }
}

/// A device of a user. The bearer token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Stable id.
    pub device_id: DeviceId,
    /// Owner.
    pub user_id: UserId,
    /// Human-readable name chosen at registration or linking.
    pub name: String,
    /// True for the device that registered the phone number (the primary).
    pub primary: bool,
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Set when the device was revoked; a revoked device can never authenticate again.
    pub revoked_ms: Option<u64>,
}

/// A pending one-time registration code, stored hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    /// SHA-256 of the code.
    pub code_hash: [u8; 32],
    /// When it stops being valid, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Failed verification attempts so far.
    pub attempts: u32,
}

pub use crate::cores::privacy::PrivacySettings;

pub use crate::cores::inbox::{ChatState, ChatUpdate, InboxError};

/// Whether a guessed code's hash equals the stored one, in time independent of where
/// they differ (the `subtle` crate's constant-time equality): the comparison leaks
/// nothing a timing attacker could use to learn the hash byte by byte. Every backend's
/// `use_pending_code` decides with this.
pub fn code_matches(stored: &[u8; 32], guess: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(stored.ct_eq(guess))
}

/// A user's profile: what contacts and conversation members see of the user (within
/// the user's privacy settings for photo and about).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Profile {
    /// Display name (1 to 25 characters once set; empty until then).
    pub name: String,
    /// The "about" line (at most 139 characters).
    pub about: String,
    /// The photo, as public-image renditions (`POST /v1/media/public`).
    pub photo: Option<ProfilePhoto>,
    /// When it last changed, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// A profile photo: the renditions of one public image (metadata stripped by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfilePhoto {
    /// The small rendition (96 px), for lists.
    #[schema(value_type = String, format = Uuid)]
    pub small: MediaId,
    /// The large rendition (640 px).
    #[schema(value_type = String, format = Uuid)]
    pub large: MediaId,
}

/// A new device waiting to be linked to an account (device pairing): it showed a code
/// (as a QR code) that a primary device approves; then the new device, proving it is the
/// one that asked with its claim secret, receives its own token. Secrets stored hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRecord {
    /// SHA-256 of the code shown (the record's key).
    pub code_hash: [u8; 32],
    /// SHA-256 of the new device's claim secret.
    pub claim_hash: [u8; 32],
    /// The name the new device asked for.
    pub device_name: String,
    /// When it stops being valid, ms since the Unix epoch.
    pub expires_ms: u64,
    /// The account whose primary approved it, once approved.
    pub approved_by: Option<UserId>,
    /// The primary device that approved it (it must still be live and primary when the
    /// new device claims its token).
    pub approved_device: Option<DeviceId>,
}

/// What approving a pairing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingApproval {
    /// Approved now for the given user: the record as approved.
    Approved(PairingRecord),
    /// Already approved (by this or another account): nothing changed.
    AlreadyApproved,
    /// No pending pairing has this code (never, used, or expired).
    Missing,
}

/// What a new device's claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingClaim {
    /// Approved, and now used up: link a device named `device_name` to `user`.
    Claimed {
        /// The approving account.
        user: UserId,
        /// The device's name.
        device_name: String,
        /// The primary device that approved it.
        approver: DeviceId,
    },
    /// Not approved yet.
    Pending,
    /// No such pairing, expired, or a wrong claim secret (not told apart).
    Missing,
}

/// What checking a one-time code found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// The code was right and is now used up.
    Accepted,
    /// The code was wrong; one attempt was counted.
    Wrong,
    /// No usable code: none was issued, it expired, it was used, or too many guesses.
    Missing,
}

/// Whether a conversation is 1:1 or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationKind {
    /// Exactly two members; the id is derived from the pair (see [`direct_conversation_id`]).
    Direct,
    /// A group with roles and settings ([`GroupState`]).
    Group,
}

/// A conversation and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// Stable id.
    pub conversation_id: ConversationId,
    /// 1:1 or group.
    pub kind: ConversationKind,
    /// Current member users, sorted.
    pub members: Vec<UserId>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Roles, settings and membership history of a group (None for 1:1). Boxed: a 1:1
    /// record is then a third of the size, and every device session keeps one per
    /// conversation it has seen (the encoding is the same as unboxed).
    pub group: Option<Box<GroupState>>,
    /// Disappearing messages: messages older than this are deleted (0 = kept).
    pub retention_secs: u32,
}

/// The state of a group as of its latest event. It changes only together with the event
/// that describes the change (same transaction), so the record and the log never disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Subject (title).
    pub subject: String,
    /// Description.
    pub description: String,
    /// Admins (a subset of the members), sorted.
    pub admins: Vec<UserId>,
    /// For each current member, the seq of the event that made them a member.
    pub joined: Vec<(UserId, u64)>,
    /// Past stints of members who left or were removed: (user, joined seq, left seq).
    pub former: Vec<(UserId, u64, u64)>,
    /// Only admins may send messages.
    pub admins_only_send: bool,
    /// Only admins may change subject and description.
    pub admins_only_info: bool,
    /// SHA-256 of the current invite link token, if one is active.
    pub invite_hash: Option<[u8; 32]>,
}

impl ConversationRecord {
    /// The record of the 1:1 conversation of `a` and `b` (id from
    /// [`direct_conversation_id`], members sorted), created at `created_ms`.
    pub fn direct(a: UserId, b: UserId, created_ms: u64) -> Self {
        let mut members = vec![a, b];
        members.sort();
        members.dedup();
        Self { conversation_id: direct_conversation_id(a, b), kind: ConversationKind::Direct, members, created_ms, group: None, retention_secs: 0 }
    }

    /// True if a message stored at `time_ms` has expired by `now_ms` (ms since the epoch)
    /// under this conversation's retention: its time plus the retention has passed.
    /// "Expired" is a rule every read and every check applies (catch-up, history, message
    /// info, edits, reactions, deletes), not an effect of the purge sweep, which only
    /// reclaims the space later. Events never expire (they carry the group's history):
    /// callers ask only about messages.
    pub fn expired(&self, time_ms: u64, now_ms: u64) -> bool {
        is_expired(time_ms, self.retention_secs, now_ms)
    }

    /// True if `user` is a current member.
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }

    /// The seqs `user` may see: from the event that made them a member (groups) to the
    /// event that removed them, if they are a former member. None if they never were one.
    pub fn visible_range(&self, user: UserId) -> Option<(u64, u64)> {
        match &self.group {
            None => self.is_member(user).then_some((1, u64::MAX)),
            Some(g) => {
                if let Some((_, joined)) = g.joined.iter().find(|(u, _)| *u == user) {
                    return Some((*joined, u64::MAX));
                }
                g.former.iter().rev().find(|(u, _, _)| *u == user).map(|(_, j, l)| (*j, *l))
            }
        }
    }

    /// True if `user` is an admin of this group.
    pub fn is_admin(&self, user: UserId) -> bool {
        self.group.as_ref().is_some_and(|g| g.admins.binary_search(&user).is_ok())
    }
}

/// One message of a conversation log. The payload is opaque ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Position in the conversation log, from 1, without gaps.
    pub seq: u64,
    /// Sending user.
    pub sender_user_id: UserId,
    /// Sending device.
    pub sender_device_id: DeviceId,
    /// Client-chosen idempotency key.
    pub client_msg_id: String,
    /// When the server sequenced it, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// Opaque content (empty for events and deleted messages).
    pub payload: Bytes,
    /// A server-generated event, encoded by the protocol layer (opaque here).
    pub event: Option<Bytes>,
    /// Ordinary, edit or reaction.
    pub kind: ContentKind,
    /// For edits and reactions: the seq of their target.
    pub reference_seq: u64,
    /// Deleted for everyone: the payload was erased.
    pub deleted: bool,
    /// Media the message declares (`Send.attachments`): members who can see this seq may
    /// download them, and they are kept while the message is. Stored in the same
    /// transaction as the message; a deleted message references nothing.
    pub attachments: Vec<MediaId>,
}

/// What a stored message is to clients (the content itself stays opaque).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentKind {
    /// An ordinary message.
    #[default]
    Normal,
    /// A new version of the message at `reference_seq`.
    Edit,
    /// A reaction to the message at `reference_seq`.
    Reaction,
}

/// Where to reach a device that is not connected (an FCM/APNs token, opaque here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushToken {
    /// Which push service the token belongs to ("fcm", "apns", "webpush", ...).
    pub platform: String,
    /// The token itself.
    pub token: String,
}

/// A device's position in one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Highest seq the device acknowledged as received.
    pub delivered: u64,
    /// Highest seq the user read on the device.
    pub read: u64,
}

/// A member's position in a conversation: the furthest any of their devices got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCursor {
    /// Highest seq delivered to any of the member's devices.
    pub delivered: u64,
    /// Highest seq read on any of the member's devices.
    pub read: u64,
}

/// One write in a group-committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Append a message to its conversation log, unless its dedup key exists or its seq is
    /// not exactly one more than the conversation's last seq.
    Append(StoredMessage),
    /// Append a group event and store the group's new record in the same transaction
    /// (same checks as `Append`); `joined` users get the conversation in their list.
    AppendEvent {
        /// The event, as a log entry.
        message: StoredMessage,
        /// The conversation as of this event.
        record: Box<ConversationRecord>,
        /// Users who became members with this event.
        joined: Vec<UserId>,
        /// A message of the same conversation to erase (delete for everyone).
        tombstone: Option<u64>,
    },
    /// Move a device's cursors forward (each field only ever grows).
    AdvanceCursor {
        /// Owner of the device (member-level cursors and receipt times are kept per user).
        user_id: UserId,
        /// Device.
        device_id: DeviceId,
        /// Conversation.
        conversation_id: ConversationId,
        /// New delivered cursor (ignored if lower than the stored one).
        delivered: u64,
        /// New read cursor (ignored if lower than the stored one).
        read: u64,
        /// When, ms since the epoch (receipt times for "message info").
        at_ms: u64,
    },
    /// Record when a user was last connected; the stored time only grows (the later of
    /// the stored and the given time is kept), so nodes that each saw the user leave may
    /// all write it, in any order.
    LastSeen {
        /// User.
        user_id: UserId,
        /// ms since the Unix epoch.
        at_ms: u64,
    },
}

/// What one [`WriteOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The message is now durable at its seq.
    Appended,
    /// The dedup key existed: nothing was stored; the original seq and time are returned.
    Duplicate {
        /// Original seq.
        seq: u64,
        /// Original time.
        server_time_ms: u64,
    },
    /// The seq is not the successor of the last stored one (a second sequencer, or an
    /// earlier write of the same sequencer failed): nothing was stored. Logs never have gaps.
    SeqConflict,
    /// The cursor is now at least what was asked.
    CursorAdvanced(Cursor),
    /// Last-seen recorded.
    Recorded,
}

/// The durable-state contract. Every method is atomic. Writes that return `Ok` are
/// durable (on disk, fsynced, or replicated per the backend's consistency level) before
/// they return. A write that returns `Err` may or may not have taken effect, and may be
/// retried: every write is idempotent (appends by dedup key, cursors by max, creations
/// by natural key).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is ("embedded", "postgres", "scylla"), for health and metrics.
    fn backend(&self) -> &'static str;
    /// A cheap round trip to the backend: Ok if it answers now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores the hash of a one-time code for a phone number, replacing any earlier one.
    async fn put_pending_code(&self, phone: &str, code: PendingCode) -> Result<(), StoreError>;
    /// Reads the pending code of a phone number.
    async fn pending_code(&self, phone: &str) -> Result<Option<PendingCode>, StoreError>;
    /// Deletes the pending code of a phone number (used, expired or too many attempts).
    async fn delete_pending_code(&self, phone: &str) -> Result<(), StoreError>;
    /// Checks a guess against the phone's pending code, atomically: the right code is
    /// consumed (deleted) and accepted once, even when verifications race; a wrong guess
    /// counts one attempt and the code is deleted at `max_attempts`; an expired code is
    /// deleted and reported missing.
    async fn use_pending_code(&self, phone: &str, guess_hash: [u8; 32], now_ms: u64, max_attempts: u32) -> Result<CodeCheck, StoreError>;

    /// Returns the user registered with this phone, creating it if there is none.
    /// `new_user` is the id and time used if it is created. Returns (user, created).
    async fn get_or_create_user(&self, phone: &str, new_user: UserRecord) -> Result<(UserRecord, bool), StoreError>;
    /// Creates many accounts, each with its primary device, in one transaction (bulk
    /// provisioning for benchmarks and migrations). Phones that already exist are skipped;
    /// returns how many were created.
    async fn create_accounts(&self, accounts: Vec<(UserRecord, DeviceRecord)>) -> Result<usize, StoreError>;
    /// Reads a user.
    async fn user(&self, user_id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Moves a user to another phone number (E.164), atomically: the new number must not
    /// belong to another account (false, nothing changed); the old one is released (it
    /// can register a new account). The same number again changes nothing (true).
    /// `NotFound("user")` for an unknown user.
    async fn change_phone(&self, user: UserId, new_phone: &str) -> Result<bool, StoreError>;
    /// Account deletion, the user's own data: the phone number is released (the record
    /// keeps the id and creation time, its phone becomes [`deleted_phone`]), and the
    /// contact list, chat states, profile and privacy settings are deleted, in one
    /// transaction (ScyllaDB: one statement after another, each idempotent). Devices,
    /// keys, blocks and push tokens are removed by their own methods; messages stay in
    /// their conversations under the conversations' retention. Idempotent.
    async fn delete_account_data(&self, user: UserId) -> Result<(), StoreError>;
    /// The users registered with any of `phones` (E.164), as (phone, user), in no
    /// particular order; phones without an account are absent. Contact discovery.
    async fn users_by_phone(&self, phones: Vec<String>) -> Result<Vec<(String, UserId)>, StoreError>;

    /// Which of `phones` (E.164) are already in `owner`'s contacts (the numbers the
    /// owner's devices submitted to contact discovery, kept so that re-checks are free and
    /// so that "my contacts" privacy settings can be decided).
    async fn known_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<Vec<String>, StoreError>;
    /// Every number (E.164) in `owner`'s contacts, in no particular order: one owner's
    /// list (one index range; one partition, paged, on ScyllaDB). A Status feed walks the
    /// viewer's own address book with it.
    async fn contacts_of(&self, owner: UserId) -> Result<Vec<String>, StoreError>;
    /// Adds `phones` to `owner`'s contacts; ones already there are left alone.
    async fn add_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError>;
    /// Removes `phones` from `owner`'s contacts; ones not there are ignored.
    async fn remove_contacts(&self, owner: UserId, phones: Vec<String>) -> Result<(), StoreError>;

    /// A user's profile, if ever set.
    async fn profile(&self, user: UserId) -> Result<Option<Profile>, StoreError>;
    /// Replaces a user's profile.
    async fn set_profile(&self, user: UserId, profile: Profile) -> Result<(), StoreError>;

    /// Stores a status post unless its poster already has one with its id (live, or
    /// expired and not deleted yet): then nothing is stored and the stored one comes back
    /// (a retried post, or a clash the caller refuses). `now_ms` is the time of the write
    /// (ScyllaDB: the row's TTL runs from it to an hour past `expires_ms`; there the check
    /// is a compare-and-set, `IF NOT EXISTS`).
    async fn put_status(&self, post: StatusPost, now_ms: u64) -> Result<StatusPut, StoreError>;
    /// A poster's post, if it is live at `now_ms` (an expired one is never returned, purged
    /// or not).
    async fn status_post(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<Option<StatusPost>, StoreError>;
    /// The posts of each of `posters` that are live at `now_ms`, in no particular order. A
    /// poster's posts are one key range (ScyllaDB: one partition, read per poster, a chunk
    /// of posters at a time, concurrently; PostgreSQL: one query for all); the posting
    /// limit keeps each poster's short.
    async fn status_posts(&self, posters: Vec<UserId>, now_ms: u64) -> Result<Vec<StatusPost>, StoreError>;
    /// Deletes a poster's post and every view of it (one transaction; ScyllaDB: the post's
    /// row, then its views' partition). Returns whether a post live at `now_ms` was
    /// deleted (an expired one is deleted too but reported absent: no read could see it).
    async fn delete_status(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<bool, StoreError>;
    /// Records that `viewer` saw a post at `now_ms`, if the post is live then; the first
    /// time is kept (marking it again changes nothing). Returns whether the post is live
    /// (and so the view recorded, now or before). Atomic with the post's deletion on redb
    /// and PostgreSQL (a view never outlives its post); on ScyllaDB a read of the post and
    /// of the view, then a write with the post's TTL (two marks racing may keep the later
    /// of two close times; a mark racing a deletion leaves a view that its TTL removes).
    async fn mark_status_seen(&self, poster: UserId, post_id: StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError>;
    /// Every view of a post, in no particular order (callers ask only about live posts).
    async fn status_views(&self, poster: UserId, post_id: StatusId) -> Result<Vec<StatusView>, StoreError>;

    /// Stores a pairing request (replacing one with the same code hash).
    async fn put_pairing(&self, pairing: PairingRecord) -> Result<(), StoreError>;
    /// Approves the pending pairing whose code hashes to `code_hash` for `user` (by its
    /// primary `device`), if it has not expired at `now_ms`; racing approvals: one wins,
    /// the others see `AlreadyApproved`.
    async fn approve_pairing(&self, code_hash: [u8; 32], user: UserId, device: DeviceId, now_ms: u64) -> Result<PairingApproval, StoreError>;
    /// The new device's claim: with the right claim secret (hash compared in constant
    /// time), an approved, unexpired pairing is deleted and returned once, even when
    /// claims race.
    async fn claim_pairing(&self, code_hash: [u8; 32], claim_hash: [u8; 32], now_ms: u64) -> Result<PairingClaim, StoreError>;

    /// A user's own state of each conversation they ever changed one of (conversation
    /// list: muted, archived, pinned, cleared), in no particular order.
    async fn chat_states(&self, user: UserId) -> Result<Vec<(ConversationId, ChatState)>, StoreError>;
    /// A user's state of one conversation (the default if never changed).
    async fn chat_state(&self, user: UserId, conversation: ConversationId) -> Result<ChatState, StoreError>;
    /// Applies `update` to the user's state of `conversation` by
    /// [`crate::cores::inbox::apply`] at `now_ms` (`last_seq`: the last seq the user may
    /// see of it), atomically with the count of the user's other pinned conversations
    /// (a redb write transaction; a PostgreSQL transaction holding a per-user advisory lock; on
    /// ScyllaDB a compare-and-set of the entry, the pin count read just before: devices pinning different conversations at the same moment can pass the limit there). Returns
    /// the new state, None if nothing changed, or the rule that refused it.
    async fn update_chat_state(
        &self,
        user: UserId,
        conversation: ConversationId,
        update: ChatUpdate,
        last_seq: u64,
        now_ms: u64,
    ) -> Result<Result<Option<ChatState>, InboxError>, StoreError>;

    /// A user's privacy settings (the defaults if never set).
    async fn privacy(&self, user: UserId) -> Result<PrivacySettings, StoreError>;
    /// Replaces a user's privacy settings.
    async fn set_privacy(&self, user: UserId, settings: PrivacySettings) -> Result<(), StoreError>;
    /// Whether `user` blocked `target`.
    async fn is_blocked(&self, user: UserId, target: UserId) -> Result<bool, StoreError>;
    /// Whom `user` blocked, in no particular order.
    async fn blocks_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;
    /// Who blocked `user`, in no particular order.
    async fn blockers_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;
    /// Sets whether `user` blocks `target` (at `at_ms`); returns whether that changed
    /// anything (blocking twice, or unblocking someone not blocked, does not).
    async fn set_blocked(&self, user: UserId, target: UserId, blocked: bool, at_ms: u64) -> Result<bool, StoreError>;

    /// Adds a device to its user unless the user already has `max_devices` live ones.
    async fn add_device(&self, device: DeviceRecord, max_devices: usize) -> Result<(), StoreError>;
    /// Finds the device whose token hashes to `token_hash` (revoked ones included).
    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError>;
    /// Reads a device.
    async fn device(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// Every device of a user, revoked ones included, oldest first.
    async fn devices_of(&self, user_id: UserId) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Marks a device revoked and removes its keys from the key directory (identity,
    /// one-time and fallback keys), its to-device queue and its device-list notices, in
    /// the same transaction. Returns false if it does not belong to the user.
    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId, at_ms: u64) -> Result<bool, StoreError>;

    /// Creates a conversation unless one with the same id exists; returns the stored one.
    async fn create_conversation(&self, conversation: ConversationRecord) -> Result<ConversationRecord, StoreError>;
    /// Reads a conversation.
    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError>;
    /// Reads a conversation as a shared record, for readers that keep it (a device
    /// session's view). A backend may hand every reader of an unchanged record the same
    /// allocation, decoded once (the embedded store does: a reconnect storm of 10,000
    /// members of 1,000-member groups decoded 10,000 copies of ~2,000 ids each).
    async fn conversation_shared(&self, id: ConversationId) -> Result<Option<std::sync::Arc<ConversationRecord>>, StoreError> {
        Ok(self.conversation(id).await?.map(std::sync::Arc::new))
    }
    /// The group whose invite token hashes to `hash`, if the invite is active.
    async fn conversation_by_invite(&self, hash: [u8; 32]) -> Result<Option<ConversationId>, StoreError>;
    /// Ids of every conversation a user is or was a member of.
    async fn conversations_of(&self, user_id: UserId) -> Result<Vec<ConversationId>, StoreError>;

    /// Applies a batch of writes in one transaction (group commit): all or nothing.
    /// Outcomes are in the order of `ops`.
    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError>;
    /// Highest seq stored for a conversation (0 if empty).
    async fn last_seq(&self, id: ConversationId) -> Result<u64, StoreError>;
    /// The seq and time stored under a dedup key, if any.
    async fn find_by_client_id(&self, id: ConversationId, sender: UserId, client_msg_id: &str) -> Result<Option<(u64, u64)>, StoreError>;
    /// Up to `limit` messages with seq > `after`, oldest first (catch-up).
    async fn messages_after(&self, id: ConversationId, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError>;
    /// Up to `limit` messages with seq < `before` (0 = no bound), newest first (history).
    async fn messages_before(&self, id: ConversationId, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError>;

    /// Every member-level cursor of a conversation.
    async fn member_cursors(&self, id: ConversationId) -> Result<Vec<(UserId, MemberCursor)>, StoreError>;
    /// One member's cursor in a conversation (zeros if none).
    async fn member_cursor(&self, id: ConversationId, user: UserId) -> Result<MemberCursor, StoreError>;
    /// When `user` first had the message at `seq` delivered and read (ms), if they have.
    async fn receipt_times(&self, id: ConversationId, user: UserId, seq: u64) -> Result<(Option<u64>, Option<u64>), StoreError>;

    /// Sets (or with `None` removes) a device's push token.
    async fn set_push_token(&self, user_id: UserId, device_id: DeviceId, token: Option<PushToken>) -> Result<(), StoreError>;
    /// Every device of a user that has a push token.
    async fn push_tokens_of(&self, user_id: UserId) -> Result<Vec<(DeviceId, PushToken)>, StoreError>;

    /// Deletes messages older than their conversation's retention (events are kept), at
    /// most `limit` of them; returns how many were deleted. Also forgets to-device client
    /// ids older than `to_device::SEND_IDS_KEPT_MS`, rate buckets idle for
    /// [`RATE_BUCKET_IDLE_MS`], expired pairings, and (at most `limit`) status posts
    /// expired at `now_ms` with their views (none of these counted).
    async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError>;

    /// Creates a media record (an upload starts); a record with the same id is left alone.
    async fn create_media(&self, record: MediaRecord) -> Result<(), StoreError>;
    /// Reads a media record.
    async fn media(&self, id: MediaId) -> Result<Option<MediaRecord>, StoreError>;
    /// Replaces a media record if the stored one's version is `record.version - 1`
    /// (compare-and-set); false if it changed meanwhile or is gone.
    async fn update_media(&self, record: MediaRecord) -> Result<bool, StoreError>;
    /// Deletes a media record if its stored version is `version`; false otherwise.
    async fn delete_media(&self, id: MediaId, version: u64) -> Result<bool, StoreError>;
    /// Up to `limit` messages `(conversation, seq)` that declare this media and are not
    /// deleted (purged and deleted-for-everyone messages reference nothing).
    async fn media_refs(&self, id: MediaId, limit: usize) -> Result<Vec<(ConversationId, u64)>, StoreError>;
    /// Bytes counted against a user's quota: the declared length of every record they own.
    async fn media_usage(&self, owner: UserId) -> Result<u64, StoreError>;
    /// Up to `limit` media records with ids after `after`, in id order (the sweep's walk).
    async fn media_page(&self, after: Option<MediaId>, limit: usize) -> Result<Vec<MediaRecord>, StoreError>;
    /// Up to `limit` records whose completed blob has this digest (content addressing:
    /// the blob is deleted only when none is left).
    async fn media_with_digest(&self, digest: [u8; 32], limit: usize) -> Result<Vec<MediaId>, StoreError>;

    /// Takes one token from the rate bucket `key` (e.g. `media-create/<user id>`, at most
    /// 200 bytes) under `rule` at `now_ms`, atomically on every backend (a redb write
    /// transaction, a PostgreSQL row lock, a ScyllaDB compare-and-set loop), so every node
    /// of a cluster shares one budget per key. A key never used is a full bucket.
    async fn take_token(&self, key: &str, rule: BucketRule, now_ms: u64) -> Result<Taken, StoreError>;

    /// Stores a device's identity keys (key directory, docs/e2ee.md). The same keys again
    /// change nothing; other keys replace them and remove the device's one-time and
    /// fallback keys in the same transaction. Refused (`NotFound("device")`) for a device
    /// that does not exist or is revoked.
    async fn put_device_keys(&self, keys: DeviceKeys) -> Result<KeysStored, StoreError>;
    /// The identity keys of every device of a user that has published them (revoked
    /// devices have none: revocation removes them).
    async fn device_keys_of(&self, user_id: UserId) -> Result<Vec<DeviceKeys>, StoreError>;
    /// Adds one-time keys and (if given) replaces the fallback key of a device. A key id
    /// the device already used (unclaimed or spent) is skipped, so a retried upload
    /// changes nothing. Returns how many unclaimed one-time keys the device has now.
    async fn add_one_time_keys(&self, device_id: DeviceId, keys: Vec<OneTimeKey>, fallback: Option<OneTimeKey>) -> Result<u64, StoreError>;
    /// How many unclaimed one-time keys a device has.
    async fn one_time_key_count(&self, device_id: DeviceId) -> Result<u64, StoreError>;
    /// Claims one of the device's one-time keys, atomically: each key is handed out at
    /// most once, whatever races (other callers, other nodes). With none left, the
    /// fallback key (`fallback: true`); with neither, None.
    async fn claim_one_time_key(&self, device_id: DeviceId, at_ms: u64) -> Result<Option<ClaimedKey>, StoreError>;

    /// Stores a to-device send (docs/e2ee.md), all or nothing, in one transaction: a
    /// client id the sending device used within `to_device::SEND_IDS_KEPT_MS` stores
    /// nothing (`Duplicate`); so does a target that is not a live device of the named user
    /// (`UnknownDevice`), whose queue already holds `bounds.per_device` unacknowledged
    /// entries (`QueueFull`), or that already holds `bounds.per_sender` entries from the
    /// sender's user when that is another user (`SenderFull`). Otherwise each target's
    /// entry gets the next position of its queue. (ScyllaDB has no transaction across
    /// partitions: there a send is checked whole first, then queued device by device, and
    /// the per-sender count is read before the writes; see its module doc.)
    async fn enqueue_to_device(&self, send: ToDeviceSend, bounds: QueueBounds) -> Result<ToDeviceStored, StoreError>;
    /// Up to `limit` entries of a device's queue after position `after`, in order, with the
    /// highest position the device has acknowledged.
    async fn to_device_after(&self, device_id: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError>;
    /// Deletes a device's entries up to position `up_to` (acknowledged). Idempotent; an
    /// older `up_to` changes nothing.
    async fn ack_to_device(&self, device_id: DeviceId, up_to: u64) -> Result<(), StoreError>;
    /// Records that `changed`'s device list changed, for each of `devices` (those who must
    /// hear of it): one notice per (device, user), however many changes; the newest time.
    async fn note_device_list_change(&self, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError>;
    /// The users whose device-list change notices a device has not acknowledged.
    async fn device_list_changes(&self, device_id: DeviceId) -> Result<Vec<UserId>, StoreError>;
    /// Removes a device's notices for these users (acknowledged).
    async fn ack_device_list_changes(&self, device_id: DeviceId, users: Vec<UserId>) -> Result<(), StoreError>;

    /// Every cursor of a device (a cursor still at zero may be absent).
    async fn cursors_of(&self, device_id: DeviceId) -> Result<Vec<(ConversationId, Cursor)>, StoreError>;
    /// When a user was last connected (ms), if ever.
    async fn last_seen(&self, user_id: UserId) -> Result<Option<u64>, StoreError>;

    /// Writes records exported from another store (see [`transfer`]), as they are: no
    /// fence or dedup checks. Idempotent: a record imported twice is stored once, and
    /// cursors and fences keep the larger value. All or nothing.
    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError>;
    /// How many records a section holds (a full scan on some backends: for verification,
    /// not for serving).
    async fn count(&self, section: Section) -> Result<u64, StoreError>;

    /// Makes every committed write durable and releases resources; used at shutdown.
    async fn flush(&self) -> Result<(), StoreError>;
}

/// The phone of a deleted account's record: not an E.164 number (no lookup ever meets it)
/// and unique per account (PostgreSQL keeps phones unique).
pub fn deleted_phone(user: UserId) -> String {
    format!("deleted:{user}")
}

/// The id of the 1:1 conversation between two users: a UUIDv5 of the sorted pair, so both
/// sides (and every node) derive the same id without a lookup.
pub fn direct_conversation_id(a: UserId, b: UserId) -> ConversationId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(lo.as_bytes());
    name[16..].copy_from_slice(hi.as_bytes());
    ConversationId::from_uuid(Uuid::new_v5(&DIRECT_NAMESPACE, &name))
}

/// Namespace of direct conversation ids (fixed forever: changing it orphans every 1:1).
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_7a57_0b2e_4e8e_9a41_5357_4243_4844);

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A rate bucket untouched this long (ms) is full again under every rule the server uses
/// (their periods are at most a day) and is deleted: by `purge_expired` on redb and
/// PostgreSQL, by a TTL on ScyllaDB. Callers must not use longer periods.
pub const RATE_BUCKET_IDLE_MS: u64 = 2 * 86_400_000;

/// Longest key of a rate bucket, in bytes.
pub const MAX_BUCKET_KEY_BYTES: usize = 200;

/// `key` if it may name a rate bucket (1 to [`MAX_BUCKET_KEY_BYTES`] bytes); the keys are
/// made by the server, so a bad one is a bug, reported as `StoreError::Backend`.
pub(crate) fn checked_bucket_key(key: &str) -> Result<&str, StoreError> {
    if key.is_empty() || key.len() > MAX_BUCKET_KEY_BYTES {
        return Err(StoreError::Backend(format!("rate bucket key of {} bytes (1 to {MAX_BUCKET_KEY_BYTES})", key.len())));
    }
    Ok(key)
}

/// The expiry rule: a message sent at `time_ms` in a conversation whose retention is
/// `retention_secs` (0: kept forever) has expired at `now_ms` once its time plus the
/// retention has passed. Every read and check applies it (`ConversationRecord::expired`),
/// and so does the store's dedup: a client id whose message has expired is free again.
pub fn is_expired(time_ms: u64, retention_secs: u32, now_ms: u64) -> bool {
    let retention = u64::from(retention_secs);
    retention > 0 && time_ms.saturating_add(retention * 1000) <= now_ms
}
