//! Moving a store's contents to another store: the records every backend can import, the
//! sections they come in, and the resumable copy behind `switchboard store copy`.
//!
//! A copy reads the source section by section in key order, in chunks, and writes each
//! chunk to the target with [`Store::import`] (idempotent: importing a record twice leaves
//! one). After each chunk the position is saved in a checkpoint file, so an interrupted
//! copy resumes where it stopped. At the end every section is counted on both sides and
//! must match. One-time registration codes are not copied: they expire within minutes;
//! nor are the client ids of to-device sends (a retry after the move queues its Olm
//! message again, which the receiving device refuses as a replay).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ConversationId, ConversationRecord, Cursor, DeviceId, DeviceKeys, DeviceRecord, EmbeddedStore, MediaRecord, MemberCursor, OneTimeKey, PushToken,
    Store, StoreError, StoredMessage, ToDeviceEntry, UserId, UserRecord,
};

/// A group of records of one kind, copied and counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Section {
    /// Users.
    Users,
    /// Devices.
    Devices,
    /// Conversation records.
    Conversations,
    /// (user, conversation) pairs: every conversation a user is or was in.
    Memberships,
    /// The message logs.
    Messages,
    /// The sequencers' fences (last seq per conversation).
    LastSeqs,
    /// Device cursors.
    Cursors,
    /// Member cursors.
    MemberCursors,
    /// Receipt log entries.
    Receipts,
    /// Last-seen times.
    LastSeen,
    /// Push tokens.
    PushTokens,
    /// Media records (the blobs themselves are copied by `store copy --media-from/--media-to`).
    Media,
    /// Devices' published identity keys (key directory).
    DeviceKeys,
    /// One-time keys: unclaimed ones, and claimed ones kept as spent (so that neither is
    /// ever handed out again nor re-uploaded).
    OneTimeKeys,
    /// Fallback keys.
    FallbackKeys,
    /// To-device queues' heads (last position given, highest acknowledged): positions
    /// are never reused after a move either.
    ToDeviceQueues,
    /// To-device entries not yet acknowledged.
    ToDeviceEntries,
    /// Device-list change notices not yet acknowledged.
    DeviceListNotices,
    /// Users' contact lists (numbers submitted to contact discovery).
    Contacts,
    /// Users' privacy settings (only those ever set).
    Privacy,
    /// Blocks (who blocked whom, since when).
    Blocks,
    /// Users' profiles.
    Profiles,
    /// Users' own state of their conversations (muted, archived, pinned, cleared).
    ChatStates,
    /// Status posts, as stored (expired ones not purged yet included: on the target they
    /// are served by no read and purged as they would have been).
    Statuses,
    /// Who saw which status post, and when first (after the posts: each needs its post).
    StatusViews,
}

impl Section {
    /// Every section, in copy order.
    pub const ALL: [Section; 25] = [
        Section::Users,
        Section::Devices,
        Section::Conversations,
        Section::Memberships,
        Section::Messages,
        Section::LastSeqs,
        Section::Cursors,
        Section::MemberCursors,
        Section::Receipts,
        Section::LastSeen,
        Section::PushTokens,
        Section::Media,
        Section::DeviceKeys,
        Section::OneTimeKeys,
        Section::FallbackKeys,
        Section::ToDeviceQueues,
        Section::ToDeviceEntries,
        Section::DeviceListNotices,
        Section::Contacts,
        Section::Privacy,
        Section::Blocks,
        Section::Profiles,
        Section::ChatStates,
        Section::Statuses,
        Section::StatusViews,
    ];

    /// A short name for progress lines and reports.
    pub fn name(self) -> &'static str {
        match self {
            Section::Users => "users",
            Section::Devices => "devices",
            Section::Conversations => "conversations",
            Section::Memberships => "memberships",
            Section::Messages => "messages",
            Section::LastSeqs => "last seqs",
            Section::Cursors => "cursors",
            Section::MemberCursors => "member cursors",
            Section::Receipts => "receipts",
            Section::LastSeen => "last seen",
            Section::PushTokens => "push tokens",
            Section::Media => "media",
            Section::DeviceKeys => "device keys",
            Section::OneTimeKeys => "one-time keys",
            Section::FallbackKeys => "fallback keys",
            Section::ToDeviceQueues => "to-device queues",
            Section::ToDeviceEntries => "to-device entries",
            Section::DeviceListNotices => "device-list notices",
            Section::Contacts => "contacts",
            Section::Privacy => "privacy settings",
            Section::Blocks => "blocks",
            Section::Profiles => "profiles",
            Section::ChatStates => "chat states",
            Section::Statuses => "status posts",
            Section::StatusViews => "status views",
        }
    }
}

