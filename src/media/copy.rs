//! Copying blobs from one blob store to another: the media half of `switchboard store copy`
//! (a node moving from its local directory to S3-compatible storage, say). Blobs are
//! content-addressed and immutable, so the copy is idempotent: a blob already in the
//! target with the same size is skipped, and running the copy again after an
//! interruption resumes it. Uploads in progress are not copied (their clients resume them,
//! or they expire). At the end every blob is counted on both sides.

use futures_util::StreamExt;

use super::blob::{BlobError, BlobStore};

/// What a blob copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobCopyReport {
    /// Blobs written to the target.
    pub copied: u64,
    /// Blobs the target already had.
    pub skipped: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Blobs in the source (and, verified, in the target).
    pub total: u64,
}

/// Why a blob copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum BlobCopyError {
    /// A read or write failed; running the copy again resumes it.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// After the copy, the target lacks a blob or has it with another size.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

/// Copies every blob of `from` into `to`, calling `progress(done, total)` after each.
pub async fn copy_blobs(from: &BlobStore, to: &BlobStore, mut progress: impl FnMut(u64, u64)) -> Result<BlobCopyReport, BlobCopyError> {
    let source = from.list("blobs").await?;
    let mut report = BlobCopyReport { total: source.len() as u64, ..Default::default() };
    for (i, (key, size)) in source.iter().enumerate() {
        if to.head(key).await?.is_some_and(|m| m.size == *size) {
            report.skipped += 1;
        } else {
            let mut writer = to.writer(key).await?;
            let mut stream = from.read(key, None).await?;
            while let Some(bytes) = stream.next().await {
                match bytes {
                    Ok(b) => writer.write(b).await?,
                    Err(e) => {
                        writer.abort().await;
                        return Err(e.into());
                    }
                }
            }
            writer.finish().await?;
            report.copied += 1;
            report.bytes += size;
        }
        progress(i as u64 + 1, report.total);
    }
    let target: std::collections::HashMap<String, u64> = to.list("blobs").await?.into_iter().collect();
    for (key, size) in &source {
        if target.get(key) != Some(size) {
            return Err(BlobCopyError::Mismatch(format!("{key}: {size} bytes in the source, {:?} in the target", target.get(key))));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::BlobSpec;
    use bytes::Bytes;

    #[tokio::test]
    async fn every_blob_is_copied_once_and_verified() {
        let (a, b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let from = BlobStore::open(&BlobSpec::Fs(a.path().to_owned())).expect("from");
        let to = BlobStore::open(&BlobSpec::Fs(b.path().to_owned())).expect("to");
        for i in 0..5u8 {
            from.put(&BlobStore::blob_key(&[i; 32]), Bytes::from(vec![i; 1000 + usize::from(i)])).await.expect("put");
        }
        from.put("uploads/x/0", Bytes::from_static(b"in progress")).await.expect("put");
        to.put(&BlobStore::blob_key(&[0; 32]), Bytes::from(vec![0; 1000])).await.expect("put");
        let report = copy_blobs(&from, &to, |_, _| {}).await.expect("copied");
        assert_eq!((report.copied, report.skipped, report.total), (4, 1, 5));
        assert_eq!(to.get(&BlobStore::blob_key(&[3; 32])).await.expect("get").len(), 1003);
        assert!(to.list("uploads").await.expect("list").is_empty(), "uploads in progress are not copied");
        let again = copy_blobs(&from, &to, |_, _| {}).await.expect("again");
        assert_eq!((again.copied, again.skipped), (0, 5), "a second run copies nothing");
    }
}
