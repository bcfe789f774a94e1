//! Fuzz harnesses: what each cargo-fuzz target (`fuzz/`) runs on one input, kept here so
//! that the main crate's regression test (`tests/fuzz_regressions.rs`) replays the seed
//! corpora and every input that ever crashed a target through exactly the same code,
//! without libFuzzer. Each harness panics when an invariant breaks; returning is a pass.
//!
//! Every input a client controls before any check is covered: the frame decoder, the
//! TCP length-prefix codec, the WebSocket frame path (frame parsing, reassembly of
//! continuations, the text/binary/control rules) and each JSON body and query string of
//! the HTTP API with the validation that follows its parsing.

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::{self, FrameCodec, FrameError, client_frame, parse_id};

/// The fuzz targets, by name (`scripts/fuzz.sh <target>`).
pub const TARGETS: [&str; 4] = ["frame_decoder", "tcp_codec", "ws_frames", "http_json"];

/// Runs the harness of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frame_decoder" => frame_decoder(data),
        "tcp_codec" => tcp_codec(data),
        "ws_frames" => ws_frames(data),
        "http_json" => http_json(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Client and server frames: decoding never panics; whatever decodes re-encodes to bytes
/// that decode to the same frame; ids in it parse or are refused, never panic.
pub fn frame_decoder(data: &[u8]) {
    if let Ok(kind) = protocol::decode_client(data) {
        let frame = protocol::client(kind);
        let again = protocol::decode_client(&protocol::encode_client(&frame)).expect("a re-encoded client frame decodes");
        assert_eq!(Some(again), frame.kind, "client frame changed through a round trip");
        touch_ids(frame.kind.as_ref().expect("kind"));
    }
    if let Ok(kind) = protocol::decode_server(data) {
        let frame = protocol::server(kind);
        let again = protocol::decode_server(&protocol::encode_server(&frame)).expect("a re-encoded server frame decodes");
        assert_eq!(Some(again), frame.kind, "server frame changed through a round trip");
    }
    // The raw message (unknown oneof members included) is never worse than decode_client.
    let _ = protocol::ClientFrame::decode(data);
}

/// Parses every id a request carries, as the session does first.
fn touch_ids(kind: &client_frame::Kind) {
    use crate::ids::{ConversationId, UserId};
    let conv = |b: &[u8]| {
        let _ = parse_id::<ConversationId>("conversation_id", b);
    };
    match kind {
        client_frame::Kind::OpenDirect(o) => {
            let _ = parse_id::<UserId>("peer_user_id", &o.peer_user_id);
        }
        client_frame::Kind::Send(s) => conv(&s.conversation_id),
        client_frame::Kind::Ack(a) => conv(&a.conversation_id),
        client_frame::Kind::Read(r) => conv(&r.conversation_id),
        client_frame::Kind::Typing(t) => conv(&t.conversation_id),
        client_frame::Kind::History(h) => conv(&h.conversation_id),
        client_frame::Kind::PresenceQuery(p) => {
            for u in &p.user_ids {
                let _ = parse_id::<UserId>("user_ids", u);
            }
        }
        client_frame::Kind::CreateGroup(g) => {
            for u in &g.member_user_ids {
                let _ = parse_id::<UserId>("member_user_ids", u);
            }
        }
        client_frame::Kind::GroupChange(g) => conv(&g.conversation_id),
        client_frame::Kind::DeleteMessage(d) => conv(&d.conversation_id),
        client_frame::Kind::SetRetention(r) => conv(&r.conversation_id),
        client_frame::Kind::MessageInfo(m) => conv(&m.conversation_id),
        client_frame::Kind::GroupInfo(g) => conv(&g.conversation_id),
        _ => {}
    }
}

/// The TCP length-prefix codec on a byte stream: the first byte picks the frame limit,
/// the second how the rest arrives (chunk size). Delivered in chunks or all at once, the
/// same frames come out; none exceeds the limit; a frame is refused exactly when its
/// prefix announces more than the limit, before its body is buffered; what comes out
/// re-encodes to the bytes that went in.
pub fn tcp_codec(data: &[u8]) {
    let [limit, chunk, stream @ ..] = data else { return };
    let max = usize::from(*limit) * 16 + 1;
    let chunk = usize::from(*chunk).max(1);
    let whole = decode_all(stream, max, stream.len().max(1));
    let chunked = decode_all(stream, max, chunk);
    assert_eq!(whole, chunked, "chunking changed what the codec decoded");
    let (frames, refused) = whole;
    let mut codec = FrameCodec::new(max);
    let mut reencoded = BytesMut::new();
    for frame in &frames {
        assert!(frame.len() <= max, "a frame of {} bytes passed a limit of {max}", frame.len());
        codec.encode(frame.clone(), &mut reencoded).expect("encode");
    }
    assert_eq!(&reencoded[..], &stream[..reencoded.len()], "frames do not re-encode to their input");
    if let Some(len) = refused {
        let at = reencoded.len();
        let prefix = u32::from_be_bytes(stream[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(prefix > max && prefix == len, "refused a frame of {prefix} bytes under a limit of {max}");
    }
}

/// Frames decoded from `stream` fed `chunk` bytes at a time, and the announced length of
/// a refused frame, if one was.
fn decode_all(stream: &[u8], max: usize, chunk: usize) -> (Vec<Bytes>, Option<usize>) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max: m }) => {
                    assert_eq!(m, max);
                    // Refused from the prefix alone: never more than a chunk buffered
                    // beyond the previous frames.
                    assert!(buf.len() < 4 + chunk, "the codec buffered {} bytes of a refused frame", buf.len());
                    return (frames, Some(len));
                }
                Err(e) => panic!("the codec failed on bytes alone: {e}"),
            }
        }
    }
    (frames, None)
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
}

