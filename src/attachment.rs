//! Client side of media: what a sending app does before it uploads a file and what a
//! receiving app does after it downloads one. The server never sees any of this; it
//! stores ciphertext and declared ids only (docs/media.md, "Encryption").
//!
//! - [`seal`]: a fresh random 256-bit key per file; AES-256-GCM with a random 96-bit nonce;
//!   the uploaded bytes are `nonce (12) ‖ ciphertext ‖ tag (16)`; their SHA-256 is the
//!   digest the server verifies and addresses the blob by.
//! - [`media_key`]: media id, key, digest, size, name, type and a thumbnail, as the
//!   `MediaKey` an SDK message carries inside its Megolm ciphertext (`crate::sdk`,
//!   `Body::Media`): the server never sees the key. [`Descriptor`] is the same as JSON,
//!   for apps that carry it inside a payload of their own.
//! - [`thumbnail`]: for images, a small blurred JPEG preview made with the `image` crate.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Key, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::ids::MediaId;

/// Bytes before the ciphertext (the nonce).
pub const NONCE_BYTES: usize = 12;
/// Bytes after it (the GCM tag).
pub const TAG_BYTES: usize = 16;
/// Edge of the thumbnail's longer side, px.
pub const THUMBNAIL_PX: u32 = 64;

/// Why a file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// The downloaded bytes do not have the digest the message promised.
    #[error("the downloaded file's SHA-256 does not match the message")]
    DigestMismatch,
    /// Decryption failed (wrong key, or altered bytes).
    #[error("the file does not decrypt with the message's key")]
    Decrypt,
    /// A descriptor field is malformed.
    #[error("bad attachment descriptor: {0}")]
    Descriptor(String),
}

/// A file encrypted for upload.
pub struct Sealed {
    /// The file's own key (goes into the message, never to the server).
    pub key: [u8; 32],
    /// What to upload: nonce ‖ ciphertext ‖ tag.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes` (declared at upload, checked by the server and by the receiver).
    pub sha256: [u8; 32],
}

/// Encrypts `plaintext` with a fresh key.
pub fn seal(plaintext: &[u8]) -> Sealed {
    let mut rng = rand::rng();
    let key: [u8; 32] = rng.random();
    let nonce: [u8; NONCE_BYTES] = rng.random();
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key));
    // Encryption with a valid key and nonce fails only past GCM's 64 GiB limit.
    let ciphertext = cipher.encrypt(&Nonce::<Aes256Gcm>::from(nonce), plaintext).unwrap_or_else(|_| unreachable!("plaintext within GCM's limit"));
    let mut bytes = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ciphertext);
    let sha256 = crate::media::hashing::sha256(&bytes);
    Sealed { key, bytes, sha256 }
}

/// Checks `bytes` against `sha256` and decrypts them with `key`.
pub fn open(key: &[u8; 32], sha256: &[u8; 32], bytes: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    if &crate::media::hashing::sha256(bytes) != sha256 {
        return Err(AttachmentError::DigestMismatch);
    }
    if bytes.len() < NONCE_BYTES + TAG_BYTES {
        return Err(AttachmentError::Decrypt);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| AttachmentError::Decrypt)?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    cipher.decrypt(&Nonce::<Aes256Gcm>::from(nonce), ciphertext).map_err(|_| AttachmentError::Decrypt)
}

/// What a message says about one attached file (JSON, inside the message payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Always "file": tells a file message from a text one.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to download it (`/v1/media/{id}`).
    pub media_id: MediaId,
    /// The file's key, base64.
    pub key: String,
    /// SHA-256 of the uploaded ciphertext, hex.
    pub sha256: String,
    /// Plaintext size, bytes.
    pub size: u64,
    /// File name.
    pub name: String,
    /// MIME type, if known.
    pub mime: String,
    /// A small blurred JPEG preview (images), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

impl Descriptor {
    /// The descriptor of `sealed`, uploaded as `media_id`.
    pub fn new(media_id: MediaId, sealed: &Sealed, size: u64, name: &str, mime: &str, thumbnail: Option<Vec<u8>>) -> Self {
        Self {
            kind: "file".into(),
            media_id,
            key: STANDARD.encode(sealed.key),
            sha256: hex::encode(sealed.sha256),
            size,
            name: name.to_owned(),
            mime: mime.to_owned(),
            thumbnail: thumbnail.map(|t| STANDARD.encode(t)),
        }
    }

    /// Reads a message payload as a descriptor (None: it is not a file message).
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(payload).ok().filter(|d| d.kind == "file")
    }

    /// The payload to send.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The key and digest, decoded.
    pub fn secrets(&self) -> Result<([u8; 32], [u8; 32]), AttachmentError> {
        let key: [u8; 32] =
            STANDARD.decode(&self.key).ok().and_then(|k| k.try_into().ok()).ok_or_else(|| AttachmentError::Descriptor("key".into()))?;
        let sha256: [u8; 32] =
            hex::decode(&self.sha256).ok().and_then(|d| d.try_into().ok()).ok_or_else(|| AttachmentError::Descriptor("sha256".into()))?;
        Ok((key, sha256))
    }
}

