//! Length-prefixed framing for the raw TCP transport: each frame is a 4-byte big-endian
//! length followed by that many bytes of protobuf. The codec is a pure state machine over
//! a byte buffer (tokio-util's `Decoder`/`Encoder`), so it is tested without sockets.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Why bytes could not become a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The bytes are not a valid protobuf frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame decoded but carried no kind.
    #[error("frame carries no kind")]
    Empty,
    /// The underlying stream failed (only produced by the codec when used on a socket).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frames of at most `max_frame` bytes and prefixes outgoing ones.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that rejects frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

const PREFIX: usize = 4;

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            // Checked before buffering the body, so a hostile prefix cannot make us allocate.
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        if src.len() < PREFIX + len {
            src.reserve(PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if item.len() > u32::MAX as usize {
            return Err(FrameError::TooLarge { len: item.len(), max: u32::MAX as usize });
        }
        dst.reserve(PREFIX + item.len());
        dst.put_u32(item.len() as u32);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_concatenated_frames_and_waits_for_partial_ones() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"hello"), &mut buf).unwrap();
        codec.encode(Bytes::from_static(b"world!"), &mut buf).unwrap();
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..7]);
        assert_eq!(codec.decode(&mut partial).unwrap(), None);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), Bytes::from_static(b"world!"));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn rejects_oversize_prefix_before_buffering() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { len: 256, max: 16 })));
    }
}
