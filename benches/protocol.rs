//! Frame encode/decode and TCP framing throughput.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchboard::protocol::{self, FrameCodec, client_frame, id_bytes, pb, server_frame};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

fn message_frame(payload: usize) -> pb::ServerFrame {
    protocol::server(server_frame::Kind::Message(pb::Message {
        conversation_id: id_bytes(Uuid::new_v4()),
        seq: 123_456,
        sender_user_id: id_bytes(Uuid::new_v4()),
        sender_device_id: id_bytes(Uuid::new_v4()),
        client_msg_id: "0b9e1c6a-6a4e-4a55-9f27-2f8e1c3b2a10".into(),
        server_time_ms: 1_795_000_000_000,
        payload: Bytes::from(vec![7u8; payload]),
        event: None,
        kind: 0,
        reference_seq: 0,
        deleted: false,
        delivered_to: 0,
        read_by: 0,
    }))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    for size in [100usize, 4096] {
        let frame = message_frame(size);
        let encoded = protocol::encode_server(&frame);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode_message_{size}b"), |b| b.iter(|| protocol::encode_server(black_box(&frame))));
        group.bench_function(format!("decode_message_{size}b"), |b| b.iter(|| protocol::decode_server(black_box(&encoded)).unwrap()));
    }
    let send = protocol::encode_client(&protocol::client(client_frame::Kind::Send(pb::Send {
        client_msg_id: "c-1".into(),
        conversation_id: id_bytes(Uuid::new_v4()),
        payload: Bytes::from(vec![1u8; 100]),
        kind: 0,
        reference_seq: 0,
        attachments: Vec::new(),
    })));
    group.bench_function("decode_send_100b", |b| b.iter(|| protocol::decode_client(black_box(&send)).unwrap()));
    group.bench_function("tcp_frame_and_unframe_100_sends", |b| {
        let mut codec = FrameCodec::new(1 << 20);
        b.iter(|| {
            let mut wire = BytesMut::new();
            for _ in 0..100 {
                codec.encode(send.clone(), &mut wire).unwrap();
            }
            let mut n = 0;
            while let Some(f) = codec.decode(&mut wire).unwrap() {
                n += f.len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