/// Where an export stopped: the key of the last record returned, in the section's own key
/// order (unused trailing parts are zero). Exports continue strictly after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position(pub u128, pub u128, pub u64, pub u64);

/// One stored fact, as exported by one store and imported by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A user.
    User(UserRecord),
    /// A device.
    Device(DeviceRecord),
    /// A conversation (its members are listed by `Membership` records).
    Conversation(ConversationRecord),
    /// A user is or was a member of a conversation.
    Membership {
        /// User.
        user_id: UserId,
        /// Conversation.
        conversation_id: ConversationId,
    },
    /// A message, stored as is (no fence or dedup checks: it passed them when first stored).
    Message(StoredMessage),
    /// A conversation's fence.
    LastSeq {
        /// Conversation.
        conversation_id: ConversationId,
        /// Last seq ever stored (messages below it may have been purged).
        last_seq: u64,
    },
    /// A device's cursor.
    Cursor {
        /// Device.
        device_id: DeviceId,
        /// Conversation.
        conversation_id: ConversationId,
        /// Position.
        cursor: Cursor,
    },
    /// A member's cursor.
    MemberCursor {
        /// Conversation.
        conversation_id: ConversationId,
        /// User.
        user_id: UserId,
        /// Position.
        cursor: MemberCursor,
    },
    /// When a member's cursor reached a seq.
    Receipt {
        /// Conversation.
        conversation_id: ConversationId,
        /// User.
        user_id: UserId,
        /// 0 delivered, 1 read.
        kind: u8,
        /// Seq reached.
        seq: u64,
        /// When, ms since the epoch.
        at_ms: u64,
    },
    /// When a user was last connected.
    LastSeen {
        /// User.
        user_id: UserId,
        /// ms since the epoch.
        at_ms: u64,
    },
    /// A device's push token.
    PushToken {
        /// User.
        user_id: UserId,
        /// Device.
        device_id: DeviceId,
        /// Token.
        token: PushToken,
    },
    /// A media record (upload progress, owner, digest).
    Media(MediaRecord),
    /// A user's privacy settings.
    Privacy {
        /// Whose.
        user_id: UserId,
        /// The settings.
        settings: super::PrivacySettings,
    },
    /// `user_id` blocked `target` at `at_ms`.
    Block {
        /// Who blocked.
        user_id: UserId,
        /// Whom.
        target: UserId,
        /// When, ms since the epoch.
        at_ms: u64,
    },
    /// A user's state of one conversation.
    ChatState {
        /// Whose.
        user_id: UserId,
        /// Which conversation.
        conversation_id: super::ConversationId,
        /// The state.
        state: super::ChatState,
    },
    /// A user's profile.
    Profile {
        /// Whose.
        user_id: UserId,
        /// The profile.
        profile: super::Profile,
    },
    /// A status post.
    Status(super::StatusPost),
    /// A viewer of a status post.
    StatusView {
        /// Who posted it.
        poster: UserId,
        /// Which post.
        post_id: super::StatusId,
        /// Who saw it, and when first.
        view: super::StatusView,
    },
    /// A number in a user's contacts.
    Contact {
        /// Whose contact list.
        owner: UserId,
        /// E.164.
        phone: String,
    },
    /// A device's identity keys.
    DeviceKeys(DeviceKeys),
    /// An unclaimed one-time key.
    OneTimeKey {
        /// Its device.
        device_id: DeviceId,
        /// The key.
        key: OneTimeKey,
    },
    /// A claimed one-time key (only its id is kept: it is never handed out again).
    SpentKey {
        /// Its device.
        device_id: DeviceId,
        /// The key's id.
        key_id: String,
        /// When it was claimed, ms since the epoch.
        claimed_ms: u64,
    },
    /// A device's fallback key.
    FallbackKey {
        /// Its device.
        device_id: DeviceId,
        /// The key.
        key: OneTimeKey,
    },
    /// A to-device queue's head.
    ToDeviceQueue {
        /// The receiving device.
        device_id: DeviceId,
        /// Last position given out.
        last_position: u64,
        /// Highest position acknowledged.
        acked: u64,
    },
    /// A to-device entry not yet acknowledged.
    ToDeviceEntry {
        /// The receiving device.
        device_id: DeviceId,
        /// The entry.
        entry: ToDeviceEntry,
    },
    /// A device-list change notice.
    DeviceListNotice {
        /// The device to tell.
        device_id: DeviceId,
        /// Whose device list changed.
        user_id: UserId,
        /// When, ms since the epoch.
        changed_ms: u64,
    },
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source or writing the target failed; the checkpoint holds the last
    /// chunk that was written, so running the copy again resumes there.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target already holds data and this copy has no checkpoint for it: counts could
    /// not verify the copy, and merging two nodes' data is not what this command does.
    #[error("the target store is not empty ({0} already has records) and there is no checkpoint of an earlier copy to it")]
    TargetNotEmpty(&'static str),
    /// After the copy, a section has different counts in source and target.
    #[error("verification failed: {section} has {source_count} records in the source and {target_count} in the target")]
    CountMismatch {
        /// Section name.
        section: &'static str,
        /// Count in the source.
        source_count: u64,
        /// Count in the target.
        target_count: u64,
    },
    /// The checkpoint file could not be read or written.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// Path of the checkpoint file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Where a copy is: how many records of which section are in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    /// The target, as shown to operators (password removed).
    target: String,
    /// The section being copied.
    section: Section,
    /// Records of that section already written.
    done: u64,
    /// Key of the last record written.
    after: Option<Position>,
}

