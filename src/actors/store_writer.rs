//! The store writer: the one actor that commits writes, in batches (group commit).
//!
//! Conversations, sessions and the node send it *units*: a few ops (a conversation's
//! whole wake-up of sends, a session's cursor moves) with one callback. While one batch is
//! being committed (an fsync on the embedded store), new units pile up; when the commit
//! returns, everything that piled up goes out as the next batch, units whole. Under load
//! one fsync carries hundreds of messages; when idle a lone write is committed at once,
//! unless nobody waits for it (cursor moves, last seen): such a write rides in the next
//! batch or goes alone after the writer's `defer`. The decisions are a pure core,
//! `cores::write_batch`. Every unit's callback runs only after its batch is durable (or
//! failed): nothing is acknowledged before then.
//!
//! A backend that answers a batch with a number of outcomes other than its number of ops
//! breaks the store contract: the outcomes cannot be matched to their units, so every
//! unit of the batch fails (`WriteError::OutcomeMismatch`), loudly, instead of leaving
//! some callers without an answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::cores::write_batch::{Action, Event, WriteBatcher};
use crate::store::{Store, StoreError, WriteOp, WriteOutcome};

/// Why a unit was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The backend failed the batch: its ops may or may not be stored.
    #[error("store: {0}")]
    Store(String),
    /// The backend answered a different number of outcomes than ops (a contract breach).
    #[error("store answered {got} outcomes for {expected} ops")]
    OutcomeMismatch {
        /// Ops in the batch.
        expected: usize,
        /// Outcomes answered.
        got: usize,
    },
    /// The writer stopped before the unit could be committed.
    #[error("store writer stopped")]
    Stopped,
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Called with the outcomes of one unit, in op order, after its batch committed or failed.
pub type UnitCallback = Box<dyn FnOnce(Result<Vec<WriteOutcome>, WriteError>) + Send>;

/// Messages of the store writer.
pub enum StoreWriterMsg {
    /// Commit these ops (one unit: never split across batches) and then call back.
    Write(Vec<WriteOp>, UnitCallback),
    /// Like `Write`, but nobody waits for it: it may wait (at most the writer's
    /// `defer`) to ride in a batch that starts anyway (`cores::write_batch`).
    WriteDeferred(Vec<WriteOp>, UnitCallback),
    /// Call back once every unit sent before this one is committed (a barrier).
    Barrier(Box<dyn FnOnce() + Send>),
    /// A batch finished (sent by the writer to itself).
    Committed(Box<CommittedBatch>),
    /// A deferred unit comes due (sent by the writer to itself).
    Tick,
}

/// The result of one batch, with the callbacks to run.
pub struct CommittedBatch {
    result: Result<Vec<WriteOutcome>, StoreError>,
    units: Vec<(usize, UnitCallback)>,
    barriers: Vec<Box<dyn FnOnce() + Send>>,
}

/// The group-commit actor.
pub struct StoreWriter;

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct StoreWriterConfig {
    /// Ops in one transaction, at most (a larger unit is committed alone).
    pub max_batch: usize,
    /// How long a write nobody waits for (cursor moves, last seen) may wait for a batch to
    /// ride in before it starts one of its own (zero: never waits).
    pub defer: Duration,
}

type Unit = (Vec<WriteOp>, UnitCallback);
type BarrierFn = Box<dyn FnOnce() + Send>;

/// State: the batching decisions (a pure core) and the store they commit to.
pub struct StoreWriterState {
    store: Arc<dyn Store>,
    batcher: WriteBatcher<Unit, BarrierFn>,
    actions: Vec<Action<Unit, BarrierFn>>,
}

impl Actor for StoreWriter {
    type Msg = StoreWriterMsg;
    type State = StoreWriterState;
    type Arguments = (Arc<dyn Store>, StoreWriterConfig);

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, (store, config): Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        Ok(StoreWriterState { store, batcher: WriteBatcher::new(config.max_batch, config.defer), actions: Vec::new() })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let event = match msg {
            StoreWriterMsg::Write(ops, callback) => Event::Write { ops: ops.len(), unit: (ops, callback), deferred: false },
            StoreWriterMsg::WriteDeferred(ops, callback) => Event::Write { ops: ops.len(), unit: (ops, callback), deferred: true },
            StoreWriterMsg::Barrier(callback) => Event::Barrier(callback),
            StoreWriterMsg::Committed(batch) => {
                finish_batch(*batch);
                Event::Committed
            }
            StoreWriterMsg::Tick => Event::Tick,
        };
        let mut actions = std::mem::take(&mut state.actions);
        let now = Instant::now();
        state.batcher.handle(event, now, &mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Start { units, barriers } => start_batch(&myself, state.store.clone(), units, barriers),
                Action::RunBarriers(barriers) => barriers.into_iter().for_each(|b| b()),
                Action::WakeAt(at) => {
                    myself.send_after(at.saturating_duration_since(now), || StoreWriterMsg::Tick);
                }
            }
        }
        state.actions = actions;
        Ok(())
    }
}

