//! Identifiers on the wire: UUIDs as 16 raw big-endian bytes.

use bytes::Bytes;
use uuid::Uuid;

use crate::ids::Id;

/// An id field did not hold exactly 16 bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} must be 16 bytes (a UUID), got {len}")]
pub struct IdError {
    /// Which field was wrong, for the error message sent back.
    pub field: &'static str,
    /// How many bytes it had.
    pub len: usize,
}

/// Reads an id (a `UserId`, `DeviceId`, `ConversationId` or plain UUID, as the caller's
/// type says) from a 16-byte field.
pub fn parse_id<T: Id>(field: &'static str, bytes: &[u8]) -> Result<T, IdError> {
    Uuid::from_slice(bytes).map(T::from_uuid).map_err(|_| IdError { field, len: bytes.len() })
}

/// Writes an id as a 16-byte field.
pub fn id_bytes<T: Id>(id: T) -> Bytes {
    Bytes::copy_from_slice(id.uuid().as_bytes())
}
