//! Media through real HTTP against a private `switchboard serve`, on both blob stores: a
//! local directory (`fs:`) and a private S3-compatible server (moto's server mode, started
//! per test by `switchboard::testkit::PrivateS3`). Every scenario named in
//! `on_both_backends!` runs once per backend (`fs::name`, `s3::name`).

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use common::{Kind, TestServer, user};
use futures_util::StreamExt;
use rand::RngCore;
use reqwest::StatusCode;
use switchboard::client::ClientError;
use switchboard::ids::MediaId;
use switchboard::media::hashing::sha256;
use switchboard::media::{BlobSpec, BlobStore};
use switchboard::media_client::MediaClient;
use switchboard::protocol::{id_bytes, pb};

/// Where the server under test keeps blobs.
enum Backend {
    Fs(tempfile::TempDir),
    S3(switchboard::testkit::PrivateS3),
}

impl Backend {
    fn fs() -> Self {
        Backend::Fs(tempfile::tempdir().expect("tempdir"))
    }

    fn s3() -> Self {
        Backend::S3(switchboard::testkit::PrivateS3::start().expect("private S3-compatible server (scripts/install-deps.sh installs moto)"))
    }

    fn spec(&self) -> String {
        match self {
            Backend::Fs(dir) => format!("fs:{}", dir.path().display()),
            Backend::S3(s3) => s3.spec(),
        }
    }

    /// A second, empty store of the same kind (the target of a copy).
    fn other_spec(&self) -> (Option<tempfile::TempDir>, String) {
        match self {
            Backend::Fs(_) => {
                let dir = tempfile::tempdir().expect("tempdir");
                let spec = format!("fs:{}", dir.path().display());
                (Some(dir), spec)
            }
            Backend::S3(s3) => (None, s3.spec_with_prefix("copy")),
        }
    }

    /// The blob store as the test sees it (to check what was, or was not, stored).
    fn blobs(&self) -> BlobStore {
        BlobStore::open(&BlobSpec::parse(&self.spec()).expect("spec")).expect("open blob store")
    }

    fn server(&self, extra: &[&str]) -> TestServer {
        let spec = self.spec();
        let mut args = vec!["--media-store", spec.as_str()];
        args.extend_from_slice(extra);
        TestServer::start_with(&args)
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod fs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::fs()).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::s3()).await })*
        }
    };
}

on_both_backends!(
    a_50_mib_upload_survives_sigkill_and_resumes_from_head,
    wrong_checksums_are_refused_and_nothing_is_kept,
    downloads_need_a_token_and_membership,
    a_removed_member_cannot_fetch_media_sent_after_removal,
    signed_urls_serve_without_a_token_until_they_expire,
    size_quota_and_rate_limits_answer_clearly_and_store_nothing,
    a_profile_photo_loses_its_gps_exif,
    a_decompression_bomb_is_refused,
    the_sweep_deletes_exactly_the_unreferenced,
    tuspy_uploads_unchanged,
    store_copy_carries_the_blobs,
);

const MIB: usize = 1024 * 1024;

fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v.into()
}

