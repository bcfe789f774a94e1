//! The tus 1.0.0 resumable upload protocol as pure functions: header values in, decisions
//! and refusals out, no I/O. Spec: <https://tus.io/protocols/resumable-upload> (core
//! protocol, and the creation, checksum, termination and expiration extensions).
//!
//! What the server answers (the shell in `media::http` only carries these out):
//! - every request but OPTIONS must carry `Tus-Resumable: 1.0.0`, else 412 with `Tus-Version`;
//! - POST (creation) needs `Upload-Length` (no deferred length), at most `Tus-Max-Size`
//!   (413), within the user's quota (413) and upload rate (429);
//! - PATCH needs `Content-Type: application/offset+octet-stream` (415) and the current
//!   `Upload-Offset` (409); `Upload-Checksum: <algorithm> <base64>` is verified on the
//!   chunk (sha1 as the spec requires, and sha256; another algorithm is 400, a mismatch 460
//!   and the chunk is discarded);
//! - the SHA-256 of the whole file may be declared at creation in `Upload-Metadata` under
//!   `sha256` (hex, or the raw 32 bytes); the last PATCH is refused with 460 and the upload
//!   discarded if the bytes do not match.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The protocol version spoken (`Tus-Resumable`, `Tus-Version`).
pub const VERSION: &str = "1.0.0";
/// `Tus-Extension`.
pub const EXTENSIONS: &str = "creation,checksum,termination,expiration";
/// `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The only content type of PATCH bodies.
pub const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";
/// Largest `Upload-Metadata` header kept, bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A refusal, with the HTTP status the spec (or HTTP) gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    /// `Tus-Resumable` missing or not 1.0.0.
    #[error("unsupported or missing Tus-Resumable (this server speaks 1.0.0)")]
    UnsupportedVersion,
    /// A header is missing or malformed.
    #[error("bad header {0}")]
    BadHeader(&'static str),
    /// Deferred length is not supported.
    #[error("Upload-Length is required (Upload-Defer-Length is not supported)")]
    LengthRequired,
    /// The declared length is above the maximum upload size.
    #[error("upload of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Declared length.
        length: u64,
        /// Maximum.
        max: u64,
    },
    /// The declared length would take the user past their quota.
    #[error("quota exceeded: {used} bytes used of {quota}, this upload needs {length}")]
    QuotaExceeded {
        /// Bytes already counted.
        used: u64,
        /// The quota.
        quota: u64,
        /// This upload.
        length: u64,
    },
    /// Too many uploads created recently.
    #[error("too many uploads; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until one more is allowed.
        retry_after_secs: u64,
    },
    /// PATCH without the offset content type.
    #[error("PATCH needs Content-Type: application/offset+octet-stream")]
    WrongContentType,
    /// PATCH at another offset than the upload's.
    #[error("Upload-Offset {given} does not match the upload's offset {current}")]
    OffsetMismatch {
        /// What the client sent.
        given: u64,
        /// Where the upload is.
        current: u64,
    },
    /// The body would go past the declared length.
    #[error("the chunk would go past the declared length of {length} bytes")]
    PastLength {
        /// Declared length.
        length: u64,
    },
    /// `Upload-Checksum` names an algorithm not in `Tus-Checksum-Algorithm`.
    #[error("unsupported checksum algorithm (supported: sha1, sha256)")]
    UnsupportedChecksum,
    /// The chunk (or, on the last chunk, the whole file) does not match its checksum.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(&'static str),
}

impl TusError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        match self {
            TusError::UnsupportedVersion => 412,
            TusError::BadHeader(_) | TusError::LengthRequired | TusError::UnsupportedChecksum => 400,
            TusError::TooLarge { .. } | TusError::QuotaExceeded { .. } | TusError::PastLength { .. } => 413,
            TusError::RateLimited { .. } => 429,
            TusError::WrongContentType => 415,
            TusError::OffsetMismatch { .. } => 409,
            // "460 Checksum Mismatch", defined by the checksum extension.
            TusError::ChecksumMismatch(_) => 460,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            TusError::UnsupportedVersion => "unsupported_version",
            TusError::BadHeader(_) => "bad_header",
            TusError::LengthRequired => "length_required",
            TusError::TooLarge { .. } => "too_large",
            TusError::QuotaExceeded { .. } => "quota_exceeded",
            TusError::RateLimited { .. } => "rate_limited",
            TusError::WrongContentType => "wrong_content_type",
            TusError::OffsetMismatch { .. } => "offset_mismatch",
            TusError::PastLength { .. } => "past_length",
            TusError::UnsupportedChecksum => "unsupported_checksum",
            TusError::ChecksumMismatch(_) => "checksum_mismatch",
        }
    }
}

