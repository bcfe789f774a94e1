//! The ScyllaDB backend's status posts (`migrations/scylla/0012_status.cql`): a poster's
//! posts are one partition of `status_posts`, a post's views one partition of
//! `status_views`.
//!
//! Expiry is by TTL: every row is written with a TTL that ends [`TTL_MARGIN_SECS`] after
//! the post's `expires_ms` (counted from the time of the write), and every read filters on
//! `expires_ms > now`, so a post is gone at its expiry to the millisecond whatever the TTL's
//! second granularity or a node's clock; the TTL only reclaims the space, and the margin
//! keeps a copied post (`store copy` of one that expired during the copy) countable until
//! the copy is verified. `purge_expired` has nothing to do here.
//!
//! No transaction spans the two tables: a post is created by compare-and-set (`IF NOT
//! EXISTS`, so a retried post is stored once); a deletion removes the post's row, then its
//! views' partition; a view is written after reading the post and the view (a mark racing
//! the post's deletion can leave a view, never listed since its post is gone, that its TTL
//! removes; two marks of one viewer racing may keep the later of two close times).

use bytes::Bytes;
use scylla::statement::prepared::PreparedStatement;

use super::{Kind, ScyllaStore, corrupt, int, prepare, uint};
use crate::store::status::{StatusPost, StatusPut, StatusView, audience_columns, audience_from_columns};
use crate::store::{StatusId, StoreError, UserId};

/// How long a row outlives its post's expiry, s (see the module docs).
const TTL_MARGIN_SECS: u64 = 3_600;

/// Posters whose partitions are read at once (each a read of its own).
const POSTER_CHUNK: usize = 100;

/// A post's columns as read.
type PostRow = (UserId, StatusId, Option<Vec<u8>>, Option<i8>, Option<Vec<UserId>>, Option<i64>, Option<i64>);

/// The TTL (s) of a row of a post expiring at `expires_ms`, written at `now_ms`.
fn ttl(expires_ms: u64, now_ms: u64) -> i32 {
    i32::try_from(expires_ms.saturating_sub(now_ms) / 1000 + TTL_MARGIN_SECS).unwrap_or(i32::MAX)
}

fn post_from((poster, post_id, payload, kind, users, posted, expires): PostRow) -> Result<StatusPost, StoreError> {
    let missing = |column: &str| corrupt("status_posts", format!("{column} is null"));
    // An empty list is stored as null.
    let audience = audience_from_columns(kind.ok_or_else(|| missing("audience_kind"))?, users.unwrap_or_default())
        .ok_or_else(|| corrupt("status_posts", format!("unknown audience kind {kind:?}")))?;
    Ok(StatusPost {
        poster,
        post_id,
        payload: Bytes::from(payload.unwrap_or_default()),
        audience,
        posted_ms: uint(posted.ok_or_else(|| missing("posted_ms"))?),
        expires_ms: uint(expires.ok_or_else(|| missing("expires_ms"))?),
    })
}

/// The prepared statements of this module.
pub(super) struct StatusStatements {
    create_post: PreparedStatement,
    import_post: PreparedStatement,
    get_post: PreparedStatement,
    get_post_serial: PreparedStatement,
    posts_of: PreparedStatement,
    delete_post: PreparedStatement,
    delete_views: PreparedStatement,
    get_view: PreparedStatement,
    put_view: PreparedStatement,
    views: PreparedStatement,
}

impl StatusStatements {
    pub(super) async fn prepare_all(s: &scylla::client::session::Session) -> Result<Self, StoreError> {
        use Kind::{Conditional, Read, SerialRead, Write};
        const COLUMNS: &str = "poster, post_id, payload, audience_kind, audience_users, posted_ms, expires_ms";
        Ok(Self {
            create_post: prepare(
                s,
                &format!("INSERT INTO status_posts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"),
                Conditional,
            )
            .await?,
            // `store copy` only: a plain write of the post as exported.
            import_post: prepare(s, &format!("INSERT INTO status_posts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"), Write).await?,
            get_post: prepare(s, &format!("SELECT {COLUMNS} FROM status_posts WHERE poster = ? AND post_id = ?"), Read).await?,
            // After a lost compare-and-set: sees the round that won.
            get_post_serial: prepare(s, &format!("SELECT {COLUMNS} FROM status_posts WHERE poster = ? AND post_id = ?"), SerialRead).await?,
            posts_of: prepare(s, &format!("SELECT {COLUMNS} FROM status_posts WHERE poster = ?"), Read).await?,
            delete_post: prepare(s, "DELETE FROM status_posts WHERE poster = ? AND post_id = ?", Write).await?,
            delete_views: prepare(s, "DELETE FROM status_views WHERE poster = ? AND post_id = ?", Write).await?,
            get_view: prepare(s, "SELECT seen_ms FROM status_views WHERE poster = ? AND post_id = ? AND viewer = ?", Read).await?,
            put_view: prepare(s, "INSERT INTO status_views (poster, post_id, viewer, seen_ms) VALUES (?, ?, ?, ?) USING TTL ?", Write).await?,
            views: prepare(s, "SELECT viewer, seen_ms FROM status_views WHERE poster = ? AND post_id = ?", Read).await?,
        })
    }
}