fn media_client(server: &TestServer, token: &str) -> MediaClient {
    MediaClient::new(format!("http://{}", server.http), token)
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The upload chunks under `uploads/<id>` in the blob store.
async fn chunks_of(blobs: &BlobStore, id: MediaId) -> Vec<(String, u64)> {
    blobs.list(&BlobStore::upload_prefix(id)).await.expect("list")
}

/// Sends a message from `conn` in `conversation` that declares `media`.
async fn announce(conn: &mut switchboard::client::Connection, conversation: switchboard::ids::ConversationId, media: MediaId) -> u64 {
    let payload = format!("{{\"type\":\"file\",\"note\":\"{media}\"}}");
    conn.send_with_attachments_and_ack(conversation, &uuid::Uuid::new_v4().to_string(), payload.into_bytes(), &[media]).await.expect("announced").seq
}

async fn a_50_mib_upload_survives_sigkill_and_resumes_from_head(backend: Backend) {
    let mut server = backend.server(&[]);
    let alice = user(&server.api()).await;
    let data = random_bytes(50 * MIB);
    let digest = sha256(&data);
    let chunk = 4 * MIB;
    let media = media_client(&server, &alice.token);
    let id = media.create(data.len() as u64, Some(digest)).await.expect("created");
    let mut offset = 0u64;
    for _ in 0..6 {
        offset = media.patch(id, offset, data.slice(offset as usize..offset as usize + chunk)).await.expect("chunk");
    }
    assert_eq!(offset, 24 * MIB as u64);

    // The seventh chunk is on the wire when the server is killed: half of it sent, the rest
    // held back until the connection dies.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(1);
    let first_half = data.slice(offset as usize..offset as usize + chunk / 2);
    let body = futures_util::stream::unfold(0u8, move |step| {
        let (first_half, sent_tx) = (first_half.clone(), sent_tx.clone());
        async move {
            match step {
                0 => Some((Ok::<Bytes, std::io::Error>(first_half), 1)),
                1 => {
                    let _ = sent_tx.send(()).await;
                    std::future::pending::<()>().await;
                    None
                }
                _ => None,
            }
        }
    });
    let in_flight = tokio::spawn(
        http()
            .patch(format!("http://{}/v1/media/{id}", server.http))
            .bearer_auth(&alice.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", chunk)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    sent_rx.recv().await.expect("half a chunk handed to the connection");
    server.kill9();
    assert!(in_flight.await.expect("task").is_err(), "the interrupted PATCH fails");

    server.restart();
    let media = media_client(&server, &alice.token);
    let resumed_at = media.offset(id).await.expect("HEAD after the restart");
    assert_eq!(resumed_at, 24 * MIB as u64, "every acknowledged chunk survived SIGKILL, the interrupted one did not count");
    media.resume(id, &data, chunk, 0).await.expect("resumed to the end");
    assert_eq!(media.offset(id).await.expect("HEAD"), data.len() as u64);

    let whole = media.download(id).await.expect("download");
    assert_eq!(whole.len(), data.len());
    assert_eq!(sha256(&whole), digest, "the same digest as uploaded");
    for (start, end) in [(0u64, 99u64), (24 * MIB as u64 - 7, 24 * MIB as u64 + 7), (data.len() as u64 - 10, data.len() as u64 - 1)] {
        let (status, bytes) = media.download_range(id, start, end).await.expect("range");
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(bytes, data.slice(start as usize..=end as usize), "bytes {start}-{end}");
    }
    let (status, _) = media.download_range(id, data.len() as u64, data.len() as u64 + 5).await.expect("range");
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);

    let r = http().get(format!("http://{}/v1/media/{id}", server.http)).bearer_auth(&alice.token).send().await.expect("get");
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", hex::encode(digest)), "the ETag is the content's digest");
    assert!(r.headers()["cache-control"].to_str().expect("cc").contains("immutable"));
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let again = http().get(format!("http://{}/v1/media/{id}", server.http)).bearer_auth(&alice.token).header("If-None-Match", &etag).send().await;
    assert_eq!(again.expect("conditional get").status(), StatusCode::NOT_MODIFIED);
    assert!(chunks_of(&backend.blobs(), id).await.is_empty(), "the chunks are gone once the blob is whole");
    if let Backend::Fs(dir) = &backend {
        let upload_dir = dir.path().join(BlobStore::upload_prefix(id));
        assert!(!upload_dir.exists(), "the killed PATCH's staging file went with the upload's directory");
    }

    let health: serde_json::Value = server.api().get("/healthz", None).await.expect("healthz").json().await.expect("json");
    assert_eq!(health["media"]["ok"], true, "{health}");
    assert_eq!(health["media"]["backend"], if matches!(backend, Backend::S3(_)) { "s3" } else { "fs" });
    let metrics = server.api().get("/metrics", None).await.expect("metrics").text().await.expect("text");
    for name in [
        "switchboard_media_bytes_in_total",
        "switchboard_media_bytes_out_total",
        "switchboard_media_uploads_completed_total",
        "switchboard_media_upload_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

async fn wrong_checksums_are_refused_and_nothing_is_kept(backend: Backend) {
    let server = backend.server(&[]);
    let alice = user(&server.api()).await;
    let blobs = backend.blobs();
    let media = media_client(&server, &alice.token);
    let data = random_bytes(MIB);
    let url = |id: MediaId| format!("http://{}/v1/media/{id}", server.http);
    let patch = |id: MediaId, checksum: String, body: Bytes| {
        http()
            .patch(url(id))
            .bearer_auth(&alice.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", checksum)
            .body(body)
            .send()
    };

    // A chunk whose Upload-Checksum does not match: 460, the offset stays, no chunk kept.
    let id = media.create(data.len() as u64, None).await.expect("created");
    let wrong = format!("sha256 {}", STANDARD.encode(sha256(b"something else")));
    let r = patch(id, wrong, data.clone()).await.expect("patch");
    assert_eq!(r.status().as_u16(), 460, "Checksum Mismatch");
    assert_eq!(media.offset(id).await.expect("HEAD"), 0);
    assert!(chunks_of(&blobs, id).await.is_empty(), "the refused chunk was not kept");
    let unknown = patch(id, "md5 AAAAAAAAAAAAAAAAAAAAAA==".into(), data.clone()).await.expect("patch");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST, "an algorithm outside Tus-Checksum-Algorithm");
    let right = format!("sha1 {}", STANDARD.encode(<sha1::Sha1 as sha1::Digest>::digest(&data)));
    assert_eq!(patch(id, right, data.clone()).await.expect("patch").status(), StatusCode::NO_CONTENT, "sha1 is supported, as tus requires");

    // A file whose SHA-256 differs from the one declared at creation: the last PATCH is
    // refused, and neither the upload nor a blob is left.
    let id = media.create(data.len() as u64, Some(sha256(b"not these bytes"))).await.expect("created");
    let r = patch(id, format!("sha256 {}", STANDARD.encode(sha256(&data))), data.clone()).await.expect("patch");
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(status_of(media.offset(id).await), 404, "the upload is gone");
    assert!(chunks_of(&blobs, id).await.is_empty());
    assert!(blobs.head(&BlobStore::blob_key(&sha256(&data))).await.expect("head").is_some(), "only the good upload's blob");
    let all: Vec<String> = blobs.list("blobs").await.expect("list").into_iter().map(|(k, _)| k).collect();
    assert_eq!(all, vec![BlobStore::blob_key(&sha256(&data))], "nothing else was stored");

    // An empty file is complete at creation (no PATCH will ever come).
    let empty = media.upload(Bytes::new(), 1024).await.expect("empty upload");
    assert_eq!(media.offset(empty).await.expect("HEAD"), 0);
    assert_eq!(media.download(empty).await.expect("download"), Bytes::new());
}

async fn downloads_need_a_token_and_membership(backend: Backend) {
    let server = backend.server(&[]);
    let api = server.api();
    let (alice, bob, carol, dave) = (user(&api).await, user(&api).await, user(&api).await, user(&api).await);
    let base = format!("http://{}", server.http);

    let options = http().request(reqwest::Method::OPTIONS, format!("{base}/v1/media")).send().await.expect("options");
    assert_eq!(options.status(), StatusCode::NO_CONTENT);
    assert_eq!(options.headers()["tus-version"], "1.0.0");
    assert!(options.headers()["tus-extension"].to_str().expect("ext").contains("termination"));
    assert_eq!(options.headers()["tus-checksum-algorithm"], "sha1,sha256");

    let data = random_bytes(300_000);
    let id = media_client(&server, &alice.token).upload(data.clone(), 100_000).await.expect("uploaded");

    // No token, or a bad one: 401 on every verb.
    let no_token = [
        http().post(format!("{base}/v1/media")).header("Tus-Resumable", "1.0.0").header("Upload-Length", 10),
        http().head(format!("{base}/v1/media/{id}")).header("Tus-Resumable", "1.0.0"),
        http().get(format!("{base}/v1/media/{id}")),
        http().get(format!("{base}/v1/media/{id}")).bearer_auth("not-a-token"),
        http().get(format!("{base}/v1/media/{id}/url")),
        http().delete(format!("{base}/v1/media/{id}")).header("Tus-Resumable", "1.0.0"),
    ];
    for request in no_token {
        assert_eq!(request.send().await.expect("request").status(), StatusCode::UNAUTHORIZED);
    }
    let old_client = http().post(format!("{base}/v1/media")).bearer_auth(&alice.token).header("Tus-Resumable", "0.2.2").header("Upload-Length", 1);
    let r = old_client.send().await.expect("request");
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.headers()["tus-version"], "1.0.0");

    // An upload in progress: its uploader is told it is incomplete, anyone else that
    // there is no such media.
    let half = media_client(&server, &alice.token).create(1000, None).await.expect("created");
    media_client(&server, &alice.token).patch(half, 0, random_bytes(400)).await.expect("first chunk");
    match media_client(&server, &alice.token).download(half).await {
        Err(ClientError::Status { status: 409, body }) => assert!(body.contains("incomplete") && body.contains("400 of 1000"), "{body}"),
        other => panic!("the uploader's download of an incomplete upload: {other:?}"),
    }
    assert_eq!(status_of(media_client(&server, &bob.token).download(half).await), 404);

    // Before any message declares it, only the uploader reads it.
    assert_eq!(status_of(media_client(&server, &bob.token).download(id).await), 403);
    assert_eq!(status_of(media_client(&server, &carol.token).download(id).await), 403);
    assert_eq!(status_of(media_client(&server, &carol.token).offset(id).await), 403, "HEAD is the uploader's");
    assert_eq!(status_of(media_client(&server, &carol.token).terminate(id).await), 403);

    let mut a = common::online(&server, Kind::Tcp, &alice).await;
    let ab = a.open_direct(bob.user_id).await.expect("open");
    announce(&mut a, ab, id).await;
    assert_eq!(media_client(&server, &bob.token).download(id).await.expect("bob reads it"), data);
    assert_eq!(status_of(media_client(&server, &carol.token).download(id).await), 403, "not a member of any conversation that has it");

    // Carol cannot pass on what she cannot read; Bob can (forwarding), and then Dave reads it.
    let mut c = common::online(&server, Kind::Tcp, &carol).await;
    let cd = c.open_direct(dave.user_id).await.expect("open");
    c.send_with_attachments(cd, "steal", b"x".to_vec(), &[id]).await.expect("send");
    let refused = common::next_error(&mut c).await;
    assert_eq!(refused.code(), pb::ErrorCode::NotAMember, "{refused:?}");
    c.send_with_attachments(cd, "ghost", b"x".to_vec(), &[MediaId::random()]).await.expect("send");
    assert_eq!(common::next_error(&mut c).await.code(), pb::ErrorCode::InvalidArgument, "an unknown media id");
    let mut b = common::online(&server, Kind::Tcp, &bob).await;
    let bd = b.open_direct(dave.user_id).await.expect("open");
    announce(&mut b, bd, id).await;
    assert_eq!(media_client(&server, &dave.token).download(id).await.expect("forwarded"), data);
    assert_eq!(status_of(media_client(&server, &carol.token).download(id).await), 403);
}

async fn a_removed_member_cannot_fetch_media_sent_after_removal(backend: Backend) {
    let server = backend.server(&[]);
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = common::online(&server, Kind::Tcp, &alice).await;
    let group = a.create_group("photos", &[bob.user_id, carol.user_id]).await.expect("group");
    let alice_media = media_client(&server, &alice.token);
    let before = alice_media.upload(random_bytes(10_000), 4096).await.expect("upload");
    announce(&mut a, group, before).await;
    assert!(media_client(&server, &bob.token).download(before).await.is_ok(), "a member reads what is sent to the group");

    a.group_change(group, pb::group_change::Change::RemoveMember(id_bytes(bob.user_id))).await.expect("bob removed");
    let after = alice_media.upload(random_bytes(10_000), 4096).await.expect("upload");
    announce(&mut a, group, after).await;
    assert_eq!(status_of(media_client(&server, &bob.token).download(after).await), 403, "sent after Bob's removal");
    assert!(media_client(&server, &bob.token).download(before).await.is_ok(), "what Bob saw as a member stays his to fetch");
    assert!(media_client(&server, &carol.token).download(after).await.is_ok());
    assert_eq!(status_of(media_client(&server, &bob.token).signed_url(after).await), 403, "no signed URL either");
}

async fn signed_urls_serve_without_a_token_until_they_expire(backend: Backend) {
    let server = backend.server(&["--media-url-ttl-secs", "2"]);
    let alice = user(&server.api()).await;
    let media = media_client(&server, &alice.token);
    let data = random_bytes(70_000);
    let id = media.upload(data.clone(), 70_000).await.expect("upload");
    let (url, expires) = media.signed_url(id).await.expect("signed url");
    assert!(url.contains(&hex::encode(sha256(&data))), "the URL names the blob, not the media record");

    let r = http().get(&url).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK, "no token needed");
    let cache = r.headers()["cache-control"].to_str().expect("cc").to_owned();
    assert!(cache.starts_with("public") && cache.contains("immutable"), "{cache}");
    assert_eq!(r.bytes().await.expect("body"), data);
    let ranged = http().get(&url).header("Range", "bytes=10-19").send().await.expect("range");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.expect("body"), data.slice(10..20));

    let tampered = url.replace(&format!("expires={expires}"), &format!("expires={}", expires + 3600));
    assert_eq!(http().get(&tampered).send().await.expect("get").status(), StatusCode::FORBIDDEN, "a longer life needs a new signature");
    // Wait out the URL's lifetime (wall-clock expiry is the behaviour under test).
    let wait = (expires * 1000 + 1100).saturating_sub(switchboard::store::now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let expired = http().get(&url).send().await.expect("get");
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = expired.json().await.expect("json");
    assert_eq!(body["error"], "url_expired");
}

async fn size_quota_and_rate_limits_answer_clearly_and_store_nothing(backend: Backend) {
    let server = backend.server(&["--media-max-upload-bytes", "1000000", "--media-quota-bytes", "1500000", "--media-uploads-per-minute", "4"]);
    let alice = user(&server.api()).await;
    let blobs = backend.blobs();
    let create = |length: u64| {
        http()
            .post(format!("http://{}/v1/media", server.http))
            .bearer_auth(&alice.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length)
            .send()
    };
    let too_large = create(1_000_001).await.expect("post");
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.json::<serde_json::Value>().await.expect("json")["error"], "too_large");
    let first = create(1_000_000).await.expect("post");
    assert_eq!(first.status(), StatusCode::CREATED);
    let over_quota = create(600_000).await.expect("post");
    assert_eq!(over_quota.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(over_quota.json::<serde_json::Value>().await.expect("json")["error"], "quota_exceeded");
    assert_eq!(create(500_000).await.expect("post").status(), StatusCode::CREATED, "exactly up to the quota");
    // The size refusal above cost no token of the rate (it is decided from the request
    // alone); the quota refusal did (it reads the store): this is the fourth.
    let over = create(1).await.expect("post");
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE, "the quota is full");
    let limited = create(1).await.expect("post");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS, "four creations per minute");
    assert!(limited.headers()["retry-after"].to_str().expect("retry-after").parse::<u64>().expect("seconds") >= 1);
    assert_eq!(limited.json::<serde_json::Value>().await.expect("json")["error"], "rate_limited");

    // A PATCH past the declared length is refused before anything is stored.
    let location = first.headers()["location"].to_str().expect("location").to_owned();
    let id: MediaId = location.rsplit('/').next().expect("id").parse().expect("media id");
    let past = http()
        .patch(format!("http://{}{location}", server.http))
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body(vec![0u8; 1_000_001])
        .send()
        .await
        .expect("patch");
    assert_eq!(past.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let wrong_type = http()
        .patch(format!("http://{}{location}", server.http))
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .expect("patch");
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(chunks_of(&blobs, id).await.is_empty(), "refused bodies are not stored");
    assert!(blobs.list("").await.expect("list").is_empty(), "nothing at all was stored");
}

/// A JPEG with an EXIF block holding a GPS position (52° 31′ N).
fn jpeg_with_gps() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1200, 900, |x, y| image::Rgb([(x / 5) as u8, (y / 4) as u8, 128]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).expect("jpeg");
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II\x2a\x00\x08\x00\x00\x00");
    // IFD0: one entry, GPSInfo (0x8825, LONG) → the GPS IFD at offset 26.
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0, 26, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    // GPS IFD: GPSLatitudeRef "N", GPSLatitude (3 RATIONALs at offset 56).
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&[1, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&[2, 0, 5, 0, 3, 0, 0, 0, 56, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    for (num, den) in [(52u32, 1u32), (31, 1), (4711, 100)] {
        tiff.extend_from_slice(&num.to_le_bytes());
        tiff.extend_from_slice(&den.to_le_bytes());
    }
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

async fn a_profile_photo_loses_its_gps_exif(backend: Backend) {
    let server = backend.server(&[]);
    let alice = user(&server.api()).await;
    let bob = user(&server.api()).await;
    let photo = jpeg_with_gps();
    assert!(photo.windows(6).any(|w| w == b"Exif\0\0"), "the upload carries EXIF");
    image::load_from_memory(&photo).expect("a valid JPEG");
    let r = http().post(format!("http://{}/v1/media/public", server.http)).bearer_auth(&alice.token).body(photo).send().await.expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: serde_json::Value = r.json().await.expect("json");
    let renditions = body["renditions"].as_array().expect("renditions").clone();
    assert_eq!(renditions.iter().map(|r| r["size"].as_u64().expect("size")).collect::<Vec<_>>(), vec![96, 640]);
    for r in renditions {
        let id: MediaId = r["media_id"].as_str().expect("id").parse().expect("media id");
        // Any user may fetch a public image (here Bob, who shares no conversation with Alice).
        let got = http().get(format!("http://{}/v1/media/{id}", server.http)).bearer_auth(&bob.token).send().await.expect("get");
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.headers()["content-type"], "image/jpeg");
        let jpeg = got.bytes().await.expect("body");
        let img = image::load_from_memory(&jpeg).expect("decodes");
        let size = r["size"].as_u64().expect("size") as u32;
        assert_eq!((img.width(), img.height()), (size, size));
        assert!(!jpeg.windows(4).any(|w| w == b"Exif"), "no EXIF segment");
        assert!(!jpeg.windows(2).any(|w| w == [0xFF, 0xE1]) || !jpeg.windows(6).any(|w| w == b"Exif\0\0"), "no APP1 EXIF");
        assert!(!jpeg.windows(8).any(|w| w == [52, 0, 0, 0, 1, 0, 0, 0]), "no GPS rational survives");
    }
    let not_image = http().post(format!("http://{}/v1/media/public", server.http)).bearer_auth(&alice.token).body("hello").send().await;
    assert_eq!(not_image.expect("post").status(), StatusCode::BAD_REQUEST);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut typed = kind.to_vec();
    typed.extend_from_slice(data);
    out.extend_from_slice(&typed);
    out.extend_from_slice(&crc32(&typed).to_be_bytes());
}

/// A 100 000 × 100 000 greyscale PNG (10 gigapixels) in a few dozen bytes: its pixel data
/// would be all zeros, and a decoder that believed the header would allocate 10 GB.
fn decompression_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // A zlib stream of a few zero bytes (the rest would follow in a real bomb).
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

async fn a_decompression_bomb_is_refused(backend: Backend) {
    let server = backend.server(&[]);
    let alice = user(&server.api()).await;
    let r = http().post(format!("http://{}/v1/media/public", server.http)).bearer_auth(&alice.token).body(decompression_bomb()).send().await;
    let r = r.expect("post");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "image_too_large", "{body}");
    assert!(body["message"].as_str().expect("message").contains("100000"), "{body}");
    assert!(backend.blobs().list("").await.expect("list").is_empty(), "nothing stored");
}

async fn the_sweep_deletes_exactly_the_unreferenced(backend: Backend) {
    let server = backend.server(&["--media-grace-secs", "0", "--media-upload-ttl-secs", "2"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let media = media_client(&server, &alice.token);
    let blobs = backend.blobs();
    let mut a = common::online(&server, Kind::Tcp, &alice).await;
    let ab = a.open_direct(bob.user_id).await.expect("open");

    let kept_bytes = random_bytes(20_000);
    let kept = media.upload(kept_bytes.clone(), 8192).await.expect("upload");
    announce(&mut a, ab, kept).await;
    // The same bytes uploaded again and never sent: one blob for both (content addressing).
    let twin = media.upload(kept_bytes.clone(), 8192).await.expect("upload");
    let never_sent = media.upload(random_bytes(20_000), 8192).await.expect("upload");
    let deleted_bytes = random_bytes(20_000);
    let deleted = media.upload(deleted_bytes.clone(), 8192).await.expect("upload");
    let seq = announce(&mut a, ab, deleted).await;
    a.delete_message(ab, seq).await.expect("deleted for everyone");
    let abandoned_at = std::time::Instant::now();
    let abandoned = media.create(50_000, None).await.expect("created");
    media.patch(abandoned, 0, random_bytes(10_000)).await.expect("first chunk");
    assert_eq!(blobs.list("blobs").await.expect("list").len(), 3, "kept+twin share one blob");
    assert_eq!(chunks_of(&blobs, abandoned).await.len(), 1);

    let sweep = || async {
        let r = http().post(format!("http://{}/admin/media/sweep", server.admin)).bearer_auth(common::ADMIN_TOKEN).send().await.expect("sweep");
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<serde_json::Value>().await.expect("report")
    };
    // First sweep: the unreferenced are marked, nothing is deleted yet (grace starts now).
    let first = sweep().await;
    assert_eq!(first["marked"], 3, "{first}");
    assert_eq!(first["deleted"], 0, "{first}");
    // The abandoned upload expires two seconds after its creation (wall-clock expiry is
    // the behaviour under test).
    tokio::time::sleep((abandoned_at + Duration::from_millis(2200)).saturating_duration_since(std::time::Instant::now())).await;
    let second = sweep().await;
    assert_eq!(second["deleted"], 3, "{second}");
    let expired = first["expired_uploads"].as_u64().expect("n") + second["expired_uploads"].as_u64().expect("n");
    assert_eq!(expired, 1, "{first} {second}");
    assert_eq!(second["blobs_deleted"], 2, "the twin's blob is the kept media's: it stays");

    assert_eq!(media_client(&server, &bob.token).download(kept).await.expect("still there"), kept_bytes);
    for gone in [twin, never_sent, deleted] {
        assert_eq!(status_of(media.download(gone).await), 404);
    }
    assert_eq!(status_of(media.offset(abandoned).await), 404);
    let left: Vec<String> = blobs.list("blobs").await.expect("list").into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec![BlobStore::blob_key(&sha256(&kept_bytes))], "exactly the referenced blob is left");
    assert!(blobs.list("uploads").await.expect("list").is_empty());
    let third = sweep().await;
    assert_eq!((third["deleted"].as_u64(), third["marked"].as_u64()), (Some(0), Some(0)), "{third}");
}

async fn tuspy_uploads_unchanged(backend: Backend) {
    let server = backend.server(&[]);
    let alice = user(&server.api()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(3 * MIB + 12345);
    let path = dir.path().join("holiday.bin");
    std::fs::write(&path, &data).expect("write");
    // tuspy as published: the only settings are the server URL, the bearer header, a chunk
    // size and its own checksum option (sha1).
    let script = r#"
import sys
from tusclient import client
c = client.TusClient(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
u = c.uploader(sys.argv[3], chunk_size=1024 * 1024, metadata={"filename": "holiday.bin"}, upload_checksum=True)
u.upload()
print(u.url)
"#;
    let python = switchboard::testkit::s3::python_env().join("bin/python");
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(format!("http://{}/v1/media", server.http))
        .arg(&alice.token)
        .arg(&path)
        .output()
        .expect("python with tuspy (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "tuspy failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let id: MediaId = url.rsplit('/').next().expect("id").parse().expect("a media id in the upload URL");
    let media = media_client(&server, &alice.token);
    assert_eq!(media.download(id).await.expect("download"), data);
    let head = http().head(format!("http://{}/v1/media/{id}", server.http)).bearer_auth(&alice.token).header("Tus-Resumable", "1.0.0").send().await;
    let head = head.expect("head");
    let metadata = head.headers()["upload-metadata"].to_str().expect("metadata").to_owned();
    assert!(metadata.starts_with("filename "), "tuspy's metadata is kept: {metadata}");
}

/// Whatever store the run uses for other tests: this one moves an embedded node of its own
/// onto a private PostgreSQL.
async fn store_copy_carries_the_blobs(backend: Backend) {
    let data_dir = tempfile::tempdir().expect("data");
    let store = format!("embedded:{}", data_dir.path().join("db").display());
    let spec = backend.spec();
    let mut server = TestServer::start_on(&store, &["--media-store", &spec]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let bytes = random_bytes(200_000);
    let id = media_client(&server, &alice.token).upload(bytes.clone(), 65_536).await.expect("upload");
    let mut a = common::online(&server, Kind::Tcp, &alice).await;
    let ab = a.open_direct(bob.user_id).await.expect("open");
    announce(&mut a, ab, id).await;
    drop(a);
    assert!(server.terminate().success());

    let pg = switchboard::testkit::PrivatePostgres::start().expect("private postgres");
    let (_other_dir, target_media) = backend.other_spec();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["store", "copy", "--from", &store, "--to", &pg.url("postgres"), "--media-from", &spec, "--media-to", &target_media])
        .output()
        .expect("store copy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "copy failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("media: 1 (source = target)"), "{stdout}");
    assert!(stdout.contains("blobs: 1 (1 copied"), "{stdout}");

    let moved = TestServer::start_on(&pg.url("postgres"), &["--media-store", &target_media]);
    let bob_media = media_client(&moved, &bob.token);
    assert_eq!(bob_media.download(id).await.expect("bob reads it on the new store"), bytes);
    let target = BlobStore::open(&BlobSpec::parse(&target_media).expect("spec")).expect("open");
    let mut stream = target.read(&BlobStore::blob_key(&sha256(&bytes)), None).await.expect("read");
    let mut total = 0;
    while let Some(chunk) = stream.next().await {
        total += chunk.expect("bytes").len();
    }
    assert_eq!(total, bytes.len());
}