/// Checks `Tus-Resumable`.
pub fn check_version(header: Option<&str>) -> Result<(), TusError> {
    match header.map(str::trim) {
        Some(VERSION) => Ok(()),
        _ => Err(TusError::UnsupportedVersion),
    }
}

/// Parses a non-negative decimal header (`Upload-Length`, `Upload-Offset`).
pub fn parse_u64(name: &'static str, header: Option<&str>) -> Result<u64, TusError> {
    let value = header.ok_or(TusError::BadHeader(name))?.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TusError::BadHeader(name));
    }
    value.parse().map_err(|_| TusError::BadHeader(name))
}

/// A parsed `Upload-Metadata`: keys with their decoded values (a key may have none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(String, Option<Vec<u8>>)>);

impl Metadata {
    /// The value of `key`, if present with a value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs (value optional), keys
/// unique, ASCII without spaces or commas.
pub fn parse_metadata(header: &str) -> Result<Metadata, TusError> {
    const NAME: &str = "Upload-Metadata";
    if header.len() > MAX_METADATA_BYTES {
        return Err(TusError::BadHeader(NAME));
    }
    let mut pairs: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for item in header.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut words = item.split(' ').filter(|w| !w.is_empty());
        let key = words.next().ok_or(TusError::BadHeader(NAME))?;
        if !key.is_ascii() || pairs.iter().any(|(k, _)| k == key) {
            return Err(TusError::BadHeader(NAME));
        }
        let value = match words.next() {
            Some(v) => Some(STANDARD.decode(v).map_err(|_| TusError::BadHeader(NAME))?),
            None => None,
        };
        if words.next().is_some() {
            return Err(TusError::BadHeader(NAME));
        }
        pairs.push((key.to_owned(), value));
    }
    Ok(Metadata(pairs))
}

/// The whole file's SHA-256 declared in the metadata under `sha256`: 64 hex digits, or
/// the 32 raw bytes.
pub fn declared_sha256(metadata: &Metadata) -> Result<Option<[u8; 32]>, TusError> {
    let Some(value) = metadata.get("sha256") else { return Ok(None) };
    if let Ok(raw) = <[u8; 32]>::try_from(value) {
        return Ok(Some(raw));
    }
    let text = std::str::from_utf8(value).map_err(|_| TusError::BadHeader("Upload-Metadata sha256"))?;
    let bytes = hex::decode(text.trim()).map_err(|_| TusError::BadHeader("Upload-Metadata sha256"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map(Some).map_err(|_| TusError::BadHeader("Upload-Metadata sha256"))
}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// SHA-1 (required by the spec).
    Sha1,
    /// SHA-256.
    Sha256,
}

/// A parsed `Upload-Checksum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// Expected digest bytes.
    pub expected: Vec<u8>,
}

/// Parses `Upload-Checksum: <algorithm> <base64 digest>`.
pub fn parse_checksum(header: &str) -> Result<Checksum, TusError> {
    let (name, value) = header.trim().split_once(' ').ok_or(TusError::BadHeader("Upload-Checksum"))?;
    let algorithm = match name {
        "sha1" => ChecksumAlgorithm::Sha1,
        "sha256" => ChecksumAlgorithm::Sha256,
        _ => return Err(TusError::UnsupportedChecksum),
    };
    let expected = STANDARD.decode(value.trim()).map_err(|_| TusError::BadHeader("Upload-Checksum"))?;
    let len = match algorithm {
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    };
    if expected.len() != len {
        return Err(TusError::BadHeader("Upload-Checksum"));
    }
    Ok(Checksum { algorithm, expected })
}

/// Whether a new upload of `length` bytes may be created for a user who already uses `used`
/// bytes: checked before any byte is stored.
pub fn decide_create(length: u64, max: u64, used: u64, quota: u64) -> Result<(), TusError> {
    if length > max {
        return Err(TusError::TooLarge { length, max });
    }
    if used.saturating_add(length) > quota {
        return Err(TusError::QuotaExceeded { used, quota, length });
    }
    Ok(())
}

