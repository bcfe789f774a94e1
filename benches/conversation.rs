//! Conversation actor sequencing, in process: sends routed to one conversation actor,
//! sequenced, group-committed to the embedded store (fsync) and acknowledged back to the
//! sending device's outbox. Batches of 1 and 100 sends in flight, side by side.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard::actors::messages::ConversationRequest;
use switchboard::actors::outbox::Taken;
use switchboard::cores::requests::SendRequest;
use switchboard::ids::{DeviceId, UserId};
use switchboard::loadgen::InProcessNode;
use switchboard::store::{ContentKind, ConversationKind, ConversationRecord, direct_conversation_id, now_ms};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (node, conversation, user, device, outbox) = rt.block_on(async {
        let node = InProcessNode::start().await.unwrap();
        let (user, peer, device) = (UserId::random(), UserId::random(), DeviceId::random());
        let id = direct_conversation_id(user, peer);
        let mut members = vec![user, peer];
        members.sort();
        let record =
            ConversationRecord { conversation_id: id, kind: ConversationKind::Direct, members, created_ms: now_ms(), group: None, retention_secs: 0 };
        node.node.ctx.store.create_conversation(record).await.unwrap();
        let (_session, outbox) = node.session(user, device, 4096).await.unwrap();
        let mut first = Vec::new();
        assert_eq!(outbox.take(&mut first).await, Taken::Frames); // CatchUpComplete
        (node, id, user, device, outbox)
    });
    let mut next = 0u64;
    let mut group = c.benchmark_group("conversation");
    group.sample_size(20);
    for in_flight in [1u64, 100] {
        group.throughput(Throughput::Elements(in_flight));
        group.bench_function(format!("send_to_ack_{in_flight}_in_flight"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for _ in 0..in_flight {
                        next += 1;
                        let request = SendRequest {
                            user,
                            device,
                            client_msg_id: format!("c-{next}"),
                            payload: Bytes::from_static(&[7u8; 100]),
                            kind: ContentKind::Normal,
                            reference_seq: 0,
                            attachments: Vec::new(),
                        };
                        node.node.ctx.router.send_to_conversation(conversation, ConversationRequest::Sends(vec![request])).await.unwrap();
                    }
                    let mut acks = Vec::new();
                    while (acks.len() as u64) < in_flight {
                        assert_eq!(outbox.take(&mut acks).await, Taken::Frames);
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
