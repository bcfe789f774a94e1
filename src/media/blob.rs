//! The blob store: where the bytes of media live, behind the `object_store` crate's one
//! trait (`ObjectStore`), so the same code runs on a local directory and on S3-compatible
//! object storage (AWS S3, MinIO, Ceph, R2 …). Configured like `--store`:
//!
//! - `fs:<dir>` (default `fs:<data dir>/media`): files under `dir`, each write fsynced with
//!   its directory before it returns (`LocalFileSystem::with_fsync`), so a chunk or blob
//!   reported stored survives a crash or power loss.
//! - `s3://bucket[/prefix][?endpoint=http://host:port&region=…&access_key_id=…&secret_access_key=…]`:
//!   credentials and region may also come from the usual `AWS_*` environment variables.
//!   A PUT or a completed multipart upload that S3 acknowledged is durable.
//!
//! Layout: `blobs/<sha256 hex>` (content-addressed ciphertext, and public image
//! renditions), `uploads/<media id>/<offset:020>-<nonce:016x>` (chunks of an upload in
//! progress, deleted at completion or expiry).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::ids::MediaId;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such object.
    #[error("blob not found: {0}")]
    NotFound(String),
    /// The store failed (I/O, network, the server's error): the operation may or may not
    /// have happened.
    #[error("blob store: {0}")]
    Backend(String),
    /// A `--media-store` value that cannot be used.
    #[error("invalid media store {0}")]
    Spec(String),
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => BlobError::NotFound(path),
            other => BlobError::Backend(other.to_string()),
        }
    }
}

/// Where blobs live (`--media-store`).
#[derive(Clone, PartialEq, Eq)]
pub enum BlobSpec {
    /// A local directory.
    Fs(PathBuf),
    /// An S3-compatible bucket.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix inside the bucket ("" for none).
        prefix: String,
        /// Endpoint URL (MinIO, Ceph, R2 …); AWS when unset.
        endpoint: Option<String>,
        /// Region (default from the environment, else us-east-1).
        region: Option<String>,
        /// Access key id (default from the environment).
        access_key_id: Option<String>,
        /// Secret access key (default from the environment).
        secret_access_key: Option<String>,
    },
}

impl fmt::Debug for BlobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for BlobSpec {
    /// The spec as shown to operators: never the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobSpec::Fs(dir) => write!(f, "fs:{}", dir.display()),
            BlobSpec::S3 { bucket, prefix, endpoint, .. } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                if let Some(e) = endpoint {
                    write!(f, " at {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl BlobSpec {
    /// Parses `fs:<dir>` or `s3://bucket[/prefix][?endpoint=…&region=…&access_key_id=…&secret_access_key=…]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("fs:") {
            if dir.is_empty() {
                return Err("fs: needs a directory".into());
            }
            return Ok(BlobSpec::Fs(PathBuf::from(dir)));
        }
        if s.starts_with("s3://") {
            let url = url::Url::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
            let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| format!("{s:?}: no bucket"))?.to_owned();
            let prefix = url.path().trim_matches('/').to_owned();
            let (mut endpoint, mut region, mut access_key_id, mut secret_access_key) = (None, None, None, None);
            for (k, v) in url.query_pairs() {
                let v = Some(v.into_owned());
                match k.as_ref() {
                    "endpoint" => endpoint = v,
                    "region" => region = v,
                    "access_key_id" => access_key_id = v,
                    "secret_access_key" => secret_access_key = v,
                    other => return Err(format!("{s:?}: unknown parameter {other}")),
                }
            }
            return Ok(BlobSpec::S3 { bucket, prefix, endpoint, region, access_key_id, secret_access_key });
        }
        Err(format!("media store {s:?}: expected fs:<dir> or s3://bucket[/prefix]?endpoint=…"))
    }
}

/// A blob store handle; cloning shares it.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    backend: &'static str,
    /// The directory of an `fs:` store (where half-written staging files may be left).
    local_root: Option<PathBuf>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobStore({})", self.backend)
    }
}

/// Size of the parts a streamed write sends (S3's minimum part size is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

/// An object being written in parts; nothing is visible until [`BlobWriter::finish`].
pub struct BlobWriter {
    upload: WriteMultipart,
    written: u64,
}

