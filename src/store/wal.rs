//! A write-ahead log: an append-only file of checksummed records, fsynced per append, read
//! back in order after a crash. The embedded store uses it so that a batch is durable
//! after one small sequential write and one `fdatasync`, instead of writing every B-tree
//! page the batch touched; the pages are written later, many batches at once, at a
//! checkpoint, after which the log is emptied.
//!
//! Record format (little endian): `len: u32`, `xxh3_64(payload): u64`, `payload: [u8; len]`.
//! A crash can leave the last record partly written (a torn tail): reading stops at the
//! first record that is incomplete or whose checksum does not match, and the file is cut
//! there, so the next append starts from a clean end.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Largest record accepted when reading (a corrupt length must not make us allocate).
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const HEADER: usize = 12;

/// An open log.
#[derive(Debug)]
pub struct Wal {
    file: File,
    len: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns it with every complete record in
    /// order. A torn tail is cut off.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<Vec<u8>>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while bytes.len() - at >= HEADER {
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let sum = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap_or([0; 8]));
            if len > MAX_RECORD || bytes.len() - at - HEADER < len as usize {
                break;
            }
            let payload = &bytes[at + HEADER..at + HEADER + len as usize];
            if xxhash_rust::xxh3::xxh3_64(payload) != sum {
                break;
            }
            records.push(payload.to_vec());
            at += HEADER + len as usize;
        }
        if at < bytes.len() {
            tracing::warn!(kept = at, dropped = bytes.len() - at, "write-ahead log had a torn tail; cut");
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(at as u64))?;
        Ok((Self { file, len: at as u64, buf: Vec::new() }, records))
    }

    /// Appends one record and makes it durable (`fdatasync`) before returning.
    pub fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("record too large"))?;
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        self.len += self.buf.len() as u64;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Empties the log (everything in it is durable elsewhere).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the log holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        {
            let (mut wal, records) = Wal::open(&path).expect("open");
            assert!(records.is_empty());
            wal.append(b"one").expect("append");
            wal.append(b"two").expect("append");
        }
        // A crash in the middle of a third append.
        {
            let mut f = OpenOptions::new().append(true).open(&path).expect("open");
            f.write_all(&100u32.to_le_bytes()).expect("write");
            f.write_all(b"partial").expect("write");
        }
        let (mut wal, records) = Wal::open(&path).expect("reopen");
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        wal.append(b"three").expect("append after the cut");
        drop(wal);
        let (wal, records) = Wal::open(&path).expect("reopen");
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(wal.len(), 3 * 12 + 3 + 3 + 5);
    }

    #[test]
    fn a_corrupt_record_ends_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        {
            let (mut wal, _) = Wal::open(&path).expect("open");
            wal.append(b"good").expect("append");
            wal.append(b"flipped").expect("append");
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (mut wal, records) = Wal::open(&path).expect("reopen");
        assert_eq!(records, vec![b"good".to_vec()]);
        wal.reset().expect("reset");
        assert!(wal.is_empty());
        let (_, records) = Wal::open(&path).expect("reopen");
        assert!(records.is_empty());
    }
}