fn start_batch(myself: &ActorRef<StoreWriterMsg>, store: Arc<dyn Store>, batch: Vec<(usize, Unit)>, barriers: Vec<BarrierFn>) {
    let mut ops: Vec<WriteOp> = Vec::with_capacity(batch.iter().map(|(n, _)| n).sum());
    let mut units: Vec<(usize, UnitCallback)> = Vec::with_capacity(batch.len());
    for (n, (unit_ops, callback)) in batch {
        ops.extend(unit_ops);
        units.push((n, callback));
    }
    let me = myself.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let n = ops.len();
        let result = store.apply(ops).await;
        let backend = store.backend();
        metrics::histogram!("switchboard_store_batch_seconds", "backend" => backend).record(started.elapsed().as_secs_f64());
        metrics::histogram!("switchboard_store_batch_ops", "backend" => backend).record(n as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = n, "store batch failed");
            metrics::counter!("switchboard_store_errors_total", "backend" => backend).increment(1);
        }
        let batch = CommittedBatch { result, units, barriers };
        // The writer is stopping: still answer every caller, so none waits forever.
        if let Err(ractor::MessagingErr::SendErr(StoreWriterMsg::Committed(batch))) = me.cast(StoreWriterMsg::Committed(Box::new(batch))) {
            finish_batch(*batch);
        }
    });
}

/// Splits a batch's outcomes back into its units and answers each.
fn finish_batch(batch: CommittedBatch) {
    let CommittedBatch { result, units, barriers } = batch;
    let expected: usize = units.iter().map(|(n, _)| n).sum();
    match result {
        Ok(outcomes) if outcomes.len() == expected => {
            let mut outcomes = outcomes.into_iter();
            for (n, callback) in units {
                callback(Ok(outcomes.by_ref().take(n).collect()));
            }
        }
        Ok(outcomes) => {
            let error = WriteError::OutcomeMismatch { expected, got: outcomes.len() };
            tracing::error!(error = %error, "store broke its contract; failing every op of the batch");
            metrics::counter!("switchboard_store_errors_total", "backend" => "contract").increment(1);
            for (_, callback) in units {
                callback(Err(error.clone()));
            }
        }
        Err(e) => {
            let error = WriteError::Store(e.to_string());
            for (_, callback) in units {
                callback(Err(error.clone()));
            }
        }
    }
    for barrier in barriers {
        barrier();
    }
}

/// A cloneable handle to the writer.
#[derive(Clone)]
pub struct StoreWriterHandle {
    actor: ActorRef<StoreWriterMsg>,
}

impl StoreWriterHandle {
    /// Wraps the writer actor.
    pub fn new(actor: ActorRef<StoreWriterMsg>) -> Self {
        Self { actor }
    }

    /// Queues a unit of ops; `callback` runs once they are durable or failed, with one
    /// outcome per op in order.
    pub fn write(&self, ops: Vec<WriteOp>, callback: UnitCallback) {
        self.queue(StoreWriterMsg::Write(ops, callback));
    }

    /// Sends a `Write` or `WriteDeferred`; if the writer has stopped, answers it `Stopped`.
    fn queue(&self, unit: StoreWriterMsg) {
        if let Err(ractor::MessagingErr::SendErr(StoreWriterMsg::Write(_, callback) | StoreWriterMsg::WriteDeferred(_, callback))) =
            self.actor.cast(unit)
        {
            callback(Err(WriteError::Stopped));
        }
    }

    /// Queues ops whose outcome nobody waits for (cursor moves, last seen): they may wait
    /// up to the writer's `defer` to ride in another batch; a failure is logged. A
    /// [`barrier`](Self::barrier) covers them like any other write.
    pub fn write_detached(&self, ops: Vec<WriteOp>, what: &'static str) {
        let callback: UnitCallback = Box::new(move |r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, what, "detached write failed");
            }
        });
        self.queue(StoreWriterMsg::WriteDeferred(ops, callback));
    }

    /// Queues one op and waits for its outcome.
    pub async fn write_and_wait(&self, op: WriteOp) -> Result<WriteOutcome, WriteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(
            vec![op],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let mut outcomes = rx.await.map_err(|_| WriteError::Stopped)??;
        outcomes.pop().ok_or(WriteError::OutcomeMismatch { expected: 1, got: 0 })
    }

    /// Waits until everything queued before now is committed.
    pub async fn barrier(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.actor.cast(StoreWriterMsg::Barrier(Box::new(move || {
            let _ = tx.send(());
        })));
        if sent.is_ok() {
            let _ = rx.await;
        }
    }

    /// The actor, for supervision and the admin tree.
    pub fn actor(&self) -> &ActorRef<StoreWriterMsg> {
        &self.actor
    }
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for StoreWriterMsg {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Results = Arc<Mutex<Vec<Result<Vec<WriteOutcome>, WriteError>>>>;

    fn unit(results: Results) -> UnitCallback {
        Box::new(move |r| results.lock().expect("lock").push(r))
    }

    #[test]
    fn outcomes_go_back_to_their_units_in_order() {
        let results = Arc::new(Mutex::new(Vec::new()));
        let batch = CommittedBatch {
            result: Ok(vec![WriteOutcome::Appended, WriteOutcome::SeqConflict, WriteOutcome::Recorded]),
            units: vec![(2, unit(results.clone())), (1, unit(results.clone()))],
            barriers: Vec::new(),
        };
        finish_batch(batch);
        let got = results.lock().expect("lock").clone();
        assert_eq!(got, vec![Ok(vec![WriteOutcome::Appended, WriteOutcome::SeqConflict]), Ok(vec![WriteOutcome::Recorded])]);
    }

    #[test]
    fn a_batch_answered_with_too_few_outcomes_fails_every_unit() {
        let results = Arc::new(Mutex::new(Vec::new()));
        let batch = CommittedBatch {
            result: Ok(vec![WriteOutcome::Appended]),
            units: vec![(1, unit(results.clone())), (1, unit(results.clone()))],
            barriers: Vec::new(),
        };
        finish_batch(batch);
        let got = results.lock().expect("lock").clone();
        assert_eq!(got, vec![Err(WriteError::OutcomeMismatch { expected: 2, got: 1 }); 2]);
    }
}
