//! Property tests of the wire format: every frame round-trips through encoding and the
//! TCP framing, however the byte stream is chunked; arbitrary bytes never panic a decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchboard::protocol::{self, FrameCodec, client_frame, pb, server_frame};
use tokio_util::codec::{Decoder, Encoder};

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

fn client_kind() -> impl Strategy<Value = client_frame::Kind> {
    prop_oneof![
        (any::<u32>(), ".{0,40}", ".{0,20}").prop_map(|(v, t, n)| client_frame::Kind::Hello(pb::Hello {
            protocol_version: v,
            token: t,
            client_name: n
        })),
        any::<u64>().prop_map(|n| client_frame::Kind::Ping(pb::Ping { nonce: n })),
        (any::<u64>(), bytes_up_to(20)).prop_map(|(r, p)| client_frame::Kind::OpenDirect(pb::OpenDirect { request_id: r, peer_user_id: p })),
        (".{0,64}", bytes_up_to(20), bytes_up_to(2048)).prop_map(|(c, id, p)| client_frame::Kind::Send(pb::Send {
            client_msg_id: c,
            conversation_id: id,
            payload: p,
            kind: 0,
            reference_seq: 0,
            attachments: Vec::new(),
        })),
        (bytes_up_to(20), any::<u64>()).prop_map(|(c, s)| client_frame::Kind::Ack(pb::Ack { conversation_id: c, seq: s })),
        (bytes_up_to(20), any::<u64>()).prop_map(|(c, s)| client_frame::Kind::Read(pb::Read { conversation_id: c, seq: s })),
        (bytes_up_to(20), any::<bool>()).prop_map(|(c, a)| client_frame::Kind::Typing(pb::Typing { conversation_id: c, active: a })),
        (any::<u64>(), bytes_up_to(20), any::<u64>(), any::<u32>()).prop_map(|(r, c, b, l)| client_frame::Kind::History(pb::HistoryRequest {
            request_id: r,
            conversation_id: c,
            before_seq: b,
            limit: l
        })),
        (any::<u64>(), proptest::collection::vec(bytes_up_to(20), 0..5))
            .prop_map(|(r, u)| client_frame::Kind::PresenceQuery(pb::PresenceQuery { request_id: r, user_ids: u })),
        Just(client_frame::Kind::Bye(pb::Bye {})),
    ]
}

fn message() -> impl Strategy<Value = pb::Message> {
    (bytes_up_to(17), any::<u64>(), bytes_up_to(17), bytes_up_to(17), ".{0,64}", any::<u64>(), bytes_up_to(1024)).prop_map(
        |(c, seq, u, d, id, t, p)| pb::Message {
            conversation_id: c,
            seq,
            sender_user_id: u,
            sender_device_id: d,
            client_msg_id: id,
            server_time_ms: t,
            payload: p,
            event: None,
            kind: 0,
            reference_seq: 0,
            deleted: false,
            delivered_to: 0,
            read_by: 0,
        },
    )
}

fn server_kind() -> impl Strategy<Value = server_frame::Kind> {
    prop_oneof![
        message().prop_map(server_frame::Kind::Message),
        (".{0,64}", bytes_up_to(17), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(c, id, s, t, d)| server_frame::Kind::SendAck(
            pb::SendAck { client_msg_id: c, conversation_id: id, seq: s, server_time_ms: t, duplicate: d }
        )),
        (bytes_up_to(17), bytes_up_to(17), bytes_up_to(17), 0i32..3, any::<u64>(), any::<u64>()).prop_map(|(c, u, d, k, s, t)| {
            server_frame::Kind::Receipt(pb::Receipt { conversation_id: c, user_id: u, device_id: d, kind: k, up_to_seq: s, server_time_ms: t })
        }),
        (any::<u64>(), bytes_up_to(17), proptest::collection::vec(message(), 0..4), any::<bool>()).prop_map(|(r, c, m, h)| {
            server_frame::Kind::History(pb::HistoryPage { request_id: r, conversation_id: c, messages: m, has_more: h })
        }),
        (0i32..20, ".{0,40}", ".{0,20}", any::<bool>()).prop_map(|(c, m, r, f)| server_frame::Kind::Error(pb::Error {
            code: c,
            message: m,
            request_ref: r,
            fatal: f
        })),
        (0i32..20, ".{0,40}", any::<u32>()).prop_map(|(c, r, ms)| server_frame::Kind::Closing(pb::Closing {
            code: c,
            reason: r,
            reconnect_after_ms: ms
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(kind in client_kind()) {
        let bytes = protocol::encode_client(&protocol::client(kind.clone()));
        prop_assert_eq!(protocol::decode_client(&bytes).unwrap(), kind);
    }

    #[test]
    fn server_frames_round_trip(kind in server_kind()) {
        let bytes = protocol::encode_server(&protocol::server(kind.clone()));
        prop_assert_eq!(protocol::decode_server(&bytes).unwrap(), kind);
    }

    /// A stream of frames, cut into arbitrary chunks, decodes into the same frames.
    #[test]
    fn tcp_framing_survives_any_chunking(kinds in proptest::collection::vec(client_kind(), 1..20), cuts in proptest::collection::vec(1usize..64, 1..50)) {
        let mut codec = FrameCodec::new(1 << 20);
        let mut wire = BytesMut::new();
        for k in &kinds {
            codec.encode(protocol::encode_client(&protocol::client(k.clone())), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < wire.len() {
            let step = cuts[i % cuts.len()].min(wire.len() - at);
            buffer.extend_from_slice(&wire[at..at + step]);
            at += step;
            i += 1;
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                decoded.push(protocol::decode_client(&frame).unwrap());
            }
        }
        prop_assert_eq!(decoded, kinds);
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = protocol::decode_client(&data);
        let _ = protocol::decode_server(&data);
        let mut codec = FrameCodec::new(1024);
        let mut buffer = BytesMut::from(&data[..]);
        // Either frames, a clean "need more", or an error: never a panic or an endless loop.
        for _ in 0..data.len() + 1 {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => { let _ = protocol::decode_client(&frame); }
                Ok(None) | Err(_) => break,
            }
        }
    }
}
