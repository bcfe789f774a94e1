//! Contact discovery in numbers per second, on the embedded store and on a private
//! PostgreSQL server in one run, next to the parsing alone: an address book of 1,000
//! numbers written as people write them (`(415) 3xx-xxxx`, region US), 30 % of them
//! registered users. "First sync" is a new account (every number new: normalised, looked
//! up, remembered); "re-check" is the same account again (every number known: free of the
//! budget, looked up only).

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::contacts::{Contacts, ContactsConfig};
use switchboard::ids::UserId;
use switchboard::store::{EmbeddedStore, Store, StoreSpec, UserRecord};
use switchboard::testkit::PrivatePostgres;

const BOOK: u32 = 1_000;

/// The address book: `(415) 3nn-nnnn` for n in 0..1000.
fn book() -> Vec<String> {
    (0..BOOK).map(|n| format!("(415) {}-{:04}", 300 + n / 10_000 % 700, n % 10_000)).collect()
}

/// Registers every third-ish number of the book (30 %).
fn register(rt: &tokio::runtime::Runtime, store: &Arc<dyn Store>) {
    for n in (0..BOOK).filter(|n| n % 10 < 3) {
        let phone = format!("+1415{}{:04}", 300 + n / 10_000 % 700, n % 10_000);
        let user = UserRecord { user_id: UserId::random(), phone: phone.clone(), created_ms: 0 };
        rt.block_on(store.get_or_create_user(&phone, user)).expect("register");
    }
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: Arc<dyn Store>) {
    register(rt, &store);
    let contacts = Contacts::new(store.clone(), ContactsConfig { new_numbers_per_day: 0 });
    let book = book();
    let mut group = c.benchmark_group(format!("discovery_{name}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(BOOK)));
    group.bench_function("first_sync_1000", |b| {
        b.iter_batched(
            UserId::random,
            |owner| {
                let found = rt.block_on(contacts.discover(owner, &book, Some("US"))).expect("discover");
                assert_eq!(found.users.len(), 300);
            },
            BatchSize::SmallInput,
        )
    });
    let owner = UserId::random();
    rt.block_on(contacts.discover(owner, &book, Some("US"))).expect("first sync");
    group.bench_function("recheck_1000", |b| {
        b.iter(|| {
            let found = rt.block_on(contacts.discover(owner, &book, Some("US"))).expect("discover");
            assert_eq!(found.new_numbers, 0);
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let book = book();
    let mut group = c.benchmark_group("discovery_parsing");
    group.throughput(Throughput::Elements(u64::from(BOOK)));
    group.bench_function("normalize_1000", |b| b.iter(|| book.iter().filter(|p| switchboard::phone::normalize(p, Some("US")).is_ok()).count()));
    group.finish();
    let dir = tempfile::tempdir().expect("tempdir");
    bench_backend(c, &rt, "embedded", Arc::new(EmbeddedStore::open(dir.path()).expect("open")));
    match PrivatePostgres::start() {
        Ok(pg) => {
            let url = rt.block_on(pg.create_database("bench")).expect("database");
            let store = rt.block_on(StoreSpec::parse(&url).expect("url").open()).expect("open");
            bench_backend(c, &rt, "postgres", store);
        }
        Err(e) => eprintln!("postgres discovery benchmarks skipped: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
