//! Media: encrypted attachments and public images, stored as blobs next to the message
//! store (see docs/media.md and ARCHITECTURE.md, "Media").
//!
//! - Upload speaks **tus 1.0** (core, creation, checksum, termination, expiration) under
//!   `/v1/media`: [`tus`] is the protocol as pure functions (headers in, decisions out),
//!   [`service`] applies them to the store and the blob store, [`http`] is the actix shell.
//! - Bytes live in a [`blob::BlobStore`] (the `object_store` crate: a local directory,
//!   fsynced, or an S3-compatible bucket), content-addressed by the SHA-256 of the
//!   ciphertext; the message store keeps [`crate::store::MediaRecord`]s and which
//!   messages declare which media.
//! - Downloads are authorised by membership ([`access`]): the uploader, and the members who
//!   can see a message that declares the media. [`signed`] makes short-lived HMAC URLs a
//!   CDN can serve without the database; [`range`] answers Range requests.
//! - [`sweep`] expires abandoned uploads and deletes unreferenced media and blobs after a
//!   grace period; [`public_image`] turns an uploaded photo into metadata-free thumbnails.
//!
//! The server never decrypts an attachment; only public images are decoded.

pub mod access;
pub mod attachments;
pub mod blob;
pub mod config;
pub mod copy;
pub mod hashing;
pub mod http;
pub mod public_image;
pub mod range;
pub mod service;
pub mod signed;
pub mod sweep;
pub mod tus;

pub use blob::{BlobError, BlobSpec, BlobStore};
pub use config::MediaConfig;
pub use service::{MediaError, MediaService};
