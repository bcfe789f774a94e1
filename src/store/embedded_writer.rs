//! The embedded store's writer thread: every write of the store runs here, in arrival
//! order. Consecutive logged writes are group-committed (applied in one redb transaction,
//! appended to the write-ahead log as one record, one `fdatasync`, then committed without
//! redb's own fsync); other writes run as their own transaction; checkpoints (a durable
//! redb commit, then the log emptied) run on time, on size and at the end. Each commit
//! opens and closes a window on the shared read snapshot, so that reads never miss an
//! answered write. What a logged write does to the tables is `embedded::apply_logged`.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use super::StoreError;
use super::embedded::{Logged, LoggedOutcome, apply_logged, be, encode};
use super::embedded_snapshot::Snapshots;
use super::wal::Wal;

/// A checkpoint is taken whenever the log grows past this (and at least every
/// [`super::embedded::EmbeddedOptions::checkpoint_interval`] while it holds anything).
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// Where a job's answer goes.
pub(super) type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

/// A write run on the writer thread.
pub(super) type WriterFn = Box<dyn FnOnce(&Database) + Send>;

/// Work for the writer thread.
pub(super) enum Job {
    /// A logged write: group-committed with the logged writes queued behind it.
    /// (Boxed: a write is far larger than the other jobs, and every slot of the queue is
    /// sized by the largest.)
    Logged(Box<Logged>, Reply<LoggedOutcome>),
    /// Any other write: its own durable transaction.
    Run(WriterFn),
    /// A write that commits without durability of its own (`Durability::None`): made
    /// durable by the next checkpoint, so it needs none first (rate buckets: losing the
    /// last takes in a crash refills a bucket a little early, nothing worse).
    RunLight(WriterFn),
    /// Make everything durable in the database and empty the log.
    Checkpoint(Reply<()>),
}

/// Logged writes committed together, at most.
const MAX_GROUP: usize = 256;

