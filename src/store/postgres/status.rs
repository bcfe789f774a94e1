//! The PostgreSQL backend's status posts (`migrations/postgres/0012_status.sql`): a post
//! row per (poster, post id), its views in `status_views`, which a foreign key with
//! `ON DELETE CASCADE` ties to the post (a deletion or the purge takes them along; a view
//! marked while its post is being deleted fails instead of outliving it). Every read
//! filters on `expires_ms > now`; `purge` deletes expired posts, oldest first, by the
//! index on `expires_ms`.

use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{PostgresStore, Tx, corrupt, get, int, pg, uint};
use crate::store::status::{StatusPost, StatusPut, StatusView, audience_columns, audience_from_columns};
use crate::store::{StatusId, StoreError, UserId};

const COLUMNS: &str = "poster, post_id, payload, audience_kind, audience_users, posted_ms, expires_ms";

/// How often a post is tried when the row it clashed with vanished before it was read
/// (deleted or purged meanwhile).
const PUT_ATTEMPTS: usize = 3;

fn post_from(row: &Row) -> Result<StatusPost, StoreError> {
    let kind: i16 = get(row, "status_posts", "audience_kind")?;
    let users: Vec<UserId> = get(row, "status_posts", "audience_users")?;
    let audience = i8::try_from(kind)
        .ok()
        .and_then(|k| audience_from_columns(k, users))
        .ok_or_else(|| corrupt("status_posts", format!("unknown audience kind {kind}")))?;
    Ok(StatusPost {
        poster: get(row, "status_posts", "poster")?,
        post_id: get(row, "status_posts", "post_id")?,
        payload: Bytes::from(get::<Vec<u8>>(row, "status_posts", "payload")?),
        audience,
        posted_ms: uint(get(row, "status_posts", "posted_ms")?),
        expires_ms: uint(get(row, "status_posts", "expires_ms")?),
    })
}

/// Inserts a post unless one with its key exists; true if inserted.
async fn insert(tx: &Tx<'_>, post: &StatusPost) -> Result<bool, StoreError> {
    let (kind, users) = audience_columns(&post.audience);
    let inserted = PostgresStore::run(
        tx,
        &format!("INSERT INTO status_posts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (poster, post_id) DO NOTHING"),
        &[&post.poster, &post.post_id, &post.payload.as_ref(), &i16::from(kind), &users, &int(post.posted_ms), &int(post.expires_ms)],
    )
    .await?;
    Ok(inserted == 1)
}

impl PostgresStore {
    /// `Store::put_status`.
    pub(super) async fn put_status_row(&self, post: &StatusPost) -> Result<StatusPut, StoreError> {
        for _ in 0..PUT_ATTEMPTS {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let stored = insert(&tx, post).await?;
            tx.commit().await.map_err(pg)?;
            if stored {
                return Ok(StatusPut::Stored);
            }
            let sql = format!("SELECT {COLUMNS} FROM status_posts WHERE poster = $1 AND post_id = $2");
            if let Some(row) = self.query_opt(&sql, &[&post.poster, &post.post_id]).await? {
                return Ok(StatusPut::Exists(Box::new(post_from(&row)?)));
            }
        }
        Err(StoreError::Backend(format!("status post {} kept vanishing while it was stored", post.post_id)))
    }

    /// `Store::status_post`.
    pub(super) async fn live_status(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<Option<StatusPost>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM status_posts WHERE poster = $1 AND post_id = $2 AND expires_ms > $3");
        self.query_opt(&sql, &[&poster, &post_id, &int(now_ms)]).await?.as_ref().map(post_from).transpose()
    }

    /// `Store::status_posts`: one query for every poster.
    pub(super) async fn live_statuses(&self, posters: &[UserId], now_ms: u64) -> Result<Vec<StatusPost>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM status_posts WHERE poster = ANY($1) AND expires_ms > $2");
        self.query(&sql, &[&posters, &int(now_ms)]).await?.iter().map(post_from).collect()
    }

    /// `Store::delete_status` (its views go by the cascade, in the same statement).
    pub(super) async fn delete_status_row(&self, poster: UserId, post_id: StatusId, now_ms: u64) -> Result<bool, StoreError> {
        let row = self.query_opt("DELETE FROM status_posts WHERE poster = $1 AND post_id = $2 RETURNING expires_ms", &[&poster, &post_id]).await?;
        Ok(row
            .map(|r| get::<i64>(&r, "status_posts", "expires_ms"))
            .transpose()?
            .is_some_and(|expires| crate::cores::status::is_live(uint(expires), now_ms)))
    }

    /// `Store::mark_status_seen`: one statement inserts the view if the post is live and
    /// the viewer has none yet.
    pub(super) async fn mark_seen(&self, poster: UserId, post_id: StatusId, viewer: UserId, now_ms: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO status_views (poster, post_id, viewer, seen_ms) \
                 SELECT poster, post_id, $3::uuid, $4::bigint FROM status_posts WHERE poster = $1 AND post_id = $2 AND expires_ms > $4 \
                 ON CONFLICT (poster, post_id, viewer) DO NOTHING",
            )
            .await
            .map_err(pg)?;
        match client.execute(&statement, &[&poster, &post_id, &viewer, &int(now_ms)]).await {
            Ok(1) => Ok(true),
            // Seen before (or the post is not live): which, the post says.
            Ok(_) => Ok(self.live_status(poster, post_id, now_ms).await?.is_some()),
            // The post was deleted between the statement's read and its foreign-key check.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
            Err(e) => Err(pg(e)),
        }
    }

    /// `Store::status_views`.
    pub(super) async fn views_of(&self, poster: UserId, post_id: StatusId) -> Result<Vec<StatusView>, StoreError> {
        self.query("SELECT viewer, seen_ms FROM status_views WHERE poster = $1 AND post_id = $2", &[&poster, &post_id])
            .await?
            .iter()
            .map(|r| Ok(StatusView { viewer: get(r, "status_views", "viewer")?, seen_ms: uint(get(r, "status_views", "seen_ms")?) }))
            .collect()
    }

    /// Deletes up to `limit` posts expired at `now_ms`, oldest first, with their views.
    pub(super) async fn purge_statuses(&self, now_ms: u64, limit: usize) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM status_posts WHERE (poster, post_id) IN \
             (SELECT poster, post_id FROM status_posts WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2)",
            &[&int(now_ms), &int(limit as u64)],
        )
        .await
        .map(drop)
    }

    /// `store copy` of a post (left alone if there).
    pub(super) async fn import_status(tx: &Tx<'_>, post: &StatusPost) -> Result<(), StoreError> {
        insert(tx, post).await.map(drop)
    }

    /// `store copy` of a view: kept only with its post (a count would show one missing),
    /// the earlier time if it is there already.
    pub(super) async fn import_status_view(tx: &Tx<'_>, poster: UserId, post_id: StatusId, view: &StatusView) -> Result<(), StoreError> {
        Self::run(
            tx,
            "INSERT INTO status_views (poster, post_id, viewer, seen_ms) \
             SELECT poster, post_id, $3::uuid, $4::bigint FROM status_posts WHERE poster = $1 AND post_id = $2 \
             ON CONFLICT (poster, post_id, viewer) DO UPDATE SET seen_ms = LEAST(status_views.seen_ms, EXCLUDED.seen_ms)",
            &[&poster, &post_id, &view.viewer, &int(view.seen_ms)],
        )
        .await
        .map(drop)
    }
}