/// The `MediaKey` of `sealed`, uploaded as `media_id`: what an end-to-end encrypted
/// message carries (`crate::sdk::Body::Media`).
pub fn media_key(
    media_id: MediaId,
    sealed: &Sealed,
    size: u64,
    name: &str,
    mime: &str,
    thumbnail: Option<Vec<u8>>,
) -> crate::sdk::envelope::pb::MediaKey {
    crate::sdk::envelope::pb::MediaKey {
        media_id: crate::protocol::id_bytes(media_id),
        key: sealed.key.to_vec().into(),
        sha256: sealed.sha256.to_vec().into(),
        size,
        name: name.to_owned(),
        mime: mime.to_owned(),
        thumbnail: thumbnail.unwrap_or_default().into(),
    }
}

/// The media id, file key and digest of a received `MediaKey`.
pub fn media_secrets(key: &crate::sdk::envelope::pb::MediaKey) -> Result<(MediaId, [u8; 32], [u8; 32]), AttachmentError> {
    let id = crate::protocol::parse_id::<MediaId>("media_id", &key.media_id).map_err(|e| AttachmentError::Descriptor(e.to_string()))?;
    let file_key: [u8; 32] = key.key[..].try_into().map_err(|_| AttachmentError::Descriptor("key".into()))?;
    let sha256: [u8; 32] = key.sha256[..].try_into().map_err(|_| AttachmentError::Descriptor("sha256".into()))?;
    Ok((id, file_key, sha256))
}

/// A blurred JPEG preview of an image (longer side [`THUMBNAIL_PX`]), or None when the file
/// is not an image the `image` crate reads (PNG, JPEG).
pub fn thumbnail(plaintext: &[u8]) -> Option<Vec<u8>> {
    let format = image::guess_format(plaintext).ok()?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return None;
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(plaintext), format);
    reader.limits(image::Limits::default());
    let img = reader.decode().ok()?;
    let small = img.thumbnail(THUMBNAIL_PX, THUMBNAIL_PX).blur(1.5).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 60).encode_image(&small).ok()?;
    Some(jpeg)
}

/// A MIME type from a file name's extension (what the receiving app uses to open it).
pub fn mime_of(name: &str) -> &'static str {
    match name.rsplit('.').next().map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("ogg" | "opus") => "audio/ogg",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_only_with_their_key_and_digest() {
        let plaintext = b"a photo, in principle".repeat(1000);
        let sealed = seal(&plaintext);
        assert_eq!(sealed.bytes.len(), plaintext.len() + NONCE_BYTES + TAG_BYTES);
        assert!(!sealed.bytes.windows(21).any(|w| w == b"a photo, in principle"), "no plaintext in the upload");
        assert_eq!(open(&sealed.key, &sealed.sha256, &sealed.bytes).expect("opens"), plaintext);
        let other = seal(&plaintext);
        assert_ne!(other.key, sealed.key, "a fresh key per file");
        assert_ne!(other.sha256, sealed.sha256);
        assert!(matches!(open(&other.key, &sealed.sha256, &sealed.bytes), Err(AttachmentError::Decrypt)));
        let mut altered = sealed.bytes.clone();
        altered[40] ^= 1;
        assert!(matches!(open(&sealed.key, &sealed.sha256, &altered), Err(AttachmentError::DigestMismatch)));
    }

    #[test]
    fn descriptors_round_trip_through_the_payload() {
        let sealed = seal(b"x");
        let d = Descriptor::new(MediaId::random(), &sealed, 1, "x.txt", mime_of("x.txt"), None);
        let back = Descriptor::from_payload(&d.to_payload()).expect("a file message");
        assert_eq!(back, d);
        assert_eq!(back.secrets().expect("secrets"), (sealed.key, sealed.sha256));
        assert!(Descriptor::from_payload(b"hello").is_none());
    }

    #[test]
    fn media_keys_carry_the_secrets() {
        let sealed = seal(b"x");
        let id = MediaId::random();
        let key = media_key(id, &sealed, 1, "x.txt", mime_of("x.txt"), None);
        assert_eq!(media_secrets(&key).expect("secrets"), (id, sealed.key, sealed.sha256));
        let mut short = key;
        short.key.truncate(3);
        assert!(media_secrets(&short).is_err());
    }

    #[test]
    fn images_get_a_small_jpeg_thumbnail() {
        let img = image::RgbImage::from_fn(400, 200, |x, _| image::Rgb([(x % 256) as u8, 10, 200]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
        let thumb = thumbnail(&png).expect("an image");
        let decoded = image::load_from_memory(&thumb).expect("jpeg");
        assert_eq!((decoded.width(), decoded.height()), (64, 32));
        assert!(thumbnail(b"not an image").is_none());
    }
}