/// Whether a PATCH may append at `given` to an upload at `current` of `length` bytes,
/// carrying `content_length` bytes if the client said so.
pub fn decide_patch(content_type: Option<&str>, given: u64, current: u64, length: u64, content_length: Option<u64>) -> Result<(), TusError> {
    if content_type.map(|c| c.split(';').next().unwrap_or("").trim()) != Some(OFFSET_CONTENT_TYPE) {
        return Err(TusError::WrongContentType);
    }
    if given != current {
        return Err(TusError::OffsetMismatch { given, current });
    }
    if content_length.is_some_and(|n| current.saturating_add(n) > length) {
        return Err(TusError::PastLength { length });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_required_and_exact() {
        assert_eq!(check_version(Some("1.0.0")), Ok(()));
        assert_eq!(check_version(Some("0.2.2")), Err(TusError::UnsupportedVersion));
        assert_eq!(check_version(None).map_err(|e| e.status()), Err(412));
    }

    #[test]
    fn lengths_and_offsets_are_plain_decimals() {
        assert_eq!(parse_u64("Upload-Length", Some("100")), Ok(100));
        for bad in ["", "-1", "+5", "1e3", "0x10", "99999999999999999999999"] {
            assert!(parse_u64("Upload-Length", Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_u64("Upload-Offset", None), Err(TusError::BadHeader("Upload-Offset")));
    }

    #[test]
    fn metadata_pairs_decode_and_keys_are_unique() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").expect("valid");
        assert_eq!(m.get("filename"), Some(&b"world_domination_plan.pdf"[..]));
        assert_eq!(m.0[1], ("is_confidential".into(), None));
        assert!(parse_metadata("a YQ==,a Yg==").is_err());
        assert!(parse_metadata("a !!!").is_err());
        assert!(parse_metadata(&"a".repeat(MAX_METADATA_BYTES + 1)).is_err());
    }

    #[test]
    fn the_declared_digest_is_hex_or_raw() {
        let digest = [7u8; 32];
        let hex_form = format!("sha256 {}", STANDARD.encode(hex::encode(digest)));
        assert_eq!(declared_sha256(&parse_metadata(&hex_form).expect("hex")), Ok(Some(digest)));
        let raw_form = format!("sha256 {}", STANDARD.encode(digest));
        assert_eq!(declared_sha256(&parse_metadata(&raw_form).expect("raw")), Ok(Some(digest)));
        assert!(declared_sha256(&parse_metadata("sha256 YWJj").expect("short")).is_err());
        assert_eq!(declared_sha256(&Metadata::default()), Ok(None));
    }

    #[test]
    fn checksums_name_a_supported_algorithm_and_a_digest_of_its_size() {
        let c = parse_checksum(&format!("sha256 {}", STANDARD.encode([1u8; 32]))).expect("sha256");
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha256);
        assert!(parse_checksum(&format!("sha1 {}", STANDARD.encode([1u8; 20]))).is_ok());
        assert_eq!(parse_checksum("md5 AAAA"), Err(TusError::UnsupportedChecksum));
        assert_eq!(parse_checksum(&format!("sha1 {}", STANDARD.encode([1u8; 32]))), Err(TusError::BadHeader("Upload-Checksum")));
    }

    #[test]
    fn creation_is_refused_above_the_maximum_or_the_quota() {
        assert_eq!(decide_create(10, 100, 0, 1000), Ok(()));
        assert_eq!(decide_create(101, 100, 0, 1000).map_err(|e| e.status()), Err(413));
        assert!(matches!(decide_create(50, 100, 960, 1000), Err(TusError::QuotaExceeded { .. })));
        assert_eq!(decide_create(40, 100, 960, 1000), Ok(()));
    }

    #[test]
    fn patches_need_the_content_type_and_the_current_offset() {
        let ct = Some(OFFSET_CONTENT_TYPE);
        assert_eq!(decide_patch(ct, 10, 10, 100, Some(90)), Ok(()));
        assert_eq!(decide_patch(Some("application/octet-stream"), 10, 10, 100, None), Err(TusError::WrongContentType));
        assert_eq!(decide_patch(ct, 5, 10, 100, None).map_err(|e| e.status()), Err(409));
        assert_eq!(decide_patch(ct, 10, 10, 100, Some(91)), Err(TusError::PastLength { length: 100 }));
    }
}
