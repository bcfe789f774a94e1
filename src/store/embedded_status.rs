//! The embedded store's status posts (redb), kept apart from `embedded.rs`. Writes run on
//! the writer thread, each its own durable transaction; reads on the caller.
//!
//! Tables (partition key first, as the ScyllaDB model):
//! - `status_posts`: (poster, post id) → [`StatusPost`] (postcard): a poster's posts are
//!   one key range;
//! - `status_views`: (poster, post id, viewer) → first seen, ms: a post's views are one
//!   key range, deleted with the post in the same transaction;
//! - `status_expiry`: (expires ms, poster, post id) → (): the purge's walk, oldest first.
//!
//! Every read filters on the time it is given (`expires_ms > now_ms`); the purge only
//! reclaims the space later.

use std::ops::Bound;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::embedded::{be, decode, encode};
use super::status::{StatusPost, StatusPut, StatusView};
use super::transfer::{Position, Record, Section};
use super::{StatusId, StoreError, UserId};

const POSTS: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("status_posts");
const VIEWS: TableDefinition<(u128, u128, u128), u64> = TableDefinition::new("status_views");
const EXPIRY: TableDefinition<(u64, u128, u128), ()> = TableDefinition::new("status_expiry");

/// Creates the tables (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(POSTS).map_err(be)?;
    txn.open_table(VIEWS).map_err(be)?;
    txn.open_table(EXPIRY).map_err(be)?;
    Ok(())
}

fn key(poster: UserId, post_id: StatusId) -> (u128, u128) {
    (poster.as_u128(), post_id.as_u128())
}

/// The key range of one post's views.
fn views_of(poster: UserId, post_id: StatusId) -> std::ops::RangeInclusive<(u128, u128, u128)> {
    (poster.as_u128(), post_id.as_u128(), 0)..=(poster.as_u128(), post_id.as_u128(), u128::MAX)
}

fn post_in(table: &impl ReadableTable<(u128, u128), &'static [u8]>, poster: UserId, post_id: StatusId) -> Result<Option<StatusPost>, StoreError> {
    table.get(key(poster, post_id)).map_err(be)?.map(|g| decode("status_posts", g.value())).transpose()
}

/// Stores a post and its expiry entry (inside a write transaction).
fn insert(txn: &WriteTransaction, post: &StatusPost) -> Result<(), StoreError> {
    txn.open_table(POSTS).map_err(be)?.insert(key(post.poster, post.post_id), encode(post)?.as_slice()).map_err(be)?;
    txn.open_table(EXPIRY).map_err(be)?.insert((post.expires_ms, post.poster.as_u128(), post.post_id.as_u128()), ()).map_err(be)?;
    Ok(())
}

/// Deletes a post, its expiry entry and its views (inside a write transaction); the post
/// if there was one.
fn remove(txn: &WriteTransaction, poster: UserId, post_id: StatusId) -> Result<Option<StatusPost>, StoreError> {
    let removed: Option<StatusPost> =
        txn.open_table(POSTS).map_err(be)?.remove(key(poster, post_id)).map_err(be)?.map(|g| decode("status_posts", g.value())).transpose()?;
    let Some(post) = removed else { return Ok(None) };
    txn.open_table(EXPIRY).map_err(be)?.remove((post.expires_ms, poster.as_u128(), post_id.as_u128())).map_err(be)?;
    txn.open_table(VIEWS).map_err(be)?.retain_in(views_of(poster, post_id), |_, _| false).map_err(be)?;
    Ok(Some(post))
}

/// `Store::put_status`.
pub(super) fn put(db: &Database, post: &StatusPost) -> Result<StatusPut, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let existing = post_in(&txn.open_table(POSTS).map_err(be)?, post.poster, post.post_id)?;
    if let Some(existing) = existing {
        txn.abort().map_err(be)?;
        return Ok(StatusPut::Exists(Box::new(existing)));
    }
    insert(&txn, post)?;
    txn.commit().map_err(be)?;
    Ok(StatusPut::Stored)
}

/// `Store::status_post`.
pub(super) fn get(db: &Database, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<Option<StatusPost>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    Ok(post_in(&txn.open_table(POSTS).map_err(be)?, poster, post_id)?.filter(|p| p.live_at(now_ms)))
}

