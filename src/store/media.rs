//! Media records: what the store keeps about each uploaded file. The bytes themselves live
//! in the blob store (`crate::media::blob`); the store keeps the upload's progress, who
//! owns it, the digest that addresses its blob, and which messages reference it.
//!
//! A record is replaced only by compare-and-set on its `version` (every backend checks it
//! atomically: a redb write transaction, a PostgreSQL `UPDATE … WHERE version = $n`, a
//! ScyllaDB lightweight transaction), so two nodes handling the same upload, or two sweeps
//! running at once, never both win.

use serde::{Deserialize, Serialize};

use super::UserId;
pub use crate::ids::MediaId;

/// What a media record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaKind {
    /// Client-encrypted bytes, readable by the members who can see a message that declares
    /// it (and by its uploader). Deleted once no message references it, after a grace period.
    Attachment,
    /// An image the server made itself (a profile photo or group icon rendition): readable
    /// by any authenticated user, never swept (its owner record, e.g. the profile, decides).
    PublicImage,
}

/// One chunk of an upload in progress, as stored in the blob store under
/// `uploads/{media_id}/{offset:020}-{nonce:016x}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPart {
    /// Bytes in the chunk.
    pub len: u64,
    /// Random suffix of the chunk's key: a chunk written by a PATCH that then lost the race
    /// for the record (another node advanced the upload first) is never mistaken for the
    /// winner's chunk at the same offset.
    pub nonce: u64,
}

/// An uploaded (or uploading) file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Id (also the tus upload id).
    pub media_id: MediaId,
    /// Uploader; quota is counted against them.
    pub owner: UserId,
    /// Attachment or public image.
    pub kind: MediaKind,
    /// Declared total length in bytes (tus `Upload-Length`); counted against the owner's
    /// quota from creation on.
    pub length: u64,
    /// Bytes durably received so far (tus `Upload-Offset`).
    pub offset: u64,
    /// The chunks received so far, in order; their lengths add up to `offset`.
    pub parts: Vec<MediaPart>,
    /// SHA-256 state over the first `offset` bytes (serialized midstate), so completion
    /// knows the digest without reading the chunks again.
    pub hash_state: Vec<u8>,
    /// SHA-256 the client declared at creation (tus metadata `sha256`), checked at completion.
    pub declared_sha256: Option<[u8; 32]>,
    /// SHA-256 of the complete bytes: set when the upload completed (the blob's address).
    pub digest: Option<[u8; 32]>,
    /// tus `Upload-Metadata` as received (echoed by HEAD), at most 4 KiB.
    pub metadata: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// When a sweep first saw this complete attachment without any referencing message
    /// (ms); cleared when it is referenced again. The sweep deletes it a grace period later.
    pub unreferenced_since_ms: Option<u64>,
    /// Compare-and-set version: 1 at creation, +1 on every replacement.
    pub version: u64,
}

impl MediaRecord {
    /// True once every byte is durable in the blob store and the digest is known.
    pub fn is_complete(&self) -> bool {
        self.digest.is_some()
    }
}
