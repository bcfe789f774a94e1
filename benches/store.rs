//! The store backends side by side in one run: durable batch append (one transaction per
//! batch, as the store writer commits them) and history / catch-up pages, on the embedded
//! store (redb, fsync per commit) and on a private PostgreSQL server (default settings:
//! `synchronous_commit = on`, fsync on) started for the run.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use switchboard::ids::{ConversationId, DeviceId, UserId};
use switchboard::store::{EmbeddedStore, Store, StoreSpec, StoredMessage, WriteOp};
use switchboard::testkit::PrivatePostgres;

fn message(conversation: ConversationId, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation,
        seq,
        sender_user_id: UserId::from_u128(1),
        sender_device_id: DeviceId::from_u128(2),
        client_msg_id: format!("c-{seq}"),
        server_time_ms: 1_795_000_000_000 + seq,
        payload: Bytes::from(vec![9u8; 100]),
        event: None,
        kind: Default::default(),
        reference_seq: 0,
        deleted: false,
        attachments: Vec::new(),
    }
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: Arc<dyn Store>) {
    let mut group = c.benchmark_group(format!("{name}_store"));
    group.sample_size(20);
    for batch in [1u64, 64, 512] {
        let conversation = ConversationId::random();
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
    let conversation = ConversationId::random();
    for chunk in (1..=10_000u64).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<WriteOp> = chunk.iter().map(|s| WriteOp::Append(message(conversation, *s))).collect();
        rt.block_on(store.apply(ops)).unwrap();
    }
    group.throughput(Throughput::Elements(50));
    group.bench_function("history_page_50", |b| b.iter(|| rt.block_on(store.messages_before(conversation, 5_000, 50)).unwrap()));
    group.throughput(Throughput::Elements(256));
    group.bench_function("catch_up_page_256", |b| b.iter(|| rt.block_on(store.messages_after(conversation, 2_000, 256)).unwrap()));
    group.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    bench_backend(c, &rt, "embedded", Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
    match PrivatePostgres::start() {
        Ok(pg) => {
            let url = rt.block_on(pg.create_database("bench")).unwrap();
            let store = rt.block_on(StoreSpec::parse(&url).unwrap().open()).unwrap();
            bench_backend(c, &rt, "postgres", store);
        }
        Err(e) => eprintln!("postgres store benchmarks skipped: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
