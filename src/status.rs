//! Status (WhatsApp's "Status"): the shell of [`crate::cores::status`]. It reads what the
//! core decides from out of the store (both users' contact lists and block lists, the
//! read-receipt settings), takes the time from its [`StatusClock`], and stores posts and
//! views. Served over HTTP by `crate::http::status` (docs/protocol.md §12, "Status").
//!
//! A viewer's feed walks the viewer's own contact list: contacts are mutual for status
//! (the core's rule), so every poster whose posts the viewer may see is among the users
//! the viewer's numbers belong to. The posters' posts are read in one store call, and
//! whether each poster has the viewer's number is one lookup per poster who has a live
//! post.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cores::status::{self, FeedCursor, Refusal, Relation, StatusAudience};
use crate::cores::token_bucket::{BucketRule, Taken};
use crate::ids::{StatusId, UserId};
use crate::store::{StatusPost, StatusPut, StatusView, Store, StoreError};

/// Status settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusConfig {
    /// How far ahead of the system clock the status clock runs, ms (0 in production;
    /// `--dev-status-clock-offset-ms`): tests restart a server a day later without
    /// waiting a day.
    pub clock_offset_ms: u64,
}

/// The time every status decision is taken at: the system clock, plus the configured
/// offset. Posts' times, their expiry and the posting budget all read it, so a server
/// started with an offset sees the day that far ahead consistently.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusClock {
    offset_ms: u64,
}

impl StatusClock {
    /// The clock of `config`.
    pub fn new(config: StatusConfig) -> Self {
        Self { offset_ms: config.clock_offset_ms }
    }

    /// Now, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        crate::store::now_ms().saturating_add(self.offset_ms)
    }
}

/// Why a status request failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The post breaks a rule of [`crate::cores::status`] (size, lists).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// More posts than [`status::POSTS_PER_DAY`] allows now.
    #[error("at most {} status posts a day; retry in {retry_after_secs} s", status::POSTS_PER_DAY)]
    RateLimited {
        /// Seconds until one more post fits.
        retry_after_secs: u64,
    },
    /// No such post for this caller: never posted, deleted, expired, or not meant for
    /// them (not told apart, so that nobody learns a post exists that they may not see).
    #[error("no such status")]
    Unknown,
    /// The post id is the caller's own earlier post, with other content or audience (or
    /// expired): ids are never reused.
    #[error("post_id is already the id of another of your posts")]
    IdTaken,
    /// The store failed.
    #[error("store unavailable")]
    Store(#[from] StoreError),
}

/// A post as its poster sees it: with its viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPost {
    /// The post.
    pub post: StatusPost,
    /// How many viewers it has (0 while the poster's read receipts are off).
    pub view_count: usize,
    /// At most [`status::MAX_VIEWERS_LISTED`] of them, the most recent first.
    pub viewers: Vec<StatusView>,
}

/// The poster's own live posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPosts {
    /// Newest first.
    pub posts: Vec<OwnPost>,
    /// The poster's read receipts are off: viewers are not shown (WhatsApp's rule).
    pub viewers_hidden: bool,
}

/// The status service (cheap to clone).
#[derive(Clone)]
pub struct Statuses {
    store: Arc<dyn Store>,
    clock: StatusClock,
}

/// The posting budget: [`status::POSTS_PER_DAY`] at once, as many again spread over a day.
fn post_rule() -> BucketRule {
    BucketRule::per(status::POSTS_PER_DAY, Duration::from_secs(86_400))
}

impl Statuses {
    /// The service over a store.
    pub fn new(store: Arc<dyn Store>, config: StatusConfig) -> Self {
        Self { store, clock: StatusClock::new(config) }
    }