/// What a finished copy moved, per section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// (section, records in source = records in target).
    pub counts: Vec<(Section, u64)>,
    /// True if the copy resumed from a checkpoint.
    pub resumed: bool,
}

/// Progress of a copy, for a progress bar: called after each chunk.
pub trait CopyProgress {
    /// A section starts: `total` records, `done` of them already copied (resume).
    fn section(&self, section: Section, total: u64, done: u64);
    /// `n` more records of the current section were written.
    fn advance(&self, n: u64);
}

/// Copies everything in `source` to `target`, resumably (see the module docs).
/// `checkpoint` is the file that records progress; `target_name` identifies the target in
/// it, so a checkpoint is never applied to another target.
pub async fn copy(
    source: &EmbeddedStore,
    target: &dyn Store,
    target_name: &str,
    checkpoint: &Path,
    chunk: usize,
    progress: &dyn CopyProgress,
) -> Result<CopyReport, CopyError> {
    let chunk = chunk.max(1);
    let saved = read_checkpoint(checkpoint)?.filter(|c| c.target == target_name);
    let resumed = saved.is_some();
    if saved.is_none() {
        for section in Section::ALL {
            if target.count(section).await? > 0 {
                return Err(CopyError::TargetNotEmpty(section.name()));
            }
        }
    }
    let mut counts = Vec::with_capacity(Section::ALL.len());
    for section in Section::ALL {
        let total = source.count(section).await?;
        let (mut done, mut after) = match &saved {
            Some(c) if c.section == section => (c.done.min(total), c.after),
            Some(c) if c.section > section => (total, None),
            _ => (0, None),
        };
        progress.section(section, total, done);
        while done < total {
            let (records, last) = source.export(section, after, chunk).await?;
            let Some(last) = last else { break };
            let n = records.len() as u64;
            target.import(records).await?;
            done += n;
            after = Some(last);
            write_checkpoint(checkpoint, &Checkpoint { target: target_name.to_owned(), section, done, after })?;
            progress.advance(n);
        }
        counts.push((section, total));
    }
    for (section, source_count) in &counts {
        let target_count = target.count(*section).await?;
        if target_count != *source_count {
            return Err(CopyError::CountMismatch { section: section.name(), source_count: *source_count, target_count });
        }
    }
    if checkpoint.exists() {
        std::fs::remove_file(checkpoint).map_err(|e| CopyError::Checkpoint { path: checkpoint.to_owned(), detail: e.to_string() })?;
    }
    Ok(CopyReport { counts, resumed })
}

fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, CopyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| CopyError::Checkpoint { path: path.to_owned(), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CopyError::Checkpoint { path: path.to_owned(), detail: e.to_string() }),
    }
}

fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), CopyError> {
    let fail = |e: std::io::Error| CopyError::Checkpoint { path: path.to_owned(), detail: e.to_string() };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(checkpoint).map_err(|e| CopyError::Checkpoint { path: path.to_owned(), detail: e.to_string() })?;
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
