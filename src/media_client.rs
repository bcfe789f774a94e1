//! The Rust client's media calls: a tus 1.0 uploader (creation, chunked PATCH with
//! per-chunk SHA-256, resume from HEAD after an interruption, termination) and downloads
//! (whole, by range, by signed URL). Used by `switchboard client send-file|download`, the
//! tests and `switchboard bench media`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use reqwest::StatusCode;

use crate::client::ClientError;
use crate::ids::MediaId;

/// Default chunk size of uploads: 8 MiB (tus clients pick their own).
pub const DEFAULT_CHUNK: usize = 8 * 1024 * 1024;

/// Media calls for one device (its bearer token) on one server.
#[derive(Clone)]
pub struct MediaClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if response.status().is_success() {
        Ok(response)
    } else {
        let status = response.status().as_u16();
        Err(ClientError::Status { status, body: response.text().await.unwrap_or_default() })
    }
}

impl MediaClient {
    /// A client of `http://host:port` with `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap_or_default();
        Self { http, base: base.into().trim_end_matches('/').to_owned(), token: token.into() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// tus creation of an upload of `length` bytes whose SHA-256 is `sha256` (checked by
    /// the server at completion). Returns the media id.
    pub async fn create(&self, length: u64, sha256: Option<[u8; 32]>) -> Result<MediaId, ClientError> {
        let mut req = self.http.post(self.url("/v1/media")).bearer_auth(&self.token).header("Tus-Resumable", "1.0.0").header("Upload-Length", length);
        if let Some(d) = sha256 {
            req = req.header("Upload-Metadata", format!("sha256 {}", STANDARD.encode(hex::encode(d))));
        }
        let r = check(req.send().await?).await?;
        let location = r.headers().get("Location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        location
            .rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or(ClientError::Status { status: 201, body: format!("bad Location {location:?}") })
    }

    /// tus HEAD: the upload's offset.
    pub async fn offset(&self, id: MediaId) -> Result<u64, ClientError> {
        let r = check(self.http.head(self.url(&format!("/v1/media/{id}"))).bearer_auth(&self.token).header("Tus-Resumable", "1.0.0").send().await?)
            .await?;
        Ok(r.headers().get("Upload-Offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// tus PATCH of `chunk` at `offset` with its SHA-256 as `Upload-Checksum`; returns the
    /// new offset.
    pub async fn patch(&self, id: MediaId, offset: u64, chunk: Bytes) -> Result<u64, ClientError> {
        let checksum = format!("sha256 {}", STANDARD.encode(crate::media::hashing::sha256(&chunk)));
        let r = self
            .http
            .patch(self.url(&format!("/v1/media/{id}")))
            .bearer_auth(&self.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", checksum)
            .body(chunk)
            .send()
            .await?;
        let r = check(r).await?;
        Ok(r.headers().get("Upload-Offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(offset))
    }

    /// Uploads `bytes` from wherever the upload `id` is (its HEAD offset) to the end, in
    /// chunks; after a failed chunk asks HEAD again and retries, up to `retries` times.
    pub async fn resume(&self, id: MediaId, bytes: &Bytes, chunk: usize, retries: usize) -> Result<(), ClientError> {
        let mut failures = 0;
        let mut offset = self.offset(id).await?;
        while (offset as usize) < bytes.len() {
            let end = (offset as usize + chunk.max(1)).min(bytes.len());
            match self.patch(id, offset, bytes.slice(offset as usize..end)).await {
                Ok(next) => offset = next,
                Err(e) if failures < retries && !matches!(e, ClientError::Status { status: 400..=499, .. }) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200 * failures as u64)).await;
                    offset = self.offset(id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates an upload for `bytes` (declaring their SHA-256) and sends it in `chunk`-sized
    /// PATCHes; returns the media id once the server reported it complete.
    pub async fn upload(&self, bytes: Bytes, chunk: usize) -> Result<MediaId, ClientError> {
        let id = self.create(bytes.len() as u64, Some(crate::media::hashing::sha256(&bytes))).await?;
        self.resume(id, &bytes, chunk, 3).await?;
        Ok(id)
    }

    /// tus termination.
    pub async fn terminate(&self, id: MediaId) -> Result<(), ClientError> {
        check(self.http.delete(self.url(&format!("/v1/media/{id}"))).bearer_auth(&self.token).header("Tus-Resumable", "1.0.0").send().await?)
            .await
            .map(drop)
    }

    /// Downloads the whole media.
    pub async fn download(&self, id: MediaId) -> Result<Bytes, ClientError> {
        Ok(check(self.http.get(self.url(&format!("/v1/media/{id}"))).bearer_auth(&self.token).send().await?).await?.bytes().await?)
    }

    /// GET with a `Range: bytes=start-end` header; returns the status and body as is.
    pub async fn download_range(&self, id: MediaId, start: u64, end: u64) -> Result<(StatusCode, Bytes), ClientError> {
        let r = self
            .http
            .get(self.url(&format!("/v1/media/{id}")))
            .bearer_auth(&self.token)
            .header("Range", format!("bytes={start}-{end}"))
            .send()
            .await?;
        Ok((r.status(), r.bytes().await?))
    }

    /// A signed download URL (absolute) and its expiry (Unix seconds).
    pub async fn signed_url(&self, id: MediaId) -> Result<(String, u64), ClientError> {
        #[derive(serde::Deserialize)]
        struct Signed {
            url: String,
            expires: u64,
        }
        let r = check(self.http.get(self.url(&format!("/v1/media/{id}/url"))).bearer_auth(&self.token).send().await?).await?;
        let s: Signed = r.json().await?;
        Ok((self.url(&s.url), s.expires))
    }
}