    /// Posts `payload` (the client's ciphertext) for `audience`. `post_id` names the post
    /// (absent: a fresh one); posting the same id again with the same content and
    /// audience answers the stored post without spending the budget (a retry). Returns
    /// the post (with its viewers) and whether it was stored now.
    ///
    /// Errors: [`StatusError::Refused`] (empty, over 16 KiB, a list over 512 or an allow
    /// list of nobody), [`StatusError::RateLimited`], [`StatusError::IdTaken`],
    /// [`StatusError::Store`].
    pub async fn post(
        &self,
        poster: UserId,
        post_id: Option<StatusId>,
        payload: Bytes,
        audience: StatusAudience,
    ) -> Result<(OwnPost, bool), StatusError> {
        let audience = status::check_post(poster, payload.len(), audience)?;
        let now = self.clock.now_ms();
        let post_id = post_id.unwrap_or_else(StatusId::random);
        let asked = StatusPost { poster, post_id, payload, audience, posted_ms: now, expires_ms: status::expires_at(now) };
        if let Some(stored) = self.store.status_post(poster, post_id, now).await? {
            return Ok((self.retried(&asked, stored, now).await?, false));
        }
        if let Taken::No { retry_after_ms } = self.store.take_token(&format!("status-post/{poster}"), post_rule(), now).await? {
            metrics::counter!("switchboard_status_refused_total", "reason" => "rate_limited").increment(1);
            return Err(StatusError::RateLimited { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) });
        }
        match self.store.put_status(asked.clone(), now).await? {
            StatusPut::Stored => {
                metrics::counter!("switchboard_status_posts_total").increment(1);
                Ok((OwnPost { post: asked, view_count: 0, viewers: Vec::new() }, true))
            }
            // A retry that raced its first attempt, or an expired post's id.
            StatusPut::Exists(stored) => Ok((self.retried(&asked, *stored, now).await?, false)),
        }
    }

    /// The answer to a post whose id is stored already: the stored post if it is the
    /// same one, live; else the id is taken.
    async fn retried(&self, asked: &StatusPost, stored: StatusPost, now: u64) -> Result<OwnPost, StatusError> {
        if stored.payload != asked.payload || stored.audience != asked.audience || !stored.live_at(now) {
            return Err(StatusError::IdTaken);
        }
        self.with_viewers(stored).await
    }

    /// A page of the posts `viewer` may see, newest first (the viewer's own excluded:
    /// see [`Self::mine`]), after `after`, at most `limit` (0: 50; at most 100); and the
    /// cursor of the next page, if there is one.
    pub async fn feed(&self, viewer: UserId, after: Option<FeedCursor>, limit: usize) -> Result<(Vec<StatusPost>, Option<FeedCursor>), StatusError> {
        let now = self.clock.now_ms();
        let Some(me) = self.store.user(viewer).await? else { return Ok((Vec::new(), None)) };
        let blocked: HashSet<UserId> = self.store.blocks_of(viewer).await?.into_iter().chain(self.store.blockers_of(viewer).await?).collect();
        // Whose number the viewer has (the core's "has the poster's number").
        let numbers = self.store.contacts_of(viewer).await?;
        let candidates: Vec<UserId> =
            self.store.users_by_phone(numbers).await?.into_iter().map(|(_, u)| u).filter(|u| *u != viewer && !blocked.contains(u)).collect();
        let posts = self.store.status_posts(candidates, now).await?;
        // Which of the posters have the viewer's number (asked only of those with posts).
        let posters: BTreeSet<UserId> = posts.iter().map(|p| p.poster).collect();
        let mut have_me = HashSet::new();
        for poster in posters {
            if !self.store.known_contacts(poster, vec![me.phone.clone()]).await?.is_empty() {
                have_me.insert(poster);
            }
        }
        let visible: Vec<StatusPost> = posts
            .into_iter()
            .filter(|p| {
                let relation = Relation { in_posters_contacts: have_me.contains(&p.poster), has_posters_number: true, blocked: false };
                status::may_see(p.poster, viewer, &p.audience, relation)
            })
            .collect();
        Ok(status::feed_page(visible, after, limit))
    }

    /// The poster's own live posts, newest first, each with its viewers when the poster's
    /// read receipts are on.
    pub async fn mine(&self, poster: UserId) -> Result<OwnPosts, StatusError> {
        let now = self.clock.now_ms();
        let shown = status::shows_viewers(self.store.privacy(poster).await?.read_receipts);
        let mut posts = self.store.status_posts(vec![poster], now).await?;
        posts.sort_by_key(|p| std::cmp::Reverse((p.posted_ms, p.post_id)));
        let mut out = Vec::with_capacity(posts.len());
        for post in posts {
            out.push(if shown { self.with_viewers(post).await? } else { OwnPost { post, view_count: 0, viewers: Vec::new() } });
        }
        Ok(OwnPosts { posts: out, viewers_hidden: !shown })
    }

    /// `post` with its viewers as listed to its poster.
    async fn with_viewers(&self, post: StatusPost) -> Result<OwnPost, StatusError> {
        let (view_count, viewers) = status::viewers_listed(self.store.status_views(post.poster, post.post_id).await?);
        Ok(OwnPost { post, view_count, viewers })
    }

    /// `viewer` saw `poster`'s post: recorded (once, with the first time) if the viewer
    /// sends read receipts; the poster's own view of their post is not.
    ///
    /// Errors: [`StatusError::Unknown`] if the post is not live or not one the viewer may
    /// see; [`StatusError::Store`].
    pub async fn mark_seen(&self, viewer: UserId, poster: UserId, post_id: StatusId) -> Result<(), StatusError> {
        let now = self.clock.now_ms();
        let post = self.store.status_post(poster, post_id, now).await?.ok_or(StatusError::Unknown)?;
        if viewer == poster {
            return Ok(());
        }
        let relation = self.relation(viewer, poster).await?;
        if !status::may_see(poster, viewer, &post.audience, relation) {
            return Err(StatusError::Unknown);
        }
        if !status::records_view(self.store.privacy(viewer).await?.read_receipts) {
            return Ok(());
        }
        if !self.store.mark_status_seen(poster, post_id, viewer, now).await? {
            // Deleted or expired in between.
            return Err(StatusError::Unknown);
        }
        metrics::counter!("switchboard_status_views_total").increment(1);
        Ok(())
    }

    /// Deletes the caller's post (and its viewers).
    ///
    /// Errors: [`StatusError::Unknown`] if the caller has no such live post;
    /// [`StatusError::Store`].
    pub async fn delete(&self, poster: UserId, post_id: StatusId) -> Result<(), StatusError> {
        if self.store.delete_status(poster, post_id, self.clock.now_ms()).await? { Ok(()) } else { Err(StatusError::Unknown) }
    }

    /// How `viewer` stands to `poster`: blocks either way, and both contact lists.
    async fn relation(&self, viewer: UserId, poster: UserId) -> Result<Relation, StoreError> {
        if self.store.is_blocked(poster, viewer).await? || self.store.is_blocked(viewer, poster).await? {
            return Ok(Relation { blocked: true, ..Relation::default() });
        }
        let (Some(viewer_record), Some(poster_record)) = (self.store.user(viewer).await?, self.store.user(poster).await?) else {
            return Ok(Relation::default());
        };
        Ok(Relation {
            in_posters_contacts: !self.store.known_contacts(poster, vec![viewer_record.phone]).await?.is_empty(),
            has_posters_number: !self.store.known_contacts(viewer, vec![poster_record.phone]).await?.is_empty(),
            blocked: false,
        })
    }
}