/// `Store::status_posts`: one key range per poster.
pub(super) fn of_posters(db: &Database, posters: &[UserId], now_ms: u64) -> Result<Vec<StatusPost>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(POSTS).map_err(be)?;
    let mut out = Vec::new();
    for poster in posters {
        let p = poster.as_u128();
        for entry in table.range((p, 0)..=(p, u128::MAX)).map_err(be)? {
            let post: StatusPost = decode("status_posts", entry.map_err(be)?.1.value())?;
            if post.live_at(now_ms) {
                out.push(post);
            }
        }
    }
    Ok(out)
}

/// `Store::delete_status`, in one write transaction.
pub(super) fn delete(db: &Database, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<bool, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let removed = remove(&txn, poster, post_id)?;
    txn.commit().map_err(be)?;
    Ok(removed.is_some_and(|p| p.live_at(now_ms)))
}

/// `Store::mark_status_seen`, in one write transaction (so a view never outlives its post).
pub(super) fn mark_seen(db: &Database, poster: UserId, post_id: StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let live = post_in(&txn.open_table(POSTS).map_err(be)?, poster, post_id)?.is_some_and(|p| p.live_at(now_ms));
    let first = live && {
        let mut views = txn.open_table(VIEWS).map_err(be)?;
        let key = (poster.as_u128(), post_id.as_u128(), viewer.as_u128());
        let seen = views.get(key).map_err(be)?.is_some();
        if !seen {
            views.insert(key, now_ms).map_err(be)?;
        }
        !seen
    };
    if first {
        txn.commit().map_err(be)?
    } else {
        txn.abort().map_err(be)?
    }
    Ok(live)
}

/// `Store::status_views`.
pub(super) fn views(db: &Database, poster: UserId, post_id: StatusId) -> Result<Vec<StatusView>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(VIEWS).map_err(be)?;
    let mut out = Vec::new();
    for entry in table.range(views_of(poster, post_id)).map_err(be)? {
        let (k, v) = entry.map_err(be)?;
        out.push(StatusView { viewer: UserId::from_u128(k.value().2), seen_ms: v.value() });
    }
    Ok(out)
}

/// Deletes up to `limit` posts expired at `now_ms` with their views, oldest first, inside
/// the purge's transaction.
pub(super) fn purge(txn: &WriteTransaction, now_ms: u64, limit: usize) -> Result<(), StoreError> {
    let expired: Vec<(u128, u128)> = {
        let table = txn.open_table(EXPIRY).map_err(be)?;
        // Expired means `expires_ms <= now_ms`: every key below (now_ms + 1, 0, 0).
        let end = (now_ms.saturating_add(1), 0, 0);
        let mut out = Vec::new();
        for entry in table.range(..end).map_err(be)?.take(limit) {
            let (_, poster, post) = entry.map_err(be)?.0.value();
            out.push((poster, post));
        }
        out
    };
    for (poster, post) in expired {
        remove(txn, UserId::from_u128(poster), StatusId::from_u128(post))?;
    }
    Ok(())
}

/// Up to `limit` records of `section` (posts or views) strictly after `after`, in key
/// order (a store copy).
pub(super) fn export(db: &Database, section: Section, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let (mut out, mut last) = (Vec::new(), None);
    if section == Section::StatusViews {
        let table = txn.open_table(VIEWS).map_err(be)?;
        // A viewer's id is split over the position's two u64 parts.
        let start = after.map_or(Bound::Unbounded, |Position(p, s, hi, lo)| Bound::Excluded((p, s, (u128::from(hi) << 64) | u128::from(lo))));
        for entry in table.range::<(u128, u128, u128)>((start, Bound::Unbounded)).map_err(be)?.take(limit) {
            let (k, v) = entry.map_err(be)?;
            let (poster, post, viewer) = k.value();
            out.push(Record::StatusView {
                poster: UserId::from_u128(poster),
                post_id: StatusId::from_u128(post),
                view: StatusView { viewer: UserId::from_u128(viewer), seen_ms: v.value() },
            });
            last = Some(Position(poster, post, (viewer >> 64) as u64, viewer as u64));
        }
    } else {
        let table = txn.open_table(POSTS).map_err(be)?;
        let start = after.map_or(Bound::Unbounded, |Position(p, s, ..)| Bound::Excluded((p, s)));
        for entry in table.range::<(u128, u128)>((start, Bound::Unbounded)).map_err(be)?.take(limit) {
            let (k, v) = entry.map_err(be)?;
            let (poster, post) = k.value();
            out.push(Record::Status(decode("status_posts", v.value())?));
            last = Some(Position(poster, post, 0, 0));
        }
    }
    Ok((out, last))
}

