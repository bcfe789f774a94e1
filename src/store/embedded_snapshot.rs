//! Read snapshots of the embedded store shared between reads until the next commit.
//!
//! Why: a redb read costs more to set up than to do. Beginning a read transaction
//! registers it with the transaction tracker, and opening a table looks its name up in
//! the table tree and checks its key and value types (which formats both type names).
//! A device's login makes a dozen small reads (token, privacy settings, blocks,
//! conversations, cursors, chat states, the to-device queue, key counts, the missed
//! messages), and in the reconnect storm's profile that setup was ~13 % of the server's
//! CPU against ~7 % for the lookups themselves. Here one read transaction, and each
//! table opened once in it, serve every read until the writer commits again.
//!
//! Consistency: a read must see every write whose commit returned before the read began
//! (a sender's ack, then its own read; a catch-up after a cursor write), and reads one
//! after another must never go back in time (a last seq, then the messages up to it). The
//! writer calls [`Snapshots::begin_commit`] right before each commit and
//! [`Snapshots::invalidate`] after it, before it answers the commit's writes. Nothing is
//! cached in between, and a snapshot is cached only if neither happened while it was
//! being taken: so a cached snapshot is always the latest committed state, and a read that
//! starts after an answer never gets a snapshot from before that commit.
//!
//! Memory: an unused snapshot is dropped by the next commit's invalidation, so a live
//! snapshot pins at most the pages of one committed state, and only while reads use it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redb::{Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition, TableHandle, Value};

use super::StoreError;
use super::embedded::be;

