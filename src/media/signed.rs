//! Short-lived signed download URLs: `/v1/media/blob/{digest}?expires={unix s}&sig={hex}`,
//! with `sig = HMAC-SHA256(key, "GET\n{digest}\n{expires}")`. Anyone holding the key (every
//! node, a CDN or reverse proxy in front of the blob store) can check one without the
//! database; the blob's address (its digest) is all it names.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignedUrlError {
    /// Past its expiry.
    #[error("the signed URL has expired")]
    Expired,
    /// The signature does not match (wrong key, edited URL).
    #[error("bad signature")]
    BadSignature,
}

fn mac(key: &[u8], digest_hex: &str, expires: u64) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"GET\n");
    mac.update(digest_hex.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The signature of a URL for `digest_hex` valid until `expires` (Unix seconds), hex.
pub fn sign(key: &[u8], digest_hex: &str, expires: u64) -> String {
    hex::encode(mac(key, digest_hex, expires).finalize().into_bytes())
}

/// The path and query of a signed URL.
pub fn url(key: &[u8], digest_hex: &str, expires: u64) -> String {
    format!("/v1/media/blob/{digest_hex}?expires={expires}&sig={}", sign(key, digest_hex, expires))
}

/// Checks a signed URL's expiry (against `now`, Unix seconds) and signature, in constant time.
pub fn verify(key: &[u8], digest_hex: &str, expires: u64, sig_hex: &str, now: u64) -> Result<(), SignedUrlError> {
    let sig = hex::decode(sig_hex).map_err(|_| SignedUrlError::BadSignature)?;
    mac(key, digest_hex, expires).verify_slice(&sig).map_err(|_| SignedUrlError::BadSignature)?;
    if now > expires {
        return Err(SignedUrlError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_until_expiry_only_with_its_key_and_digest() {
        let key = b"k".repeat(32);
        let digest = "ab".repeat(32);
        let sig = sign(&key, &digest, 1000);
        assert_eq!(verify(&key, &digest, 1000, &sig, 999), Ok(()));
        assert_eq!(verify(&key, &digest, 1000, &sig, 1000), Ok(()));
        assert_eq!(verify(&key, &digest, 1000, &sig, 1001), Err(SignedUrlError::Expired));
        assert_eq!(verify(b"other", &digest, 1000, &sig, 0), Err(SignedUrlError::BadSignature));
        assert_eq!(verify(&key, &"cd".repeat(32), 1000, &sig, 0), Err(SignedUrlError::BadSignature));
        assert_eq!(verify(&key, &digest, 2000, &sig, 0), Err(SignedUrlError::BadSignature));
        assert_eq!(verify(&key, &digest, 1000, "zz", 0), Err(SignedUrlError::BadSignature));
        assert!(url(&key, &digest, 1000).starts_with(&format!("/v1/media/blob/{digest}?expires=1000&sig=")));
    }
}