/// The WebSocket frame path: the bytes a client sends after the upgrade go through
/// actix-ws's frame parser and reassembly and our message rules, as in the server, with
/// a limit chosen by the first byte. Frames that come out respect the limit and decode
/// (or not) without panicking; the stream ends (nothing follows an error) however the
/// bytes end — a regression once: a protocol error repeated forever.
pub fn ws_frames(data: &[u8]) {
    use actix_web::FromRequest as _;
    use futures_util::StreamExt as _;
    let [limit, rest @ ..] = data else { return };
    let max = usize::from(*limit) * 8 + 2;
    let (req, mut payload) = actix_web::test::TestRequest::get()
        .insert_header(("upgrade", "websocket"))
        .insert_header(("connection", "upgrade"))
        .insert_header(("sec-websocket-version", "13"))
        .insert_header(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .set_payload(Bytes::copy_from_slice(rest))
        .to_http_parts();
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let body = actix_web::web::Payload::from_request(&req, &mut payload).await.expect("payload");
            // The response is kept while reading: dropping it tells the stream the
            // connection closed.
            let (_response, _session, stream) = actix_ws::handle(&req, body).expect("a valid upgrade request");
            let pings = std::cell::Cell::new(0usize);
            let frames = crate::transport::ws::inbound(stream, max, move |_| pings.set(pings.get() + 1));
            futures_util::pin_mut!(frames);
            let mut failed = false;
            while let Some(item) = frames.next().await {
                assert!(!failed, "an item after an error");
                match item {
                    Ok(frame) => {
                        assert!(frame.len() <= max, "a frame of {} bytes passed a limit of {max}", frame.len());
                        let _ = protocol::decode_client(&frame);
                    }
                    Err(FrameError::TooLarge { max: m, .. }) => {
                        assert_eq!(m, max);
                        failed = true;
                    }
                    Err(FrameError::Malformed(_)) => failed = true,
                    Err(e) => panic!("a transport error is never yielded: {e}"),
                }
            }
        })
    });
}