/// The thread every write runs on; dropping the last handle checkpoints and joins it, so
/// the database file is released when the store is.
pub(super) struct WriterThread {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriterThread {
    /// Starts the writer thread on `db` and its log `wal` (already replayed and emptied).
    ///
    /// Errors: `Backend` if the thread cannot be spawned.
    pub(super) fn spawn(
        db: Arc<Database>,
        wal: Wal,
        snapshots: Arc<Snapshots>,
        checkpoint_interval: Duration,
        commit_linger: Duration,
    ) -> Result<Self, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-redb-writer".into())
            .spawn(move || writer_loop(db, wal, rx, &snapshots, checkpoint_interval, commit_linger))
            .map_err(be)?;
        Ok(Self { jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) })
    }

    pub(super) fn send(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref().ok_or_else(|| be("store closed"))?.send(job).map_err(|_| be("store writer thread stopped"))
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's loop: jobs in arrival order, consecutive logged writes committed as
/// one group (one log record, one fsync; the group waits up to `commit_linger` after its
/// first write for more); a checkpoint when the log is `checkpoint_interval` old, large, or
/// the store is closed.
fn writer_loop(db: Arc<Database>, mut wal: Wal, jobs: Receiver<Job>, snapshots: &Snapshots, checkpoint_interval: Duration, commit_linger: Duration) {
    // Once a group was logged but its transaction did not commit, the database and the
    // log disagree until a restart replays the log: refuse everything until then.
    let mut poisoned: Option<String> = None;
    let mut logged_since: Option<Instant> = None;
    let mut next: Option<Job> = None;
    loop {
        // Due even if jobs never stop coming (then `recv_timeout` below never times out).
        if poisoned.is_none()
            && let Some(t) = logged_since
            && t.elapsed() >= checkpoint_interval
        {
            checkpoint_logged(&db, &mut wal, &mut logged_since, &mut poisoned);
        }
        let job = match next.take() {
            Some(job) => Ok(job),
            None => match logged_since {
                Some(t) => jobs.recv_timeout(checkpoint_interval.saturating_sub(t.elapsed())),
                None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            },
        };
        match job {
            Ok(Job::Logged(first, reply)) => {
                // Whatever logged writes are queued right behind it join the group.
                let mut group = vec![(*first, reply)];
                let until = Instant::now() + commit_linger;
                while group.len() < MAX_GROUP {
                    let queued = match jobs.try_recv() {
                        Err(std::sync::mpsc::TryRecvError::Empty) if !commit_linger.is_zero() => match until.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => jobs.recv_timeout(left).ok(),
                            _ => None,
                        },
                        other => other.ok(),
                    };
                    match queued {
                        Some(Job::Logged(w, r)) => group.push((*w, r)),
                        Some(other) => {
                            next = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                let (writes, replies): (Vec<Logged>, Vec<Reply<LoggedOutcome>>) = group.into_iter().unzip();
                let result = match &poisoned {
                    Some(why) => Err(StoreError::Backend(format!("store needs a restart: {why}"))),
                    None => commit_logged(&db, &mut wal, snapshots, &writes).map_err(|(e, poison)| {
                        if poison {
                            tracing::error!(error = %e, "a logged group did not commit; refusing writes until a restart replays the log");
                            poisoned = Some(e.to_string());
                        }
                        e
                    }),
                };
                // (`commit_logged` closed the commit's window on the read snapshot before it
                // returned: a read that follows an answer sees this commit.)
                match result {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                        }
                    }
                }
                logged_since.get_or_insert_with(Instant::now);
                if wal.len() >= CHECKPOINT_BYTES && poisoned.is_none() {
                    checkpoint_logged(&db, &mut wal, &mut logged_since, &mut poisoned);
                }
            }
            // (These jobs' closures open and close their commit's window on the read
            // snapshot themselves, before their answer: `on_writer`.)
            Ok(Job::RunLight(f)) => f(&db),
            Ok(Job::Run(f)) => {
                // Such a write commits durably, which makes the database ahead of the log's
                // records: checkpoint first, so that a replay after a crash always starts
                // from the state the log was written against (a send refused as QUEUE_FULL
                // and logged must not find room when replayed after later writes).
                if poisoned.is_none() {
                    checkpoint_logged(&db, &mut wal, &mut logged_since, &mut poisoned);
                }
                f(&db)
            }
            Ok(Job::Checkpoint(reply)) => {
                let result = match &poisoned {
                    Some(why) => Err(StoreError::Backend(format!("store needs a restart: {why}"))),
                    None => checkpoint(&db, &mut wal).map_err(|(e, poison)| {
                        if poison {
                            tracing::error!(error = %e, "the write-ahead log could not be emptied; refusing writes until a restart");
                            poisoned = Some(e.to_string());
                        }
                        e
                    }),
                };
                if result.is_ok() {
                    logged_since = None;
                }
                let _ = reply.send(result);
            }
            Err(RecvTimeoutError::Timeout) => {
                if poisoned.is_none() {
                    checkpoint_logged(&db, &mut wal, &mut logged_since, &mut poisoned);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                if poisoned.is_none() {
                    checkpoint_logged(&db, &mut wal, &mut logged_since, &mut poisoned);
                }
                return;
            }
        }
    }
}

fn checkpoint_logged(db: &Database, wal: &mut Wal, logged_since: &mut Option<Instant>, poisoned: &mut Option<String>) {
    match checkpoint(db, wal) {
        Ok(()) => *logged_since = None,
        Err((e, true)) => {
            tracing::error!(error = %e, "the write-ahead log could not be emptied; refusing writes until a restart");
            *poisoned = Some(e.to_string());
        }
        // The log keeps everything; the next checkpoint tries again.
        Err((e, false)) => tracing::warn!(error = %e, "checkpoint failed"),
    }
}

/// A durable (fsynced) redb commit makes every earlier non-durable commit durable; then
/// the log is emptied. A crash between the two replays ops the database already holds,
/// which changes nothing. The error says whether the store must be poisoned: the log
/// could not be emptied after the commit, so its header on disk may already name a
/// generation the writer is not writing (a restart reads whichever it is: the old one
/// replays what the database holds, the new one nothing).
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<(), (StoreError, bool)> {
    if wal.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let txn = db.begin_write().map_err(|e| (be(e), false))?;
    txn.commit().map_err(|e| (be(e), false))?;
    let bytes = wal.len();
    wal.reset().map_err(|e| (be(e), true))?;
    metrics::histogram!("switchboard_store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    tracing::trace!(log_bytes = bytes, "checkpoint");
    Ok(())
}

/// Applies a group of logged writes in one transaction, logs them (one record, one
/// fsync), then commits. The error says whether the store must be poisoned (logged but
/// not committed).
fn commit_logged(db: &Database, wal: &mut Wal, snapshots: &Snapshots, writes: &[Logged]) -> Result<Vec<LoggedOutcome>, (StoreError, bool)> {
    let mut txn = db.begin_write().map_err(|e| (be(e), false))?;
    txn.set_durability(Durability::None).map_err(|e| (be(e), false))?;
    let outcomes = writes.iter().map(|w| apply_logged(&txn, w)).collect::<Result<Vec<_>, _>>().map_err(|e| (e, false))?;
    let payload = encode(&writes).map_err(|e| (e, false))?;
    // On a failed append the transaction is dropped (aborted): nothing happened.
    wal.append(&payload).map_err(|e| (be(e), false))?;
    // Closed when this returns, whatever the outcome, before the writer answers.
    let _window = CommitWindow::open(snapshots);
    txn.commit().map_err(|e| (be(e), true))?;
    Ok(outcomes)
}

/// A commit's window on the read snapshot (`Snapshots::begin_commit` … `invalidate`),
/// the one way every write of this thread opens and closes it: closed when dropped, so a
/// write that fails or panics does not leave reads uncached for good.
pub(super) struct CommitWindow<'a>(&'a Snapshots);

impl<'a> CommitWindow<'a> {
    pub(super) fn open(snapshots: &'a Snapshots) -> Self {
        snapshots.begin_commit();
        Self(snapshots)
    }
}

impl Drop for CommitWindow<'_> {
    fn drop(&mut self) {
        self.0.invalidate();
    }
}
