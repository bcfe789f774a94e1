//! Identifiers on the wire: UUIDs as 16 raw big-endian bytes.

use bytes::Bytes;
use uuid::Uuid;

/// An id field did not hold exactly 16 bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} must be 16 bytes (a UUID), got {len}")]
pub struct IdError {
    /// Which field was wrong, for the error message sent back.
    pub field: &'static str,
    /// How many bytes it had.
    pub len: usize,
}

/// Reads a UUID from a 16-byte field.
pub fn parse_id(field: &'static str, bytes: &[u8]) -> Result<Uuid, IdError> {
    Uuid::from_slice(bytes).map_err(|_| IdError { field, len: bytes.len() })
}

/// Writes a UUID as a 16-byte field.
pub fn id_bytes(id: Uuid) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}