/// Every JSON body (and the query string) the HTTP API accepts, parsed as actix-web does
/// (serde_json, serde_urlencoded) and then validated as the handler does. The first byte
/// picks the body.
pub fn http_json(data: &[u8]) {
    use crate::http::admin::ProvisionBody;
    use crate::http::api::{LinkBody, PushTokenBody, RegisterBody, VerifyBody};
    use crate::http::history::HistoryQuery;
    let [which, body @ ..] = data else { return };
    match which % 9 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<RegisterBody>(body) {
                let _ = crate::accounts::valid_phone(&b.phone);
            }
        }
        1 => {
            if let Ok(b) = serde_json::from_slice::<VerifyBody>(body) {
                let _ = crate::accounts::valid_phone(&b.phone);
                let _ = crate::accounts::valid_name(&b.device_name);
                let _ = crate::accounts::hash_secret(&b.code);
            }
        }
        2 => {
            if let Ok(b) = serde_json::from_slice::<LinkBody>(body) {
                let _ = crate::accounts::valid_name(&b.name);
            }
        }
        3 => {
            if let Ok(b) = serde_json::from_slice::<PushTokenBody>(body) {
                let accepted = b.check().is_ok();
                assert_eq!(accepted, (1..=32).contains(&b.platform.chars().count()) && (1..=4096).contains(&b.token.chars().count()));
            }
        }
        4 => {
            if let Ok(b) = serde_json::from_slice::<ProvisionBody>(body) {
                // The handler refuses other counts before building anything; above a few
                // thousand only the loop is longer (kept short for the fuzzer's speed).
                if (1..=2_000).contains(&b.count)
                    && let Ok(phones) = crate::accounts::provisioned_phones(&b.phone_prefix, b.first, b.count)
                {
                    assert_eq!(phones.len(), b.count);
                    assert!(phones.iter().all(|p| crate::accounts::valid_phone(p)));
                }
            }
        }
        5 => {
            if let Ok(query) = std::str::from_utf8(body) {
                let _ = actix_web::web::Query::<HistoryQuery>::from_query(query);
            }
        }
        6 => {
            // The key upload body: decoded, then every size, limit and signature check
            // the handler makes (a fixed device; nothing published before).
            if let Ok(b) = serde_json::from_slice::<crate::http::keys::UploadBody>(body)
                && let Ok(upload) = b.to_upload()
            {
                let limits = crate::cores::keys::KeyLimits::default();
                let (user, device) = (crate::ids::UserId::from_u128(1), crate::ids::DeviceId::from_u128(2));
                if let Ok(checked) = crate::cores::keys::check_upload(user, device, &upload, None, 0, &limits, 0) {
                    assert!(checked.one_time_keys.len() <= limits.per_upload);
                    assert!(
                        upload.identity.is_some() || (checked.one_time_keys.is_empty() && checked.fallback.is_none()),
                        "keys signed by no identity"
                    );
                }
            }
        }
        7 => {
            if let Ok(b) = serde_json::from_slice::<crate::http::keys::QueryBody>(body) {
                let _ = b.user_ids.len();
            }
        }
        _ => {
            if let Ok(b) = serde_json::from_slice::<crate::http::keys::ClaimBody>(body) {
                let _ = b.devices.len();
            }
        }
    }
}

// ---- seed corpora -------------------------------------------------------------------

/// The seed inputs of `target`: the frames, streams and bodies the integration tests and
/// the worked example of docs/protocol.md send, in each target's input format. Committed
/// under `fuzz/seeds/<target>/` (kept equal by `tests/fuzz_regressions.rs`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame_decoder" => client_frames().into_iter().chain(server_frames()).map(|b| b.to_vec()).collect(),
        "tcp_codec" => tcp_seeds(),
        "ws_frames" => ws_seeds(),
        "http_json" => http_seeds(),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn id(n: u8) -> Bytes {
    Bytes::from(vec![n; 16])
}