impl BlobWriter {
    /// Appends bytes (sent as parts of `PART` bytes, at most two in flight).
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        self.written += bytes.len() as u64;
        self.upload.wait_for_capacity(2).await?;
        self.upload.put(bytes);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Publishes the object: durable when this returns.
    pub async fn finish(self) -> Result<(), BlobError> {
        self.upload.finish().await?;
        Ok(())
    }

    /// Gives up; nothing becomes visible.
    pub async fn abort(self) {
        let _ = self.upload.abort().await;
    }
}

/// Bytes read per blocking task when streaming a local file.
const FILE_PIECE: u64 = 1024 * 1024;

/// Streams `range` of an open file in [`FILE_PIECE`] pieces, each read on the blocking pool.
fn file_stream(file: std::fs::File, range: Range<u64>) -> BoxStream<'static, Result<Bytes, BlobError>> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| BlobError::Backend(e.to_string());
    futures_util::stream::try_unfold((Some(file), range.start, range.end), move |(file, at, end)| async move {
        let Some(mut file) = file else { return Ok(None) };
        if at >= end {
            return Ok(None);
        }
        let want = (end - at).min(FILE_PIECE);
        let (file, piece) = tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::Start(at))?;
            let mut buf = Vec::with_capacity(want as usize);
            (&mut file).take(want).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(|e| BlobError::Backend(e.to_string()))?
        .map_err(io)?;
        if piece.is_empty() {
            return Err(BlobError::Backend("file shorter than its metadata".into()));
        }
        let next = at + piece.len() as u64;
        Ok(Some((Bytes::from(piece), (Some(file), next, end))))
    })
    .boxed()
}

/// Size and validator of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Bytes.
    pub size: u64,
    /// Last modification, ms since the epoch.
    pub modified_ms: u64,
}

impl BlobStore {
    /// Opens the store `spec` names (creating the directory of `fs:`).
    pub fn open(spec: &BlobSpec) -> Result<Self, BlobError> {
        match spec {
            BlobSpec::Fs(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| BlobError::Spec(format!("{}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| BlobError::Spec(e.to_string()))?.with_fsync(true);
                Ok(Self { inner: Arc::new(fs), prefix: Path::default(), backend: "fs", local_root: Some(dir.clone()) })
            }
            BlobSpec::S3 { bucket, prefix, endpoint, region, access_key_id, secret_access_key } => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(e) = endpoint {
                    builder = builder.with_endpoint(e).with_allow_http(e.starts_with("http://")).with_virtual_hosted_style_request(false);
                }
                builder = builder.with_region(region.clone().or_else(|| std::env::var("AWS_REGION").ok()).unwrap_or_else(|| "us-east-1".into()));
                if let Some(k) = access_key_id {
                    builder = builder.with_access_key_id(k);
                }
                if let Some(k) = secret_access_key {
                    builder = builder.with_secret_access_key(k);
                }
                let s3 = builder.build().map_err(|e| BlobError::Spec(e.to_string()))?;
                Ok(Self { inner: Arc::new(s3), prefix: Path::from(prefix.as_str()), backend: "s3", local_root: None })
            }
        }
    }

    /// "fs" or "s3", for health and metrics.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() { Path::from(key) } else { Path::from(format!("{}/{key}", self.prefix)) }
    }

    /// Key of the blob whose ciphertext has this SHA-256.
    pub fn blob_key(digest: &[u8; 32]) -> String {
        format!("blobs/{}", hex::encode(digest))
    }

    /// Key prefix of an upload's chunks.
    pub fn upload_prefix(media: MediaId) -> String {
        format!("uploads/{}", media.uuid().simple())
    }

    /// Key of one chunk of an upload.
    pub fn part_key(media: MediaId, offset: u64, nonce: u64) -> String {
        format!("{}/{offset:020}-{nonce:016x}", Self::upload_prefix(media))
    }

    /// Starts writing `key` in parts.
    pub async fn writer(&self, key: &str) -> Result<BlobWriter, BlobError> {
        let upload = self.inner.put_multipart(&self.path(key)).await?;
        Ok(BlobWriter { upload: WriteMultipart::new_with_chunk_size(upload, PART), written: 0 })
    }

