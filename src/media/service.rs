//! The media service: tus decisions ([`super::tus`]) applied to the message store (media
//! records, compare-and-set) and the blob store (chunks, blobs). The HTTP shell
//! ([`super::http`]) only translates requests and answers.
//!
//! An upload's life: `create` stores a record (quota and rate checked first, nothing else
//! stored on refusal); each `patch` streams its body into a new chunk object while hashing
//! it, publishes the chunk (durable), then advances the record by compare-and-set (offset,
//! chunk list, SHA-256 midstate). The chunk that brings the offset to the length also
//! completes the upload: the digest is checked against the declared one, the blob
//! `blobs/<digest>` is assembled from the chunks (skipped when a blob with that digest is
//! already there: content addressing), and only then does the record say complete. A
//! crash at any point leaves either the old record (the client's HEAD says where to
//! resume; a half-written chunk was never published) or the new one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rand::Rng;
use sha1::Digest as _;

use super::access;
use super::blob::{BlobError, BlobStore};
use super::config::MediaConfig;
use super::hashing::RunningSha256;
use super::public_image::{self, ImageError};
use super::signed::{self, SignedUrlError};
use super::sweep::{self, Action, SweepReport};
use super::tus::{self, ChecksumAlgorithm, TusError};
use crate::ids::{MediaId, UserId};
use crate::store::{BucketRule, MediaKind, MediaPart, MediaRecord, Store, StoreError, Taken, now_ms};