/// One of each client frame, with the values the tests use.
fn client_frames() -> Vec<Bytes> {
    use crate::protocol::pb::{self, group_change::Change};
    let change = |c: Change| client_frame::Kind::GroupChange(pb::GroupChange { request_id: 7, conversation_id: id(2), change: Some(c) });
    let kinds = vec![
        client_frame::Kind::Hello(pb::Hello { protocol_version: 1, token: "a".repeat(64), client_name: "switchboard-rs".into() }),
        client_frame::Kind::Ping(pb::Ping { nonce: 42 }),
        client_frame::Kind::OpenDirect(pb::OpenDirect { request_id: 1, peer_user_id: id(1) }),
        client_frame::Kind::Send(pb::Send {
            client_msg_id: "msg-0001".into(),
            conversation_id: id(2),
            payload: Bytes::from_static(b"hi"),
            kind: 0,
            reference_seq: 0,
            attachments: Vec::new(),
        }),
        client_frame::Kind::Send(pb::Send {
            client_msg_id: "edit-1".into(),
            conversation_id: id(2),
            payload: Bytes::from_static(b"hi v2"),
            kind: pb::MessageKind::Edit as i32,
            reference_seq: 1,
            attachments: Vec::new(),
        }),
        client_frame::Kind::Ack(pb::Ack { conversation_id: id(2), seq: 1 }),
        client_frame::Kind::Read(pb::Read { conversation_id: id(2), seq: 1 }),
        client_frame::Kind::Typing(pb::Typing { conversation_id: id(2), active: true }),
        client_frame::Kind::History(pb::HistoryRequest { request_id: 3, conversation_id: id(2), before_seq: 0, limit: 50 }),
        client_frame::Kind::PresenceQuery(pb::PresenceQuery { request_id: 4, user_ids: vec![id(1), id(3)] }),
        client_frame::Kind::Bye(pb::Bye {}),
        client_frame::Kind::CreateGroup(pb::CreateGroup { request_id: 5, subject: "trio".into(), member_user_ids: vec![id(1), id(3)] }),
        change(Change::AddMembers(pb::UserList { user_ids: vec![id(4)] })),
        change(Change::RemoveMember(id(4))),
        change(Change::Leave(pb::Leave {})),
        change(Change::Promote(id(3))),
        change(Change::Demote(id(3))),
        change(Change::SetSubject("new subject".into())),
        change(Change::SetDescription(String::new())),
        change(Change::SetAdminsOnlySend(true)),
        change(Change::SetAdminsOnlyInfo(true)),
        change(Change::CreateInvite(pb::CreateInvite {})),
        change(Change::RevokeInvite(pb::RevokeInvite {})),
        client_frame::Kind::JoinGroup(pb::JoinGroup { request_id: 8, invite_token: "0123456789abcdef0123456789abcdef".into() }),
        client_frame::Kind::DeleteMessage(pb::DeleteMessage { request_id: 9, conversation_id: id(2), seq: 1 }),
        client_frame::Kind::SetRetention(pb::SetRetention { request_id: 10, conversation_id: id(2), seconds: 2 }),
        client_frame::Kind::MessageInfo(pb::MessageInfo { request_id: 11, conversation_id: id(2), seq: 1 }),
        client_frame::Kind::GroupInfo(pb::GroupInfoRequest { request_id: 12, conversation_id: id(2) }),
        // The key directory and to-device messages (docs/e2ee.md).
        client_frame::Kind::UploadKeys(pb::UploadKeys {
            request_id: 13,
            identity: Some(pb::DeviceIdentity {
                curve25519: Bytes::from(vec![1; 32]),
                ed25519: Bytes::from(vec![2; 32]),
                signature: Bytes::from(vec![3; 64]),
            }),
            one_time_keys: vec![pb::SignedKey { key_id: "AAAAAQ".into(), key: Bytes::from(vec![4; 32]), signature: Bytes::from(vec![5; 64]) }],
            fallback_key: Some(pb::SignedKey { key_id: "AAAAAg".into(), key: Bytes::from(vec![6; 32]), signature: Bytes::from(vec![7; 64]) }),
        }),
        client_frame::Kind::QueryDevices(pb::QueryDevices { request_id: 14, user_ids: vec![id(1)] }),
        client_frame::Kind::ClaimKeys(pb::ClaimKeys { request_id: 15, devices: vec![pb::DeviceAddress { user_id: id(1), device_id: id(5) }] }),
        client_frame::Kind::SendToDevice(pb::SendToDevice {
            client_id: "share-1".into(),
            targets: vec![pb::ToDeviceTarget { user_id: id(1), device_id: id(5), payload: Bytes::from_static(b"olm pre-key message") }],
        }),
        client_frame::Kind::AckToDevice(pb::AckToDevice { up_to: 1 }),
        client_frame::Kind::AckDeviceLists(pb::AckDeviceLists { user_ids: vec![id(1)] }),
    ];
    let mut frames: Vec<Bytes> = kinds.into_iter().map(|k| protocol::encode_client(&protocol::client(k))).collect();
    // The malformed inputs of tests/bad_input.rs and the empty frame.
    frames.push(Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x01]));
    frames.push(Bytes::new());
    frames
}

/// A few server frames (the client decodes these).
fn server_frames() -> Vec<Bytes> {
    use crate::protocol::pb;
    use crate::protocol::server_frame::Kind;
    [
        Kind::Welcome(pb::Welcome {
            protocol_version: 1,
            user_id: id(1),
            device_id: id(5),
            server_time_ms: 1_718_000_000_000,
            heartbeat_interval_ms: 30_000,
            max_frame_bytes: 262_144,
        }),
        Kind::SendAck(pb::SendAck {
            client_msg_id: "msg-0001".into(),
            conversation_id: id(2),
            seq: 1,
            server_time_ms: 1_718_000_000_000,
            duplicate: false,
        }),
        Kind::CatchUpComplete(pb::CatchUpComplete { conversations: 1, messages: 1 }),
        Kind::ToDeviceSent(pb::ToDeviceSent { client_id: "share-1".into() }),
        Kind::ToDevice(pb::ToDeviceMessage {
            position: 1,
            sender_user_id: id(3),
            sender_device_id: id(6),
            payload: Bytes::from_static(b"olm pre-key message"),
            sent_ms: 1_718_000_000_000,
        }),
        Kind::DeviceListsChanged(pb::DeviceListsChanged { user_ids: vec![id(3)] }),
    ]
    .into_iter()
    .map(|k| protocol::encode_server(&protocol::server(k)))
    .collect()
}

