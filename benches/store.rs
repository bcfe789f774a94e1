//! Embedded store: durable batch append (one fsync per batch, as the store writer does)
//! and history pages.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::store::{EmbeddedStore, Store, StoredMessage, WriteOp};
use uuid::Uuid;

fn message(conversation: Uuid, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation,
        seq,
        sender_user_id: Uuid::from_u128(1),
        sender_device_id: Uuid::from_u128(2),
        client_msg_id: format!("c-{seq}"),
        server_time_ms: 1_795_000_000_000 + seq,
        payload: Bytes::from(vec![9u8; 100]),
        event: None,
        kind: Default::default(),
        reference_seq: 0,
        deleted: false,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut group = c.benchmark_group("embedded_store");
    group.sample_size(20);
    for batch in [1u64, 64, 512] {
        let conversation = Uuid::new_v4();
        let mut next = 1u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("append_batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let ops: Vec<WriteOp> = (next..next + batch).map(|s| WriteOp::Append(message(conversation, s))).collect();
                    next += batch;
                    ops
                },
                |ops| rt.block_on(store.apply(ops)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    let conversation = Uuid::new_v4();
    let ops: Vec<WriteOp> = (1..=10_000).map(|s| WriteOp::Append(message(conversation, s))).collect();
    rt.block_on(store.apply(ops)).unwrap();
    group.throughput(Throughput::Elements(50));
    group.bench_function("history_page_50", |b| b.iter(|| rt.block_on(store.messages_before(conversation, 5_000, 50)).unwrap()));
    group.bench_function("catch_up_page_256", |b| b.iter(|| rt.block_on(store.messages_after(conversation, 2_000, 256)).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