    /// Writes `key` in one request; durable when it returns.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.inner.put(&self.path(key), bytes.into()).await?;
        Ok(())
    }

    /// Size and time of `key`, None if absent.
    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(BlobMeta { size: meta.size, modified_ms: meta.last_modified.timestamp_millis().max(0) as u64 })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The bytes of `key` in `range` (all of it when None), as a stream.
    pub async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = self.inner.get_opts(&self.path(key), options).await?;
        match result.payload {
            // object_store reads a local file 8 KiB per blocking task; a download of
            // 100 MiB would be 12,800 thread hand-offs. Read it in 1 MiB pieces instead.
            GetResultPayload::File(file, _) => Ok(file_stream(file, result.range)),
            GetResultPayload::Stream(stream) => Ok(stream.map(|r| r.map_err(BlobError::from)).boxed()),
        }
    }

    /// All the bytes of `key` (for small objects).
    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        Ok(self.inner.get(&self.path(key)).await?.bytes().await?)
    }

    /// Copies `from` to `to` (server-side on S3, a hard link on a filesystem).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), BlobError> {
        self.inner.copy(&self.path(from), &self.path(to)).await?;
        Ok(())
    }

    /// Deletes `key`; deleting what is not there is fine.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key under `prefix` (relative to the store's own prefix), with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let base = self.path(prefix);
        let strip = if self.prefix.as_ref().is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out = Vec::new();
        let mut stream = self.inner.list(Some(&base));
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            let key = meta.location.as_ref().strip_prefix(strip.as_str()).unwrap_or(meta.location.as_ref()).to_owned();
            out.push((key, meta.size));
        }
        Ok(out)
    }

    /// Deletes every key under `prefix`. On a filesystem the directory goes too, with any
    /// staging file a crashed write left in it (`LocalFileSystem` never lists those). On
    /// S3 an interrupted multipart upload is invisible here: the bucket's lifecycle rule
    /// (AbortIncompleteMultipartUpload, docs/media.md) removes it.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        for (key, _) in self.list(prefix).await? {
            self.delete(&key).await?;
        }
        if let Some(root) = &self.local_root
            && !prefix.is_empty()
            && !prefix.contains("..")
        {
            match tokio::fs::remove_dir_all(root.join(prefix)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::Backend(format!("{prefix}: {e}"))),
            }
        }
        Ok(())
    }

    /// A cheap round trip: Ok if the store answers (a missing key is an answer).
    pub async fn ping(&self) -> Result<(), BlobError> {
        self.head("healthz").await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_never_show_the_secret() {
        assert_eq!(BlobSpec::parse("fs:/var/media"), Ok(BlobSpec::Fs("/var/media".into())));
        let s3 =
            BlobSpec::parse("s3://media/prod?endpoint=http://127.0.0.1:9000&region=eu-west-1&access_key_id=a&secret_access_key=SECRET").expect("s3");
        match &s3 {
            BlobSpec::S3 { bucket, prefix, endpoint, region, .. } => {
                assert_eq!((bucket.as_str(), prefix.as_str()), ("media", "prod"));
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
                assert_eq!(region.as_deref(), Some("eu-west-1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!s3.to_string().contains("SECRET"));
        assert!(BlobSpec::parse("s3://b?colour=red").is_err());
        assert!(BlobSpec::parse("gcs://b").is_err());
        assert!(BlobSpec::parse("fs:").is_err());
    }

    #[tokio::test]
    async fn a_local_store_writes_reads_ranges_copies_lists_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(&BlobSpec::Fs(dir.path().to_owned())).expect("open");
        let mut w = store.writer("uploads/x/1").await.expect("writer");
        w.write(Bytes::from_static(b"hello ")).await.expect("write");
        w.write(Bytes::from_static(b"world")).await.expect("write");
        assert_eq!(store.head("uploads/x/1").await.expect("head"), None, "nothing visible before finish");
        w.finish().await.expect("finish");
        assert_eq!(store.head("uploads/x/1").await.expect("head").map(|m| m.size), Some(11));
        let mut part = Vec::new();
        let mut s = store.read("uploads/x/1", Some(6..11)).await.expect("read");
        while let Some(b) = s.next().await {
            part.extend_from_slice(&b.expect("bytes"));
        }
        assert_eq!(part, b"world");
        store.copy("uploads/x/1", "blobs/y").await.expect("copy");
        store.delete_prefix("uploads").await.expect("delete");
        assert_eq!(store.list("uploads").await.expect("list"), vec![]);
        assert_eq!(store.get("blobs/y").await.expect("get"), Bytes::from_static(b"hello world"));
        store.delete("blobs/absent").await.expect("absent is fine");
        store.ping().await.expect("ping");
    }
}