/// Imports post and view records inside the import's transaction, as they are
/// (idempotent: a post already there is left alone, a view keeps its first time).
pub(super) fn import(txn: &WriteTransaction, records: Vec<Record>) -> Result<(), StoreError> {
    for record in records {
        match record {
            Record::Status(post) => {
                if post_in(&txn.open_table(POSTS).map_err(be)?, post.poster, post.post_id)?.is_none() {
                    insert(txn, &post)?;
                }
            }
            Record::StatusView { poster, post_id, view } => {
                let mut views = txn.open_table(VIEWS).map_err(be)?;
                let key = (poster.as_u128(), post_id.as_u128(), view.viewer.as_u128());
                let first = views.get(key).map_err(be)?.map_or(view.seen_ms, |g| g.value().min(view.seen_ms));
                views.insert(key, first).map_err(be)?;
            }
            other => return Err(be(format!("not a status record: {other:?}"))),
        }
    }
    Ok(())
}

/// Whether a record belongs here (the import's sorting).
pub(super) fn is_status(record: &Record) -> bool {
    matches!(record, Record::Status(_) | Record::StatusView { .. })
}

/// How many posts or views are stored (expired ones not purged yet included).
pub(super) fn count(db: &Database, section: Section) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    if section == Section::StatusViews { txn.open_table(VIEWS).map_err(be)?.len() } else { txn.open_table(POSTS).map_err(be)?.len() }.map_err(be)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{EmbeddedStore, Store};
    use super::*;
    use crate::cores::status::{LIFETIME_MS, StatusAudience};

    /// A copy reads every post and every view once, in key order, chunk after chunk:
    /// positions resume strictly after the last record (a viewer's id split over the
    /// position's two halves), into a second store that then counts the same.
    #[tokio::test]
    async fn exports_resume_after_each_chunk_and_import_as_they_were() {
        let (dir, target_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let (source, target) = (EmbeddedStore::open(dir.path()).expect("open"), EmbeddedStore::open(target_dir.path()).expect("open"));
        let now = 1_700_000_000_000;
        let mut posts = Vec::new();
        for (poster, post) in [(1u128, 5u128), (1, u128::MAX), (2, 0), (u128::MAX, 7)] {
            let post = StatusPost {
                poster: UserId::from_u128(poster),
                post_id: StatusId::from_u128(post),
                payload: Bytes::from(vec![poster as u8; 3]),
                audience: StatusAudience::Deny(vec![UserId::from_u128(9)]),
                posted_ms: now,
                expires_ms: now + LIFETIME_MS,
            };
            assert_eq!(source.put_status(post.clone(), now).await.expect("put"), StatusPut::Stored);
            // Viewers whose ids differ in either half of the u128.
            for viewer in [3u128, 1 << 64, (1 << 64) + 1, u128::MAX] {
                assert!(source.mark_status_seen(post.poster, post.post_id, UserId::from_u128(viewer), now + 1).await.expect("seen"));
            }
            posts.push(post);
        }
        for section in [Section::Statuses, Section::StatusViews] {
            let (mut after, mut all) = (None, Vec::new());
            loop {
                let (records, last) = source.export(section, after, 3).await.expect("export");
                let Some(last) = last else { break };
                assert!(records.len() <= 3);
                all.extend(records.clone());
                target.import(records).await.expect("import");
                after = Some(last);
            }
            let expected = if section == Section::Statuses { 4 } else { 16 };
            assert_eq!(all.len(), expected, "{}: every record once", section.name());
            assert_eq!(target.count(section).await.expect("count"), expected as u64);
        }
        for post in &posts {
            assert_eq!(target.status_post(post.poster, post.post_id, now).await.expect("read"), Some(post.clone()));
            assert_eq!(target.status_views(post.poster, post.post_id).await.expect("views").len(), 4);
        }
    }
}
