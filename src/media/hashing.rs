//! SHA-256 over an upload that arrives in chunks, possibly on different nodes and across
//! restarts: the hasher's state after each chunk is serialized into the media record, so
//! the digest of the whole file is known at completion without reading it again.

use sha2::digest::common::hazmat::{DeserializeStateError, SerializableState};
use sha2::{Digest, Sha256};

/// A running SHA-256.
#[derive(Clone, Default)]
pub struct RunningSha256(Sha256);

impl RunningSha256 {
    /// Restores a state saved by [`Self::save`] (empty = a fresh hasher).
    pub fn restore(saved: &[u8]) -> Result<Self, DeserializeStateError> {
        if saved.is_empty() {
            return Ok(Self::default());
        }
        let state = sha2::digest::common::hazmat::SerializedState::<Sha256>::try_from(saved).map_err(|_| DeserializeStateError)?;
        Ok(Self(Sha256::deserialize(&state)?))
    }

    /// The state, to store with the record.
    pub fn save(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_and_restored_hasher_continues_where_it_stopped() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = RunningSha256::default();
        for chunk in data.chunks(7777) {
            let saved = h.save();
            h = RunningSha256::restore(&saved).expect("restore");
            h.update(chunk);
        }
        assert_eq!(h.finish(), sha256(&data));
        assert!(RunningSha256::restore(&[1, 2, 3]).is_err());
    }
}