/// Why a media request failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A tus refusal (its status is the spec's).
    #[error(transparent)]
    Tus(#[from] TusError),
    /// No such media (never created, expired, terminated; or, to anyone but its uploader,
    /// an upload not complete yet).
    #[error("no such media")]
    NotFound,
    /// The uploader asked to download an upload that is not complete yet.
    #[error("the upload is not complete: {offset} of {length} bytes (HEAD says how far it is)")]
    Incomplete {
        /// Bytes stored.
        offset: u64,
        /// Declared length.
        length: u64,
    },
    /// The caller may not do this to this media.
    #[error("not allowed for this media")]
    Forbidden,
    /// Another request is writing this upload on this node.
    #[error("another request is writing this upload")]
    Locked,
    /// The request conflicts with the media's state.
    #[error("{0}")]
    Conflict(&'static str),
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A public image was refused.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A signed URL was refused.
    #[error(transparent)]
    Signed(#[from] SignedUrlError),
}

/// Shared state of the media endpoints and the sweep. Cloning shares it.
#[derive(Clone)]
pub struct MediaService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    config: Arc<MediaConfig>,
    /// Uploads a request of this node is writing (a second PATCH waits for nothing: 423).
    writing: Arc<Mutex<HashSet<MediaId>>>,
}

/// Releases an upload's local write lock when dropped.
struct WriteGuard {
    set: Arc<Mutex<HashSet<MediaId>>>,
    id: MediaId,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// The headers of a tus PATCH that decide whether its body is taken.
#[derive(Debug, Clone, Copy)]
pub struct PatchRequest<'a> {
    /// `Content-Type` (must be `application/offset+octet-stream`).
    pub content_type: Option<&'a str>,
    /// `Upload-Offset`.
    pub offset: u64,
    /// `Content-Length`, when the client sent one.
    pub content_length: Option<u64>,
    /// `Upload-Checksum`, if any.
    pub checksum: Option<&'a str>,
}

/// Where a download's bytes are.
#[derive(Debug, Clone, Copy)]
pub struct Download {
    /// The blob's address.
    pub digest: [u8; 32],
    /// Its size, bytes.
    pub size: u64,
}

/// A stored rendition of a public image.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StoredRendition {
    /// Edge length, px.
    pub size: u32,
    /// Its media id (download at `/v1/media/{id}`).
    #[schema(value_type = String, format = Uuid)]
    pub media_id: MediaId,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of the JPEG (its blob's address).
    #[serde(skip)]
    pub digest: [u8; 32],
}

impl MediaService {
    /// A service over `store` and the blob store `config.store` names.
    pub fn new(store: Arc<dyn Store>, config: MediaConfig) -> Result<Self, BlobError> {
        let blobs = BlobStore::open(&config.store)?;
        Ok(Self { store, blobs, config: Arc::new(config), writing: Arc::default() })
    }

    /// The settings in force.
    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn lock(&self, id: MediaId) -> Result<WriteGuard, MediaError> {
        let mut set = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(id) {
            return Err(MediaError::Locked);
        }
        Ok(WriteGuard { set: self.writing.clone(), id })
    }

    /// tus creation: a new upload of `length` bytes for `owner`. Size, rate and quota are
    /// checked before anything is stored; a creation refused for its size (decided from
    /// the request alone) costs no token of the rate.
    pub async fn create(&self, owner: UserId, length: u64, metadata: Option<&str>) -> Result<MediaRecord, MediaError> {
        let parsed = tus::parse_metadata(metadata.unwrap_or(""))?;
        let declared_sha256 = tus::declared_sha256(&parsed)?;
        if let Err(e) = tus::decide_create(length, self.config.max_upload_bytes, 0, u64::MAX) {
            metrics::counter!("switchboard_media_refused_total", "reason" => "size").increment(1);
            return Err(e.into());
        }
        self.take_upload_token(owner).await?;
        let used = self.store.media_usage(owner).await?;
        if let Err(e) = tus::decide_create(length, self.config.max_upload_bytes, used, self.config.quota_bytes) {
            let reason = if matches!(e, TusError::QuotaExceeded { .. }) { "quota" } else { "size" };
            metrics::counter!("switchboard_media_refused_total", "reason" => reason).increment(1);
            return Err(e.into());
        }
        let record = MediaRecord {
            media_id: MediaId::random(),
            owner,
            kind: MediaKind::Attachment,
            length,
            offset: 0,
            parts: Vec::new(),
            hash_state: Vec::new(),
            declared_sha256,
            digest: None,
            metadata: metadata.unwrap_or("").to_owned(),
            created_ms: now_ms(),
            unreferenced_since_ms: None,
            version: 1,
        };
        self.create_within_quota(&record).await?;
        metrics::counter!("switchboard_media_uploads_created_total").increment(1);
        if length == 0 {
            // Nothing will ever be PATCHed: complete it now.
            let mut next = record;
            next.version += 1;
            return self.complete(next, RunningSha256::default()).await;
        }
        Ok(record)
    }

    /// The record of an upload, for its owner (tus HEAD).
    pub async fn upload_of(&self, user: UserId, id: MediaId) -> Result<MediaRecord, MediaError> {
        let record = self.store.media(id).await?.ok_or(MediaError::NotFound)?;
        if record.owner != user {
            return Err(MediaError::Forbidden);
        }
        Ok(record)
    }

    /// When an upload expires (tus `Upload-Expires`), ms since the epoch.
    pub fn expires_ms(&self, record: &MediaRecord) -> u64 {
        record.created_ms.saturating_add(self.config.upload_ttl.as_millis() as u64)
    }

    /// tus PATCH: appends `body` at `chunk.offset`. Returns the record after the chunk
    /// (complete if it was the last).
    pub async fn patch<S, E>(&self, user: UserId, id: MediaId, chunk: PatchRequest<'_>, mut body: S) -> Result<MediaRecord, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let PatchRequest { content_type, offset, content_length, checksum } = chunk;
        let _guard = self.lock(id)?;
        let record = self.upload_of(user, id).await?;
        if record.is_complete() {
            return Err(TusError::OffsetMismatch { given: offset, current: record.offset }.into());
        }
        tus::decide_patch(content_type, offset, record.offset, record.length, content_length)?;
        let checksum = checksum.map(tus::parse_checksum).transpose()?;
        let started = Instant::now();
        let mut running =
            RunningSha256::restore(&record.hash_state).map_err(|_| StoreError::Corrupt { table: "media", detail: "hash state".into() })?;
        let mut sha1 = sha1::Sha1::new();
        let mut sha256 = sha2::Sha256::new();
        let nonce: u64 = rand::rng().random();
        let key = BlobStore::part_key(id, record.offset, nonce);
        let mut writer = self.blobs.writer(&key).await?;
        let room = record.length - record.offset;
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            if writer.written() + chunk.len() as u64 > room {
                writer.abort().await;
                return Err(TusError::PastLength { length: record.length }.into());
            }
            running.update(&chunk);
            match checksum.as_ref().map(|c| c.algorithm) {
                Some(ChecksumAlgorithm::Sha1) => sha1.update(&chunk),
                Some(ChecksumAlgorithm::Sha256) => sha2::Digest::update(&mut sha256, &chunk),
                None => {}
            }
            if let Err(e) = writer.write(chunk).await {
                writer.abort().await;
                metrics::counter!("switchboard_media_store_errors_total", "op" => "write").increment(1);
                return Err(e.into());
            }
        }
        if let Some(c) = &checksum {
            let actual: Vec<u8> = match c.algorithm {
                ChecksumAlgorithm::Sha1 => sha1.finalize().to_vec(),
                ChecksumAlgorithm::Sha256 => sha256.finalize().to_vec(),
            };
            if broken.is_some() {
                // A checksummed chunk is all or nothing: a partial one cannot be verified.
                writer.abort().await;
                return Ok(record);
            }
            if actual != c.expected {
                writer.abort().await;
                metrics::counter!("switchboard_media_refused_total", "reason" => "checksum").increment(1);
                return Err(TusError::ChecksumMismatch("chunk").into());
            }
        }
        if let Some(reason) = &broken {
            tracing::debug!(media = %id, received = writer.written(), reason = %reason, "upload body ended early; keeping what arrived");
        }
        let written = writer.written();
        if written == 0 {
            writer.abort().await;
            return Ok(record);
        }
        if let Err(e) = writer.finish().await {
            metrics::counter!("switchboard_media_store_errors_total", "op" => "write").increment(1);
            return Err(e.into());
        }
        metrics::counter!("switchboard_media_bytes_in_total").increment(written);
        let mut next = record.clone();
        next.offset += written;
        next.parts.push(MediaPart { len: written, nonce });
        next.hash_state = running.save();
        next.version += 1;
        metrics::histogram!("switchboard_media_patch_seconds").record(started.elapsed().as_secs_f64());
        if next.offset == next.length {
            return self.complete(next, running).await;
        }
        if !self.store.update_media(next.clone()).await? {
            // Another node advanced it first: our chunk is not in its list.
            let _ = self.blobs.delete(&key).await;
            let current = self.store.media(id).await?.ok_or(MediaError::NotFound)?;
            return Err(TusError::OffsetMismatch { given: offset, current: current.offset }.into());
        }
        Ok(next)
    }

    /// Finishes an upload whose bytes are all in chunks: check the digest, assemble the
    /// blob (unless one with that digest exists), mark the record complete, drop the chunks.
    async fn complete(&self, mut record: MediaRecord, running: RunningSha256) -> Result<MediaRecord, MediaError> {
        let digest = running.finish();
        let id = record.media_id;
        if record.declared_sha256.is_some_and(|d| d != digest) {
            // The whole file is refused and nothing is kept.
            let current = self.store.media(id).await?;
            if let Some(c) = current {
                self.store.delete_media(id, c.version).await?;
            }
            self.blobs.delete_prefix(&BlobStore::upload_prefix(id)).await?;
            metrics::counter!("switchboard_media_refused_total", "reason" => "checksum").increment(1);
            return Err(TusError::ChecksumMismatch("the file's SHA-256 differs from the declared sha256").into());
        }
        self.ensure_blob(&record, &digest).await?;
        record.digest = Some(digest);
        if !self.store.update_media(record.clone()).await? {
            let current = self.store.media(id).await?.ok_or(MediaError::NotFound)?;
            if !current.is_complete() {
                return Err(TusError::OffsetMismatch { given: record.offset, current: current.offset }.into());
            }
            record = current;
        }
        // A sweep on another node may have deleted a blob with this digest between our
        // check and the record above (its last other record was being deleted): look
        // again now that our record protects it, and rebuild it from the chunks if so.
        if self.blobs.head(&BlobStore::blob_key(&digest)).await?.is_none() {
            self.ensure_blob(&record, &digest).await?;
        }
        self.blobs.delete_prefix(&BlobStore::upload_prefix(id)).await?;
        metrics::counter!("switchboard_media_uploads_completed_total").increment(1);
        metrics::histogram!("switchboard_media_upload_seconds").record(now_ms().saturating_sub(record.created_ms) as f64 / 1000.0);
        Ok(record)
    }

    /// Makes `blobs/<digest>` hold the upload's bytes (durable when this returns).
    async fn ensure_blob(&self, record: &MediaRecord, digest: &[u8; 32]) -> Result<(), MediaError> {
        let target = BlobStore::blob_key(digest);
        if self.blobs.head(&target).await?.is_some() {
            return Ok(());
        }
        let id = record.media_id;
        match record.parts.as_slice() {
            [] => self.blobs.put(&target, Bytes::new()).await?,
            [only] => self.blobs.copy(&BlobStore::part_key(id, 0, only.nonce), &target).await?,
            parts => {
                let mut writer = self.blobs.writer(&target).await?;
                let mut offset = 0;
                for part in parts {
                    let mut stream = self.blobs.read(&BlobStore::part_key(id, offset, part.nonce), None).await?;
                    while let Some(bytes) = stream.next().await {
                        match bytes {
                            Ok(b) => writer.write(b).await?,
                            Err(e) => {
                                writer.abort().await;
                                return Err(e.into());
                            }
                        }
                    }
                    offset += part.len;
                }
                writer.finish().await?;
            }
        }
        Ok(())
    }

    /// tus termination: deletes an upload in progress, or a complete media no message
    /// references (its blob goes with the sweep's rules: when no record has its digest).
    pub async fn terminate(&self, user: UserId, id: MediaId) -> Result<(), MediaError> {
        let _guard = self.lock(id)?;
        let record = self.upload_of(user, id).await?;
        if record.is_complete() && !self.store.media_refs(id, 1).await?.is_empty() {
            return Err(MediaError::Conflict("messages reference this media"));
        }
        if !self.store.delete_media(id, record.version).await? {
            return Err(MediaError::Conflict("the media changed meanwhile; retry"));
        }
        self.blobs.delete_prefix(&BlobStore::upload_prefix(id)).await?;
        if let Some(d) = record.digest {
            self.delete_blob_if_unused(&d).await?;
        }
        Ok(())
    }

    /// Deletes one of `owner`'s public images (a profile photo's rendition that nothing
    /// names any more: a photo replaced or removed, an account deleted), record then blob
    /// (if no other record has its digest), so that it is no longer served. Another
    /// user's media, or one that is not a public image, is left alone.
    pub async fn delete_public_image(&self, owner: UserId, id: MediaId) -> Result<(), MediaError> {
        let _guard = self.lock(id)?;
        let Some(record) = self.store.media(id).await? else { return Ok(()) };
        if record.owner != owner || record.kind != MediaKind::PublicImage {
            return Ok(());
        }
        if self.store.delete_media(id, record.version).await?
            && let Some(d) = record.digest
        {
            self.delete_blob_if_unused(&d).await?;
        }
        Ok(())
    }

    async fn delete_blob_if_unused(&self, digest: &[u8; 32]) -> Result<bool, MediaError> {
        if self.store.media_with_digest(*digest, 1).await?.is_empty() {
            self.blobs.delete(&BlobStore::blob_key(digest)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A download by `user`: where the bytes are, if they may read them, and whether it is
    /// a public image (a JPEG) rather than ciphertext.
    pub async fn open_download(&self, user: UserId, id: MediaId) -> Result<(Download, bool), MediaError> {
        let record = self.store.media(id).await?.ok_or(MediaError::NotFound)?;
        let Some(digest) = record.digest else {
            // Its uploader learns why; anyone else learns nothing of an upload in progress.
            return Err(if record.owner == user {
                MediaError::Incomplete { offset: record.offset, length: record.length }
            } else {
                MediaError::NotFound
            });
        };
        if !access::may_read(self.store.as_ref(), user, &record).await? {
            return Err(MediaError::Forbidden);
        }
        Ok((Download { digest, size: record.length }, record.kind == MediaKind::PublicImage))
    }

    /// A signed URL for `user` to download `id` (path and query) and its expiry (Unix s).
    pub async fn signed_url(&self, user: UserId, id: MediaId) -> Result<(String, u64), MediaError> {
        let (download, _) = self.open_download(user, id).await?;
        let expires = now_ms() / 1000 + self.config.url_ttl.as_secs();
        Ok((signed::url(&self.config.url_key, &hex::encode(download.digest), expires), expires))
    }

    /// Checks a signed URL; returns the blob's digest and size.
    pub async fn check_signed(&self, digest_hex: &str, expires: u64, sig: &str) -> Result<Download, MediaError> {
        signed::verify(&self.config.url_key, digest_hex, expires, sig, now_ms() / 1000)?;
        let digest: [u8; 32] = hex::decode(digest_hex).ok().and_then(|d| d.try_into().ok()).ok_or(MediaError::NotFound)?;
        let meta = self.blobs.head(&BlobStore::blob_key(&digest)).await?.ok_or(MediaError::NotFound)?;
        Ok(Download { digest, size: meta.size })
    }

    /// The bytes of a blob in `range` (inclusive bounds), as a stream.
    pub async fn read(
        &self,
        download: &Download,
        range: Option<(u64, u64)>,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, BlobError>>, MediaError> {
        let range = range.map(|(s, e)| s..e + 1);
        let stream = self.blobs.read(&BlobStore::blob_key(&download.digest), range).await.inspect_err(|_| {
            metrics::counter!("switchboard_media_store_errors_total", "op" => "read").increment(1);
        })?;
        Ok(stream)
    }

    /// Turns an uploaded photo into public renditions ([`public_image::SIZES`]), stored as
    /// public media owned by `owner` (counted in their quota). The accounts service keeps
    /// the ids on the profile or group record.
    pub async fn store_public_image(&self, owner: UserId, bytes: &[u8]) -> Result<Vec<StoredRendition>, MediaError> {
        self.take_upload_token(owner).await?;
        let (max_bytes, max_pixels) = (self.config.max_image_bytes, self.config.max_image_pixels);
        let input = bytes.to_vec();
        // Decoding is CPU work: off the async workers.
        let renditions = tokio::task::spawn_blocking(move || public_image::process(&input, max_bytes, max_pixels))
            .await
            .map_err(|e| ImageError::Encode(e.to_string()))??;
        let total: u64 = renditions.iter().map(|r| r.jpeg.len() as u64).sum();
        let used = self.store.media_usage(owner).await?;
        tus::decide_create(total, self.config.max_upload_bytes, used, self.config.quota_bytes)?;
        let mut out: Vec<StoredRendition> = Vec::new();
        for r in renditions {
            let digest = super::hashing::sha256(&r.jpeg);
            let key = BlobStore::blob_key(&digest);
            if self.blobs.head(&key).await?.is_none() {
                self.blobs.put(&key, Bytes::from(r.jpeg.clone())).await?;
            }
            let record = MediaRecord {
                media_id: MediaId::random(),
                owner,
                kind: MediaKind::PublicImage,
                length: r.jpeg.len() as u64,
                offset: r.jpeg.len() as u64,
                parts: Vec::new(),
                hash_state: Vec::new(),
                declared_sha256: None,
                digest: Some(digest),
                metadata: format!("size {}", r.size),
                created_ms: now_ms(),
                unreferenced_since_ms: None,
                version: 1,
            };
            if let Err(e) = self.create_within_quota(&record).await {
                // All renditions or none: the ones stored before this one go too.
                for earlier in &out {
                    self.store.delete_media(earlier.media_id, 1).await?;
                }
                for earlier in out.iter().map(|o| o.digest).chain([digest]) {
                    self.delete_blob_if_unused(&earlier).await?;
                }
                return Err(e);
            }
            out.push(StoredRendition { size: r.size, media_id: record.media_id, bytes: record.length, digest });
        }
        Ok(out)
    }

    /// Takes one of `owner`'s upload creations from their rate bucket, which the store
    /// keeps for the whole cluster (`media-create/<user id>`): a user gets
    /// `uploads_per_minute` however many nodes they spread their requests over.
    async fn take_upload_token(&self, owner: UserId) -> Result<(), MediaError> {
        let key = format!("media-create/{owner}");
        match self.store.take_token(&key, BucketRule::per_minute(self.config.uploads_per_minute), now_ms()).await? {
            Taken::Yes => Ok(()),
            Taken::No { retry_after_ms } => {
                metrics::counter!("switchboard_media_refused_total", "reason" => "rate").increment(1);
                Err(TusError::RateLimited { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) }.into())
            }
        }
    }

    /// Stores a new record, then counts its owner's usage with it: over the quota, the
    /// record is deleted again and the creation refused. Counting after the insert is what
    /// makes the quota hold under concurrent creations on any number of nodes: of two
    /// creations racing for the last bytes, each count sees the other's record if it was
    /// inserted first, so at most the ones that fit survive (both may be refused; never
    /// both kept). The caller checked the quota before too, so a plain refusal stores nothing.
    async fn create_within_quota(&self, record: &MediaRecord) -> Result<(), MediaError> {
        self.store.create_media(record.clone()).await?;
        let used = self.store.media_usage(record.owner).await?;
        if used <= self.config.quota_bytes {
            return Ok(());
        }
        self.store.delete_media(record.media_id, record.version).await?;
        metrics::counter!("switchboard_media_refused_total", "reason" => "quota").increment(1);
        Err(TusError::QuotaExceeded { used: used.saturating_sub(record.length), quota: self.config.quota_bytes, length: record.length }.into())
    }

    /// One sweep over every media record (see [`sweep`]), then over chunk sets whose
    /// upload record is gone. Safe to run on every node at once.
    pub async fn sweep_once(&self) -> Result<SweepReport, MediaError> {
        const PAGE: usize = 500;
        let mut report = SweepReport::default();
        let mut after = None;
        loop {
            let page = self.store.media_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.media_id);
            let full = page.len() == PAGE;
            for record in page {
                report.examined += 1;
                self.sweep_record(record, &mut report).await?;
            }
            if !full {
                break;
            }
        }
        // Chunks of uploads whose record is gone or complete (a crash between two steps).
        let mut seen = HashSet::new();
        for (key, _) in self.blobs.list("uploads").await? {
            let Some(dir) = key.strip_prefix("uploads/").and_then(|k| k.split('/').next()) else { continue };
            let Ok(uuid) = uuid::Uuid::parse_str(dir) else { continue };
            let id = MediaId::from_uuid(uuid);
            if !seen.insert(id) {
                continue;
            }
            if self.store.media(id).await?.is_none_or(|r| r.is_complete()) {
                self.blobs.delete_prefix(&BlobStore::upload_prefix(id)).await?;
                report.orphan_uploads += 1;
            }
        }
        metrics::counter!("switchboard_media_swept_total", "what" => "upload").increment(report.expired_uploads);
        metrics::counter!("switchboard_media_swept_total", "what" => "media").increment(report.deleted);
        metrics::counter!("switchboard_media_swept_total", "what" => "blob").increment(report.blobs_deleted);
        Ok(report)
    }

    async fn sweep_record(&self, record: MediaRecord, report: &mut SweepReport) -> Result<(), MediaError> {
        let referenced = record.is_complete() && record.kind == MediaKind::Attachment && !self.store.media_refs(record.media_id, 1).await?.is_empty();
        let now = now_ms();
        let decision = sweep::decide(&record, referenced, now, self.config.upload_ttl, self.config.grace);
        match decision {
            Action::Keep => {}
            Action::ExpireUpload => {
                if self.store.delete_media(record.media_id, record.version).await? {
                    self.blobs.delete_prefix(&BlobStore::upload_prefix(record.media_id)).await?;
                    report.expired_uploads += 1;
                } else {
                    report.lost_races += 1;
                }
            }
            Action::Mark(_) | Action::Unmark => {
                let marking = matches!(decision, Action::Mark(_));
                let mut next = record;
                next.unreferenced_since_ms = if let Action::Mark(at) = decision { Some(at) } else { None };
                next.version += 1;
                if self.store.update_media(next).await? {
                    if marking {
                        report.marked += 1;
                    } else {
                        report.unmarked += 1;
                    }
                } else {
                    report.lost_races += 1;
                }
            }
            Action::Delete => {
                // Deleted only with the version (and so the mark) the decision saw: a
                // message that declared it meanwhile unmarked it, and this write fails.
                if self.store.delete_media(record.media_id, record.version).await? {
                    report.deleted += 1;
                    if let Some(d) = record.digest
                        && self.delete_blob_if_unused(&d).await?
                    {
                        report.blobs_deleted += 1;
                    }
                } else {
                    report.lost_races += 1;
                }
            }
        }
        Ok(())
    }

    /// The blob store's state for `/healthz`.
    pub async fn health(&self) -> serde_json::Value {
        let started = Instant::now();
        let ping = tokio::time::timeout(Duration::from_secs(2), self.blobs.ping()).await;
        let error = match &ping {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        metrics::gauge!("switchboard_media_store_up", "backend" => self.blobs.backend()).set(if error.is_none() { 1.0 } else { 0.0 });
        serde_json::json!({
            "backend": self.blobs.backend(),
            "ok": error.is_none(),
            "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
            "error": error,
            "max_upload_bytes": self.config.max_upload_bytes,
        })
    }
}
