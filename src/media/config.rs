//! Media settings, resolved once by `crate::config` from flags, environment and file.

use std::time::Duration;

use super::blob::BlobSpec;

/// Limits, lifetimes and keys of the media service. Defaults suit one node; every field
/// has a `serve` flag (see `switchboard serve --help`, `media_*`).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where blobs live (`--media-store`).
    pub store: BlobSpec,
    /// Largest upload, bytes (tus `Tus-Max-Size`); larger creations get 413. Default 100 MiB.
    pub max_upload_bytes: u64,
    /// Bytes one user may have stored or reserved by uploads in progress; a creation that
    /// would exceed it gets 413. Default 2 GiB.
    pub quota_bytes: u64,
    /// Uploads one user may create per minute (sustained; the same number as a burst);
    /// beyond it 429 with `Retry-After`. For the whole cluster: the budget is a token
    /// bucket in the store (`Store::take_token`), shared by every node.
    pub uploads_per_minute: u32,
    /// An upload not completed within this time is deleted by the sweep (tus `Upload-Expires`).
    pub upload_ttl: Duration,
    /// A complete attachment no message references is deleted this long after the sweep
    /// first saw it unreferenced.
    pub grace: Duration,
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// HMAC-SHA256 key of signed download URLs (the same on every node and the CDN).
    pub url_key: Vec<u8>,
    /// Lifetime of a signed URL.
    pub url_ttl: Duration,
    /// Largest public image accepted, bytes.
    pub max_image_bytes: usize,
    /// Largest public image accepted, pixels (width × height), checked from the header
    /// before any pixel is decoded (decompression bombs).
    pub max_image_pixels: u64,
}

impl MediaConfig {
    /// Defaults with blobs under `store` and the given URL key.
    pub fn new(store: BlobSpec, url_key: Vec<u8>) -> Self {
        Self {
            store,
            max_upload_bytes: 100 * 1024 * 1024,
            quota_bytes: 2 * 1024 * 1024 * 1024,
            uploads_per_minute: 60,
            upload_ttl: Duration::from_secs(24 * 3600),
            grace: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
            url_key,
            url_ttl: Duration::from_secs(300),
            max_image_bytes: 10 * 1024 * 1024,
            max_image_pixels: 40_000_000,
        }
    }
}
