//! `switchboard bench media`: upload and download throughput through the real HTTP path
//! (tus creation, chunked PATCHes with per-chunk SHA-256, completion; GET of the whole
//! file) for 1 and for N parallel transfers, next to the disk's own sequential write
//! throughput measured in the same run with `dd … conv=fsync` on the same filesystem.
//!
//! Every transfer uploads different random bytes (content addressing would otherwise
//! store one blob and skip the rest). Client and server share the machine, so the
//! client's work (SHA-256 of each chunk for `Upload-Checksum`) is in the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use serde::Serialize;

use crate::loadgen::{LoadError, ServerProcess};
use crate::media_client::MediaClient;

/// One parallelism level.
#[derive(Debug, Clone, Serialize)]
pub struct TransferRound {
    /// Transfers at once.
    pub parallel: usize,
    /// Bytes per transfer.
    pub file_bytes: u64,
    /// Aggregate upload throughput, MB/s (10^6 bytes), from the first creation to the
    /// last completion.
    pub upload_mb_s: f64,
    /// Aggregate download throughput, MB/s.
    pub download_mb_s: f64,
    /// Slowest single upload, seconds.
    pub upload_max_s: f64,
    /// Slowest single download, seconds.
    pub download_max_s: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct MediaBenchReport {
    /// The blob store's backend ("fs").
    pub backend: String,
    /// Chunk size of the uploads (one PATCH each).
    pub chunk_bytes: usize,
    /// The rounds.
    pub rounds: Vec<TransferRound>,
    /// `dd if=/dev/zero bs=1M count=N conv=fsync` on the blob store's filesystem, MB/s.
    pub dd_write_fsync_mb_s: f64,
    /// Bytes dd wrote.
    pub dd_bytes: u64,
}

/// The disk's sequential write throughput with an fsync at the end, MB/s, by `dd`.
pub fn dd_write(dir: &Path, mib: usize) -> Result<f64, LoadError> {
    let target = dir.join("dd.bench");
    let started = Instant::now();
    let out = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fsync"])
        .output()?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&target);
    if !out.status.success() {
        return Err(LoadError::Server(format!("dd failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok((mib * 1024 * 1024) as f64 / 1e6 / elapsed.as_secs_f64())
}

async fn round(server: &ServerProcess, tokens: &[String], parallel: usize, file_bytes: usize, chunk: usize) -> Result<TransferRound, LoadError> {
    let base = format!("http://{}", server.http);
    let files: Vec<Bytes> = (0..parallel)
        .map(|_| {
            let mut v = vec![0u8; file_bytes];
            rand::rng().fill_bytes(&mut v);
            Bytes::from(v)
        })
        .collect();
    let digests: Vec<[u8; 32]> = files.iter().map(|f| crate::media::hashing::sha256(f)).collect();
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for (i, file) in files.iter().enumerate() {
        let client = MediaClient::new(&base, &tokens[i % tokens.len()]);
        let (file, digest) = (file.clone(), digests[i]);
        uploads.spawn(async move {
            let t = Instant::now();
            let id = client.create(file.len() as u64, Some(digest)).await?;
            client.resume(id, &file, chunk, 0).await?;
            Ok::<_, crate::client::ClientError>((i, id, t.elapsed()))
        });
    }
    let mut ids = vec![None; parallel];
    let mut upload_max = Duration::ZERO;
    while let Some(done) = uploads.join_next().await {
        let (i, id, took) = done.map_err(|e| LoadError::Server(e.to_string()))??;
        ids[i] = Some(id);
        upload_max = upload_max.max(took);
    }
    let upload_elapsed = started.elapsed();
    let started = Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let client = MediaClient::new(&base, &tokens[i % tokens.len()]);
        let id = id.ok_or_else(|| LoadError::Server("an upload did not finish".into()))?;
        let expected = digests[i];
        downloads.spawn(async move {
            let t = Instant::now();
            let bytes = client.download(id).await?;
            Ok::<_, crate::client::ClientError>((crate::media::hashing::sha256(&bytes) == expected, t.elapsed()))
        });
    }
    let mut download_max = Duration::ZERO;
    while let Some(done) = downloads.join_next().await {
        let (same, took) = done.map_err(|e| LoadError::Server(e.to_string()))??;
        if !same {
            return Err(LoadError::Server("a download differs from its upload".into()));
        }
        download_max = download_max.max(took);
    }
    let download_elapsed = started.elapsed();
    let total = (parallel * file_bytes) as f64 / 1e6;
    Ok(TransferRound {
        parallel,
        file_bytes: file_bytes as u64,
        upload_mb_s: total / upload_elapsed.as_secs_f64(),
        download_mb_s: total / download_elapsed.as_secs_f64(),
        upload_max_s: upload_max.as_secs_f64(),
        download_max_s: download_max.as_secs_f64(),
    })
}

/// Runs the rounds on `server` (whose blobs live in `blob_dir`) with `tokens` (one user per
/// transfer), then `dd` in `blob_dir`.
pub async fn run(
    server: &ServerProcess,
    blob_dir: &Path,
    tokens: &[String],
    rounds: &[(usize, usize)],
    chunk: usize,
    progress: impl Fn(&str),
) -> Result<MediaBenchReport, LoadError> {
    let mut out = Vec::new();
    for &(parallel, file_bytes) in rounds {
        progress(&format!("{parallel} transfer(s) of {} MiB", file_bytes >> 20));
        out.push(round(server, tokens, parallel, file_bytes, chunk).await?);
    }
    progress("dd conv=fsync");
    let dd_mib = 1024;
    let dd = dd_write(blob_dir, dd_mib)?;
    Ok(MediaBenchReport { backend: "fs".into(), chunk_bytes: chunk, rounds: out, dd_write_fsync_mb_s: dd, dd_bytes: (dd_mib as u64) << 20 })
}