/// A committed state of the database, and the tables read from it so far.
pub(super) struct Snapshot {
    txn: ReadTransaction,
    /// Opened tables by name, each a `ReadOnlyTable<K, V>` of its definition's types.
    tables: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl Snapshot {
    /// A new read transaction.
    fn begin(db: &Database) -> Result<Self, StoreError> {
        Ok(Self { txn: db.begin_read().map_err(be)?, tables: Mutex::new(HashMap::new()) })
    }

    /// The table `definition` in this snapshot, opened on first use.
    ///
    /// Errors: `Backend` if the table does not exist or its stored types differ from the
    /// definition's (as `ReadTransaction::open_table`).
    pub(super) fn table<K, V>(&self, definition: TableDefinition<'_, K, V>) -> Result<Arc<ReadOnlyTable<K, V>>, StoreError>
    where
        K: Key + 'static,
        V: Value + 'static,
        ReadOnlyTable<K, V>: Send + Sync,
    {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(table) = tables.get(definition.name())
            && let Ok(table) = Arc::clone(table).downcast::<ReadOnlyTable<K, V>>()
        {
            return Ok(table);
        }
        let table = Arc::new(self.txn.open_table(definition).map_err(be)?);
        tables.insert(definition.name().to_owned(), table.clone());
        Ok(table)
    }
}

/// The snapshot the next read uses, and a counter of commits to tell a stale one.
pub(super) struct Snapshots {
    state: Mutex<State>,
}

struct State {
    /// Bumped at the start and at the end of every commit.
    commits: u64,
    /// Between [`Snapshots::begin_commit`] and [`Snapshots::invalidate`].
    committing: bool,
    current: Option<Arc<Snapshot>>,
}

impl Snapshots {
    /// No snapshot yet.
    pub(super) fn new() -> Self {
        Self { state: Mutex::new(State { commits: 0, committing: false, current: None }) }
    }

    /// The snapshot to read from: the cached one, or a new read transaction (cached if no
    /// commit happened while it began).
    ///
    /// Errors: `Backend` if redb cannot begin a read transaction.
    pub(super) fn current(&self, db: &Database) -> Result<Arc<Snapshot>, StoreError> {
        let commits = match self.cached() {
            Ok(snapshot) => return Ok(snapshot),
            Err(commits) => commits,
        };
        let snapshot = Arc::new(Snapshot::begin(db)?);
        self.offer(&snapshot, commits);
        Ok(snapshot)
    }

    /// The cached snapshot, or the count of commits as of now (to take a new one).
    fn cached(&self) -> Result<Arc<Snapshot>, u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.current.as_ref().map(Arc::clone).ok_or(state.commits)
    }

    /// Caches `snapshot`, begun when the counter read `commits`, unless a commit began or
    /// ended since, or is under way: it may miss that commit, so it serves only the read
    /// that began before it.
    fn offer(&self, snapshot: &Arc<Snapshot>, commits: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.commits == commits && !state.committing && state.current.is_none() {
            state.current = Some(Arc::clone(snapshot));
        }
    }

    /// A commit is about to be made: until [`Self::invalidate`], every read takes a
    /// transaction of its own. The writer calls it right before committing.
    pub(super) fn begin_commit(&self) {
        self.set_committing(true);
    }

    /// A commit was made (or failed): reads from now on take a new snapshot. The writer
    /// calls it after each commit and before answering the commit's writes.
    pub(super) fn invalidate(&self) {
        self.set_committing(false);
    }

    /// Either end of a commit: counts it, and drops the cached snapshot.
    fn set_committing(&self, committing: bool) {
        let stale = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.commits += 1;
            state.committing = committing;
            state.current.take()
        };
        // Dropped outside the lock (ending a read transaction takes redb's own lock).
        drop(stale);
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn db_with(dir: &std::path::Path, value: u64) -> Database {
        let db = Database::create(dir.join("db.redb")).expect("create");
        put(&db, value);
        db
    }

    fn put(db: &Database, value: u64) {
        let txn = db.begin_write().expect("write");
        txn.open_table(T).expect("table").insert(1, value).expect("insert");
        txn.commit().expect("commit");
    }

    fn read(snapshots: &Snapshots, db: &Database) -> u64 {
        let snapshot = snapshots.current(db).expect("snapshot");
        snapshot.table(T).expect("table").get(1).expect("get").expect("row").value()
    }

    #[test]
    fn reads_share_one_snapshot_until_a_commit() {
        let dir = tempfile::tempdir().expect("dir");
        let db = db_with(dir.path(), 1);
        let snapshots = Snapshots::new();
        let first = snapshots.current(&db).expect("snapshot");
        assert!(Arc::ptr_eq(&first, &snapshots.current(&db).expect("snapshot")));
        assert!(Arc::ptr_eq(&first.table(T).expect("table"), &first.table(T).expect("table")), "a table is opened once per snapshot");
        put(&db, 2);
        // Not invalidated yet: the snapshot still shows the state it was taken at.
        assert_eq!(read(&snapshots, &db), 1);
        snapshots.invalidate();
        assert_eq!(read(&snapshots, &db), 2);
        assert!(!Arc::ptr_eq(&first, &snapshots.current(&db).expect("snapshot")));
    }

    #[test]
    fn nothing_is_cached_while_a_commit_is_under_way() {
        let dir = tempfile::tempdir().expect("dir");
        let db = db_with(dir.path(), 1);
        let snapshots = Snapshots::new();
        let _ = snapshots.current(&db).expect("snapshot");
        // A read that began before the commit became visible must not be kept for the
        // reads after it, which would go back from what a fresh read already showed.
        snapshots.begin_commit();
        assert!(snapshots.cached().is_err(), "the commit dropped the cached snapshot");
        let before = snapshots.current(&db).expect("snapshot");
        assert!(snapshots.cached().is_err(), "a snapshot taken during a commit was cached");
        put(&db, 2);
        assert_eq!(read(&snapshots, &db), 2, "a fresh read sees the commit");
        snapshots.invalidate();
        drop(before);
        assert_eq!(read(&snapshots, &db), 2);
        assert!(snapshots.cached().is_ok(), "after the commit, snapshots are shared again");
    }

    #[test]
    fn a_snapshot_begun_across_a_commit_is_not_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let db = db_with(dir.path(), 1);
        let snapshots = Snapshots::new();
        // A read looks for a snapshot, finds none, and begins one; meanwhile a write
        // commits and is answered.
        let Err(commits) = snapshots.cached() else { panic!("nothing cached yet") };
        let stale = Arc::new(Snapshot::begin(&db).expect("read"));
        put(&db, 2);
        snapshots.invalidate();
        snapshots.offer(&stale, commits);
        // A read after the answer must see the write, not the stale snapshot.
        assert!(snapshots.cached().is_err(), "the stale snapshot was cached");
        assert_eq!(read(&snapshots, &db), 2);
    }
}