/// `limit byte, chunk byte, stream`: every client frame prefixed and concatenated, the
/// worked example's Send, and an oversize prefix.
fn tcp_seeds() -> Vec<Vec<u8>> {
    let mut codec = FrameCodec::new(usize::MAX);
    let mut all = BytesMut::new();
    for frame in client_frames() {
        codec.encode(frame, &mut all).expect("encode");
    }
    let example: &[u8] = &[
        0x00, 0x00, 0x00, 0x22, 0x22, 0x20, 0x0a, 0x08, 0x6d, 0x73, 0x67, 0x2d, 0x30, 0x30, 0x30, 0x31, 0x12, 0x10, 0xab, 0xca, 0xe5, 0x34, 0x5d,
        0x5f, 0x52, 0x9c, 0x9a, 0x17, 0x7e, 0x51, 0x4c, 0x40, 0xaa, 0x10, 0x1a, 0x02, 0x68, 0x69,
    ];
    let oversize: &[u8] = &[0x00, 0x01, 0x00, 0x00, 0x01, 0x02];
    vec![[&[255u8, 255][..], &all].concat(), [&[255u8, 3][..], &all].concat(), [&[4u8, 1][..], example].concat(), [&[1u8, 7][..], oversize].concat()]
}

/// One client WebSocket frame (RFC 6455 §5.2), masked as a client's must be.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// `limit byte, client bytes after the upgrade`: binary frames, a message in
/// continuation fragments, a ping, a text message, a close.
fn ws_seeds() -> Vec<Vec<u8>> {
    let frames = client_frames();
    let binary: Vec<u8> = frames.iter().flat_map(|f| ws_frame(true, 0x2, f)).collect();
    let hello = &frames[0];
    let (a, b) = hello.split_at(hello.len() / 2);
    let fragmented = [ws_frame(false, 0x2, a), ws_frame(false, 0x0, b), ws_frame(true, 0x0, b"")].concat();
    vec![
        [&[255u8][..], &binary].concat(),
        [&[64u8][..], &fragmented, &ws_frame(true, 0x9, b"ping")].concat(),
        [&[64u8][..], &ws_frame(true, 0x1, b"text is a violation")].concat(),
        [&[2u8][..], &ws_frame(true, 0x2, &[0u8; 40]), &ws_frame(true, 0x8, &[0x03, 0xe8])].concat(),
    ]
}

/// `selector byte, body`: the bodies and queries the tests send.
fn http_seeds() -> Vec<Vec<u8>> {
    let bodies: [(u8, &str); 14] = [
        (0, r#"{"phone": "+14155550001"}"#),
        (0, r#"{"phone": "14155550123"}"#),
        (1, r#"{"phone": "+14155550001", "code": "123456", "device_name": "Pixel 8"}"#),
        (1, r#"{"phone": "+14155550001", "code": "123456"}"#),
        (2, r#"{"name": "laptop"}"#),
        (3, r#"{"platform": "fcm", "token": "push-token-1"}"#),
        (4, r#"{"count": 3, "phone_prefix": "+1777", "first": 100}"#),
        (4, r#"{"count": 1, "phone_prefix": "", "first": 9223372036854775806}"#),
        (5, "before=10&limit=50"),
        (5, "limit=0"),
        (6, r#"{"one_time_keys": [], "fallback_key": null}"#),
        (
            6,
            r#"{"identity": {"curve25519": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "ed25519": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "signature": "AAAA"}, "one_time_keys": [{"key_id": "AAAAAQ", "key": "AAAA", "signature": "AAAA"}]}"#,
        ),
        (7, r#"{"user_ids": ["6c1f7a57-0b2e-4e8e-9a41-535742434844"]}"#),
        (8, r#"{"devices": [{"user_id": "6c1f7a57-0b2e-4e8e-9a41-535742434844", "device_id": "6c1f7a57-0b2e-4e8e-9a41-535742434845"}]}"#),
    ];
    bodies.iter().map(|(which, body)| [&[*which][..], body.as_bytes()].concat()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_passes_its_harness() {
        for target in TARGETS {
            let seeds = seeds(target);
            assert!(!seeds.is_empty(), "{target} has no seed");
            for seed in seeds {
                run(target, &seed);
            }
        }
    }

    #[test]
    fn every_target_runs_on_an_empty_and_a_small_input() {
        for target in TARGETS {
            run(target, b"");
            run(target, b"\x01\x02\x00\x00\x00\x01\x52");
        }
    }
}