impl ScyllaStore {
    /// A post as stored (live or not), read at LOCAL_QUORUM or, `serial`, LOCAL_SERIAL.
    async fn stored_post(&self, poster: UserId, post_id: StatusId, serial: bool) -> Result<Option<StatusPost>, StoreError> {
        let statement = if serial { &self.ss.get_post_serial } else { &self.ss.get_post };
        self.first_row::<PostRow>(statement, (poster, post_id)).await?.map(post_from).transpose()
    }

    /// `Store::put_status`: compare-and-set, `IF NOT EXISTS`.
    pub(super) async fn create_status(&self, post: &StatusPost, now_ms: u64) -> Result<StatusPut, StoreError> {
        let (kind, users) = audience_columns(&post.audience);
        let values =
            (post.poster, post.post_id, post.payload.as_ref(), kind, users, int(post.posted_ms), int(post.expires_ms), ttl(post.expires_ms, now_ms));
        if self.conditional(&self.ss.create_post, values).await?.applied {
            return Ok(StatusPut::Stored);
        }
        match self.stored_post(post.poster, post.post_id, true).await? {
            Some(existing) => Ok(StatusPut::Exists(Box::new(existing))),
            // Expired by its TTL between the two: the caller's retry stores it.
            None => Err(StoreError::Backend(format!("status post {} vanished after a lost compare-and-set", post.post_id))),
        }
    }

    /// `Store::status_post`.
    pub(super) async fn live_status(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<Option<StatusPost>, StoreError> {
        Ok(self.stored_post(poster, post_id, false).await?.filter(|p| p.live_at(now_ms)))
    }

    /// `Store::status_posts`: one partition read per poster, a chunk of posters at once.
    pub(super) async fn live_statuses(&self, posters: &[UserId], now_ms: u64) -> Result<Vec<StatusPost>, StoreError> {
        let mut out = Vec::new();
        for chunk in posters.chunks(POSTER_CHUNK) {
            let pages = futures_util::future::try_join_all(chunk.iter().map(|poster| async move {
                let mut posts = Vec::new();
                self.all_rows(&self.ss.posts_of, (*poster,), |row: PostRow| {
                    let post = post_from(row)?;
                    if post.live_at(now_ms) {
                        posts.push(post);
                    }
                    Ok(())
                })
                .await?;
                Ok::<_, StoreError>(posts)
            }))
            .await?;
            out.extend(pages.into_iter().flatten());
        }
        Ok(out)
    }

    /// `Store::delete_status`: the post's row, then its views' partition.
    pub(super) async fn delete_status_rows(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<bool, StoreError> {
        let live = self.live_status(poster, post_id, now_ms).await?.is_some();
        self.exec(&self.ss.delete_post, (poster, post_id)).await?;
        self.exec(&self.ss.delete_views, (poster, post_id)).await?;
        Ok(live)
    }

    /// `Store::mark_status_seen`: the view is written only if the post is live and the
    /// viewer has none yet, with the post's TTL.
    pub(super) async fn mark_seen(&self, poster: UserId, post_id: StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
        let Some(post) = self.live_status(poster, post_id, now_ms).await? else { return Ok(false) };
        let seen: Option<(Option<i64>,)> = self.first_row(&self.ss.get_view, (poster, post_id, viewer)).await?;
        if seen.is_none() {
            self.exec(&self.ss.put_view, (poster, post_id, viewer, int(now_ms), ttl(post.expires_ms, now_ms))).await?;
        }
        Ok(true)
    }

    /// `Store::status_views`.
    pub(super) async fn views_of(&self, poster: UserId, post_id: StatusId) -> Result<Vec<StatusView>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.ss.views, (poster, post_id), |(viewer, seen): (UserId, Option<i64>)| {
            out.push(StatusView { viewer, seen_ms: seen.map(uint).unwrap_or(0) });
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// `store copy` of a post or a view, written with the TTL a post expiring then gets
    /// now (an expired one: the margin).
    pub(super) async fn import_status(&self, post: &StatusPost) -> Result<(), StoreError> {
        let (kind, users) = audience_columns(&post.audience);
        let ttl = ttl(post.expires_ms, crate::store::now_ms());
        let values = (post.poster, post.post_id, post.payload.as_ref(), kind, users, int(post.posted_ms), int(post.expires_ms), ttl);
        self.exec(&self.ss.import_post, values).await.map(drop)
    }

    /// `store copy` of a view: kept only with its post (as on the other backends), the
    /// earlier time if one is there already.
    pub(super) async fn import_status_view(&self, poster: UserId, post_id: StatusId, view: &StatusView) -> Result<(), StoreError> {
        let Some(post) = self.stored_post(poster, post_id, false).await? else { return Ok(()) };
        let seen: Option<(Option<i64>,)> = self.first_row(&self.ss.get_view, (poster, post_id, view.viewer)).await?;
        let first = seen.and_then(|(s,)| s).map_or(view.seen_ms, |s| uint(s).min(view.seen_ms));
        let ttl = ttl(post.expires_ms, crate::store::now_ms());
        self.exec(&self.ss.put_view, (poster, post_id, view.viewer, int(first), ttl)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_outlive_their_post_by_the_margin() {
        assert_eq!(super::ttl(86_400_000, 0), 86_400 + 3_600);
        assert_eq!(super::ttl(1_000, 5_000), 3_600, "an expired post: the margin only");
        assert_eq!(super::ttl(u64::MAX, 0), i32::MAX);
    }
}
