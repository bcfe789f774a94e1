//! The store writer: the one actor that commits writes, in batches (group commit).
//!
//! Writers from every conversation and session send their ops here. While one batch is
//! being committed (an fsync on the embedded store), new ops pile up; when the commit
//! returns, everything that piled up goes out as the next batch. Under load one fsync
//! carries hundreds of messages; when idle a lone write is committed at once. Every op's
//! callback runs only after its batch is durable (or failed): nothing is acknowledged
//! before then.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::store::{Store, StoreError, WriteOp, WriteOutcome};

/// Called with the outcome of one op, after its batch committed or failed.
pub type WriteCallback = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;

/// Messages of the store writer.
pub enum StoreWriterMsg {
    /// Commit this op in the next batch and then call back. Boxed: an op is far larger
    /// than the other variants, and every slot of the actor's channel is sized by the
    /// largest one.
    Write(Box<WriteOp>, WriteCallback),
    /// Call back once every op sent before this one is committed (a barrier).
    Barrier(Box<dyn FnOnce() + Send>),
    /// A batch finished (sent by the writer to itself).
    Committed(Box<CommittedBatch>),
}

/// The result of one batch, with the callbacks to run.
pub struct CommittedBatch {
    result: Result<Vec<WriteOutcome>, StoreError>,
    callbacks: Vec<WriteCallback>,
    barriers: Vec<Box<dyn FnOnce() + Send>>,
}

/// The group-commit actor.
pub struct StoreWriter;

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct StoreWriterConfig {
    /// Largest number of ops in one transaction.
    pub max_batch: usize,
}

/// State: ops waiting for the next batch, and whether a batch is in flight.
pub struct StoreWriterState {
    store: Arc<dyn Store>,
    config: StoreWriterConfig,
    pending_ops: Vec<WriteOp>,
    pending_callbacks: Vec<WriteCallback>,
    pending_barriers: Vec<Box<dyn FnOnce() + Send>>,
    in_flight: bool,
}

impl Actor for StoreWriter {
    type Msg = StoreWriterMsg;
    type State = StoreWriterState;
    type Arguments = (Arc<dyn Store>, StoreWriterConfig);

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, (store, config): Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        Ok(StoreWriterState { store, config, pending_ops: Vec::new(), pending_callbacks: Vec::new(), pending_barriers: Vec::new(), in_flight: false })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreWriterMsg::Write(op, callback) => {
                state.pending_ops.push(*op);
                state.pending_callbacks.push(callback);
            }
            StoreWriterMsg::Barrier(callback) => {
                if state.in_flight || !state.pending_ops.is_empty() {
                    state.pending_barriers.push(callback);
                } else {
                    callback();
                }
            }
            StoreWriterMsg::Committed(batch) => {
                state.in_flight = false;
                finish_batch(*batch);
            }
        }
        if !state.in_flight && !state.pending_ops.is_empty() {
            start_batch(&myself, state);
        } else if !state.in_flight {
            for barrier in state.pending_barriers.drain(..) {
                barrier();
            }
        }
        Ok(())
    }
}

fn start_batch(myself: &ActorRef<StoreWriterMsg>, state: &mut StoreWriterState) {
    let take = state.pending_ops.len().min(state.config.max_batch);
    let ops: Vec<WriteOp> = state.pending_ops.drain(..take).collect();
    let callbacks: Vec<WriteCallback> = state.pending_callbacks.drain(..take).collect();
    // Barriers wait for everything sent before them; if the batch is cut by max_batch they
    // ride on a later batch, which is conservative and still correct.
    let barriers = if state.pending_ops.is_empty() { std::mem::take(&mut state.pending_barriers) } else { Vec::new() };
    state.in_flight = true;
    let store = state.store.clone();
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
        let batch = CommittedBatch { result, callbacks, barriers };
        // The writer is stopping: still answer every caller, so none waits forever.
        if let Err(ractor::MessagingErr::SendErr(StoreWriterMsg::Committed(batch))) = me.cast(StoreWriterMsg::Committed(Box::new(batch))) {
            finish_batch(*batch);
        }
    });
}

fn finish_batch(batch: CommittedBatch) {
    match batch.result {
        Ok(outcomes) => {
            for (callback, outcome) in batch.callbacks.into_iter().zip(outcomes) {
                callback(Ok(outcome));
            }
        }
        Err(e) => {
            for callback in batch.callbacks {
                callback(Err(StoreError::Backend(e.to_string())));
            }
        }
    }
    for barrier in batch.barriers {
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

    /// Queues an op; `callback` runs once it is durable or failed.
    pub fn write(&self, op: WriteOp, callback: WriteCallback) {
        if let Err(ractor::MessagingErr::SendErr(StoreWriterMsg::Write(_, callback))) = self.actor.cast(StoreWriterMsg::Write(Box::new(op), callback))
        {
            callback(Err(StoreError::Backend("store writer stopped".into())));
        }
    }

    /// Queues an op and waits for its outcome.
    pub async fn write_and_wait(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| StoreError::Backend("store writer dropped the write".into()))?
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
