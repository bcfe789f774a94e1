//! The embedded store's message path inside the writer's transaction: a batch of the
//! store writer (`Store::apply`) applied op by op, with the rules the log must keep (the
//! seq fence, idempotent client ids, expiry), and what a deleted or purged message takes
//! with it (dedup keys, media references, edits and reactions that refer to it). Used for
//! live batches and for replaying the write-ahead log: the same ops on the same state
//! have the same effects.

use redb::{ReadableTable, WriteTransaction};

use super::embedded::{
    CONVERSATIONS, CURSORS, DEDUP, INVITES, LAST_SEEN, LAST_SEQS, MEDIA_REFS, MEMBER_CURSORS, MESSAGES, RECEIPT_LOG, REFERRERS, RETENTION,
    USER_CONVERSATIONS, be, decode, decode_message, encode,
};
use super::{ConversationRecord, Cursor, MediaRecord, StoreError, StoredMessage, WriteOp, WriteOutcome};

/// Applies a batch in an open write transaction: the store contract's `apply`, outcome by
/// outcome. Used for live batches and for replaying the log (same ops, same state, same
/// effects).
pub(super) fn apply_in(txn: &WriteTransaction, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(ops.len());
    {
        let mut messages = txn.open_table(MESSAGES).map_err(be)?;
        let mut dedup = txn.open_table(DEDUP).map_err(be)?;
        let mut cursors = txn.open_table(CURSORS).map_err(be)?;
        let mut last_seen = txn.open_table(LAST_SEEN).map_err(be)?;
        let mut conversations = txn.open_table(CONVERSATIONS).map_err(be)?;
        let mut by_user = txn.open_table(USER_CONVERSATIONS).map_err(be)?;
        let mut invites = txn.open_table(INVITES).map_err(be)?;
        let mut last_seqs = txn.open_table(LAST_SEQS).map_err(be)?;
        let mut retention = txn.open_table(RETENTION).map_err(be)?;
        let mut member_cursors = txn.open_table(MEMBER_CURSORS).map_err(be)?;
        let mut receipt_log = txn.open_table(RECEIPT_LOG).map_err(be)?;
        let mut media_refs = txn.open_table(MEDIA_REFS).map_err(be)?;
        let mut referrers = txn.open_table(REFERRERS).map_err(be)?;
        for op in ops {
            let outcome = match op {
                WriteOp::Append(msg) => {
                    free_expired_client_id(&mut messages, &mut dedup, &retention, &mut media_refs, &mut referrers, msg)?;
                    match append_check(&last_seqs, &dedup, msg)? {
                        Some(refused) => refused,
                        None => {
                            store_message(&mut messages, &mut dedup, &mut last_seqs, msg)?;
                            add_refs(&mut media_refs, msg)?;
                            add_referrer(&mut referrers, msg)?;
                            WriteOutcome::Appended
                        }
                    }
                }
                WriteOp::AppendEvent { message, record, joined, tombstone } => match append_check(&last_seqs, &dedup, message)? {
                    Some(refused) => refused,
                    None => {
                        store_message(&mut messages, &mut dedup, &mut last_seqs, message)?;
                        if let Some(target) = *tombstone {
                            erase_with_referrers(&mut messages, &mut media_refs, &mut referrers, message.conversation_id.as_u128(), target)?;
                        }
                        if record.retention_secs > 0 {
                            retention.insert(record.conversation_id.as_u128(), record.retention_secs).map_err(be)?;
                        } else {
                            retention.remove(record.conversation_id.as_u128()).map_err(be)?;
                        }
                        let id = record.conversation_id.as_u128();
                        let old: Option<ConversationRecord> =
                            conversations.get(id).map_err(be)?.map(|g| decode("conversations", g.value())).transpose()?;
                        let old_hash = old.as_ref().and_then(|r| r.group.as_ref()).and_then(|g| g.invite_hash);
                        let new_hash = record.group.as_ref().and_then(|g| g.invite_hash);
                        if old_hash != new_hash {
                            if let Some(h) = old_hash {
                                invites.remove(&h[..]).map_err(be)?;
                            }
                            if let Some(h) = new_hash {
                                invites.insert(&h[..], id).map_err(be)?;
                            }
                        }
                        conversations.insert(id, encode(&**record)?.as_slice()).map_err(be)?;
                        for user in joined {
                            by_user.insert((user.as_u128(), id), ()).map_err(be)?;
                        }
                        WriteOutcome::Appended
                    }
                },
                &WriteOp::AdvanceCursor { user_id, device_id, conversation_id, delivered, read, at_ms } => {
                    let key = (device_id.as_u128(), conversation_id.as_u128());
                    let (old_d, old_r) = cursors.get(key).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
                    let next = (old_d.max(delivered), old_r.max(read));
                    if next != (old_d, old_r) {
                        cursors.insert(key, next).map_err(be)?;
                    }
                    let conv = conversation_id.as_u128();
                    let member_key = (conv, user_id.as_u128());
                    let (m_d, m_r) = member_cursors.get(member_key).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
                    let member_next = (m_d.max(delivered), m_r.max(read));
                    if member_next != (m_d, m_r) {
                        member_cursors.insert(member_key, member_next).map_err(be)?;
                        if member_next.0 > m_d {
                            receipt_log.insert((conv, user_id.as_u128(), 0, member_next.0), at_ms).map_err(be)?;
                        }
                        if member_next.1 > m_r {
                            receipt_log.insert((conv, user_id.as_u128(), 1, member_next.1), at_ms).map_err(be)?;
                        }
                    }
                    WriteOutcome::CursorAdvanced(Cursor { delivered: next.0, read: next.1 })
                }
                &WriteOp::LastSeen { user_id, at_ms } => {
                    // The later time wins: several nodes may record one user's last seen.
                    let current = last_seen.get(user_id.as_u128()).map_err(be)?.map(|g| g.value()).unwrap_or(0);
                    last_seen.insert(user_id.as_u128(), current.max(at_ms)).map_err(be)?;
                    WriteOutcome::Recorded
                }
            };
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

type MessagesTable<'t> = redb::Table<'t, (u128, u64), &'static [u8]>;
type DedupTable<'t> = redb::Table<'t, (u128, u128, &'static str), (u64, u64)>;

type LastSeqTable<'t> = redb::Table<'t, u128, u64>;
type RetentionTable<'t> = redb::Table<'t, u128, u32>;

/// Why an append must be refused, if it must: its dedup key exists (the original seq is
/// returned), or its seq is not the successor of the conversation's last one (a second
/// sequencer, or a failed earlier write; storing it would break the gap-free log).
fn append_check(last_seqs: &LastSeqTable<'_>, dedup: &DedupTable<'_>, msg: &StoredMessage) -> Result<Option<WriteOutcome>, StoreError> {
    let conv = msg.conversation_id.as_u128();
    if let Some(found) = dedup.get((conv, msg.sender_user_id.as_u128(), msg.client_msg_id.as_str())).map_err(be)? {
        let (seq, server_time_ms) = found.value();
        return Ok(Some(WriteOutcome::Duplicate { seq, server_time_ms }));
    }
    let last = last_seqs.get(conv).map_err(be)?.map(|g| g.value()).unwrap_or(0);
    if msg.seq != last + 1 {
        return Ok(Some(WriteOutcome::SeqConflict));
    }
    Ok(None)
}

/// A client id whose message has expired by `msg`'s server time is free again: expiry is a
/// rule, not an effect of the purge sweep, so such a resend is a new message, not a
/// duplicate. The expired message (not an event: events never expire) is deleted now, as
/// the sweep would, with its dedup key and media references. Decided on the times inside
/// the op, so a replay of the log decides the same.
fn free_expired_client_id(
    messages: &mut MessagesTable<'_>,
    dedup: &mut DedupTable<'_>,
    retention: &RetentionTable<'_>,
    media_refs: &mut MediaRefsTable<'_>,
    referrers: &mut ReferrersTable<'_>,
    msg: &StoredMessage,
) -> Result<(), StoreError> {
    let conv = msg.conversation_id.as_u128();
    let key = (conv, msg.sender_user_id.as_u128(), msg.client_msg_id.as_str());
    let Some((seq, time_ms)) = dedup.get(key).map_err(be)?.map(|g| g.value()) else { return Ok(()) };
    let secs = retention.get(conv).map_err(be)?.map(|g| g.value()).unwrap_or(0);
    if !super::is_expired(time_ms, secs, msg.server_time_ms) {
        return Ok(());
    }
    let old: Option<StoredMessage> = messages.get((conv, seq)).map_err(be)?.map(|g| decode_message(g.value())).transpose()?;
    match old {
        Some(m) if m.event.is_some() => Ok(()),
        Some(m) => purge_message(messages, dedup, media_refs, referrers, &m),
        None => {
            dedup.remove(key).map_err(be)?;
            Ok(())
        }
    }
}

/// Deletes an expired message with everything that points at it: its dedup key, its media
/// references and its entry in the referrers index (the purge sweep, and a client id used
/// again after expiry).
pub(super) fn purge_message(
    messages: &mut MessagesTable<'_>,
    dedup: &mut DedupTable<'_>,
    media_refs: &mut MediaRefsTable<'_>,
    referrers: &mut ReferrersTable<'_>,
    m: &StoredMessage,
) -> Result<(), StoreError> {
    let conv = m.conversation_id.as_u128();
    remove_refs(media_refs, m)?;
    if m.reference_seq > 0 {
        referrers.remove((conv, m.reference_seq, m.seq)).map_err(be)?;
    }
    messages.remove((conv, m.seq)).map_err(be)?;
    dedup.remove((conv, m.sender_user_id.as_u128(), m.client_msg_id.as_str())).map_err(be)?;
    Ok(())
}

fn store_message(
    messages: &mut MessagesTable<'_>,
    dedup: &mut DedupTable<'_>,
    last_seqs: &mut LastSeqTable<'_>,
    msg: &StoredMessage,
) -> Result<(), StoreError> {
    let conv = msg.conversation_id.as_u128();
    messages.insert((conv, msg.seq), encode(msg)?.as_slice()).map_err(be)?;
    dedup.insert((conv, msg.sender_user_id.as_u128(), msg.client_msg_id.as_str()), (msg.seq, msg.server_time_ms)).map_err(be)?;
    last_seqs.insert(conv, msg.seq).map_err(be)?;
    Ok(())
}

type MediaRefsTable<'t> = redb::Table<'t, (u128, u128, u64), ()>;

/// Records that `msg` references its declared media (same transaction as the message).
pub(super) fn add_refs(refs: &mut MediaRefsTable<'_>, msg: &StoredMessage) -> Result<(), StoreError> {
    for media in &msg.attachments {
        refs.insert((media.as_u128(), msg.conversation_id.as_u128(), msg.seq), ()).map_err(be)?;
    }
    Ok(())
}

/// Writes a media record and its owner and digest index entries.
pub(super) fn put_media(
    media: &mut redb::Table<'_, u128, &[u8]>,
    by_owner: &mut redb::Table<'_, (u128, u128), u64>,
    by_digest: &mut redb::Table<'_, ([u8; 32], u128), ()>,
    record: &MediaRecord,
) -> Result<(), StoreError> {
    let id = record.media_id.as_u128();
    media.insert(id, encode(record)?.as_slice()).map_err(be)?;
    by_owner.insert((record.owner.as_u128(), id), record.length).map_err(be)?;
    if let Some(d) = record.digest {
        by_digest.insert((d, id), ()).map_err(be)?;
    }
    Ok(())
}

/// Forgets `msg`'s references (it is being deleted for everyone, or purged).
fn remove_refs(refs: &mut MediaRefsTable<'_>, msg: &StoredMessage) -> Result<(), StoreError> {
    for media in &msg.attachments {
        refs.remove((media.as_u128(), msg.conversation_id.as_u128(), msg.seq)).map_err(be)?;
    }
    Ok(())
}

type ReferrersTable<'t> = redb::Table<'t, (u128, u64, u64), ()>;

/// Records that `msg` (an edit or a reaction) refers to the message at its `reference_seq`.
pub(super) fn add_referrer(referrers: &mut ReferrersTable<'_>, msg: &StoredMessage) -> Result<(), StoreError> {
    if msg.kind != super::ContentKind::Normal && msg.reference_seq > 0 {
        referrers.insert((msg.conversation_id.as_u128(), msg.reference_seq, msg.seq), ()).map_err(be)?;
    }
    Ok(())
}

/// Deletes a message for everyone: blanks it (payload, attachments and their media
/// references) and every edit and reaction that refers to it, as the sequencer's rules
/// say (`cores::sequencer`, delete for everyone): nothing of a deleted message is served.
fn erase_with_referrers(
    messages: &mut MessagesTable<'_>,
    media_refs: &mut MediaRefsTable<'_>,
    referrers: &mut ReferrersTable<'_>,
    conv: u128,
    target: u64,
) -> Result<(), StoreError> {
    let mut doomed = vec![target];
    for entry in referrers.range((conv, target, 0)..=(conv, target, u64::MAX)).map_err(be)? {
        doomed.push(entry.map_err(be)?.0.value().2);
    }
    for seq in doomed {
        let found: Option<StoredMessage> = messages.get((conv, seq)).map_err(be)?.map(|g| decode_message(g.value())).transpose()?;
        if let Some(mut erased) = found {
            remove_refs(media_refs, &erased)?;
            erased.payload = bytes::Bytes::new();
            erased.deleted = true;
            erased.attachments = Vec::new();
            messages.insert((conv, seq), encode(&erased)?.as_slice()).map_err(be)?;
        }
    }
    Ok(())
}
