//! The store writer's group commit: which queued units go into the next batch, and when.
//!
//! A *unit* is a few ops that commit together (a conversation's wake-up of sends, a
//! session's cursor moves) with one answer. One batch is in flight at a time; while it
//! commits, units pile up and go out together as the next one (whole units, up to
//! `max_batch` ops unless one unit alone is larger).
//!
//! Some units nobody waits for: a device's cursor moves and a user's last-seen time.
//! Committed alone, each costs a commit of its own (on the embedded store a log append, an
//! `fdatasync` and a redb commit), and at low rates nearly every write was its own
//! commit: at 1,000 msg/s, ~1,770 commits per second for ~1,000 messages and ~1,000
//! cursor moves (BENCHMARKS.md, "The store writer's fixed cost per group commit"). Such a
//! unit is *deferred*: it rides in the next batch that starts for another reason (an
//! urgent unit, a barrier) and starts one itself only once it has waited `defer`. A
//! barrier still covers every unit queued before it, deferred or not, so a reader that
//! needs its own cursor moves (a reconnecting device's catch-up, "message info") asks for
//! one and sees them.
//!
//! Pure: no store, no runtime, no clock (times are passed in). The actor
//! (`actors::store_writer`) feeds it events and carries out its actions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What happened.
#[derive(Debug)]
pub enum Event<U, B> {
    /// A unit of `ops` ops was queued; `deferred` if nobody waits for it.
    Write {
        /// Ops in the unit (never split across batches).
        ops: usize,
        /// The unit, handed back in [`Action::Start`].
        unit: U,
        /// Whether it may wait (at most `defer`) for a batch to ride in.
        deferred: bool,
    },
    /// Someone waits until every unit queued before now is committed.
    Barrier(B),
    /// The batch in flight finished (committed or failed).
    Committed,
    /// A wake-up asked for by [`Action::WakeAt`] (or any other; a stale one does nothing).
    Tick,
}

/// What to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<U, B> {
    /// Commit these units as one batch (in queue order); once it is done, report
    /// [`Event::Committed`] and then run `barriers` (they wait for exactly this batch).
    Start {
        /// `(ops, unit)` in queue order.
        units: Vec<(usize, U)>,
        /// Barriers that this batch completes.
        barriers: Vec<B>,
    },
    /// These barriers wait for nothing: run them now.
    RunBarriers(Vec<B>),
    /// Send an [`Event::Tick`] at this time (a deferred unit comes due then).
    WakeAt(Instant),
}

struct Queued<U> {
    ops: usize,
    unit: U,
    deferred: bool,
    at: Instant,
}

/// The batcher's state. `U` is a unit (ops and their answer), `B` a barrier's callback.
pub struct WriteBatcher<U, B> {
    max_batch: usize,
    defer: Duration,
    queue: VecDeque<Queued<U>>,
    /// Urgent (not deferred) units in `queue`.
    urgent: usize,
    barriers: Vec<B>,
    in_flight: bool,
    /// The wake-up asked for and not yet past, if any.
    wake: Option<Instant>,
}

impl<U, B> WriteBatcher<U, B> {
    /// A batcher committing at most `max_batch` ops at once (a larger unit goes alone);
    /// a deferred unit waits at most `defer` (zero: never, every unit is urgent).
    pub fn new(max_batch: usize, defer: Duration) -> Self {
        Self { max_batch: max_batch.max(1), defer, queue: VecDeque::new(), urgent: 0, barriers: Vec::new(), in_flight: false, wake: None }
    }

    /// Whether a batch is being committed.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Units queued and not yet in a batch.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Feeds one event at `now`; the actions are pushed to `out`.
    pub fn handle(&mut self, event: Event<U, B>, now: Instant, out: &mut Vec<Action<U, B>>) {
        match event {
            Event::Write { ops, unit, deferred } => {
                let deferred = deferred && !self.defer.is_zero();
                if !deferred {
                    self.urgent += 1;
                }
                self.queue.push_back(Queued { ops, unit, deferred, at: now });
            }
            Event::Barrier(b) => self.barriers.push(b),
            Event::Committed => self.in_flight = false,
            Event::Tick => {
                if self.wake.is_some_and(|w| w <= now) {
                    self.wake = None;
                }
            }
        }
        if self.in_flight {
            return;
        }
        if self.queue.is_empty() {
            if !self.barriers.is_empty() {
                out.push(Action::RunBarriers(std::mem::take(&mut self.barriers)));
            }
            return;
        }
        let due = self.urgent > 0 || !self.barriers.is_empty() || self.oldest_deferred().is_some_and(|at| at + self.defer <= now);
        if due {
            out.push(self.start());
        } else if let Some(at) = self.oldest_deferred() {
            // Only deferred units, none due yet: be woken when the oldest is.
            let deadline = at + self.defer;
            if self.wake.is_none_or(|w| w > deadline) {
                self.wake = Some(deadline);
                out.push(Action::WakeAt(deadline));
            }
        }
    }

    /// The arrival of the oldest deferred unit still queued.
    fn oldest_deferred(&self) -> Option<Instant> {
        // Units leave by the front, so the first deferred one is the oldest (asked only
        // when nothing is urgent, when it is the front).
        self.queue.iter().find(|q| q.deferred).map(|q| q.at)
    }

    /// Takes whole units from the front, up to `max_batch` ops (at least one unit).
    fn start(&mut self) -> Action<U, B> {
        let mut take = 0;
        let mut ops = 0;
        for q in &self.queue {
            if take > 0 && ops + q.ops > self.max_batch {
                break;
            }
            take += 1;
            ops += q.ops;
        }
        let units: Vec<(usize, U)> = self
            .queue
            .drain(..take)
            .map(|q| {
                if !q.deferred {
                    self.urgent -= 1;
                }
                (q.ops, q.unit)
            })
            .collect();
        // Barriers wait for everything queued before them; if the batch is cut by
        // max_batch they ride on a later batch, which is conservative and still correct.
        let barriers = if self.queue.is_empty() { std::mem::take(&mut self.barriers) } else { Vec::new() };
        self.in_flight = true;
        Action::Start { units, barriers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Batcher = WriteBatcher<u32, u32>;
    type Out = Vec<Action<u32, u32>>;

    const DEFER: Duration = Duration::from_millis(10);

    fn write(b: &mut Batcher, unit: u32, deferred: bool, now: Instant) -> Out {
        let mut out = Vec::new();
        b.handle(Event::Write { ops: 1, unit, deferred }, now, &mut out);
        out
    }

    fn event(b: &mut Batcher, e: Event<u32, u32>, now: Instant) -> Out {
        let mut out = Vec::new();
        b.handle(e, now, &mut out);
        out
    }

    #[test]
    fn an_urgent_unit_starts_a_batch_when_the_writer_is_idle() {
        let t = Instant::now();
        let mut b = Batcher::new(16, DEFER);
        assert_eq!(write(&mut b, 1, false, t), vec![Action::Start { units: vec![(1, 1)], barriers: vec![] }]);
        // While it commits, units queue (urgent or not) and go out together after it.
        assert!(write(&mut b, 2, true, t).is_empty());
        assert!(write(&mut b, 3, false, t).is_empty());
        assert_eq!(event(&mut b, Event::Committed, t), vec![Action::Start { units: vec![(1, 2), (1, 3)], barriers: vec![] }]);
    }

    #[test]
    fn a_deferred_unit_rides_with_the_next_urgent_one() {
        let t = Instant::now();
        let mut b = Batcher::new(16, DEFER);
        assert_eq!(write(&mut b, 1, true, t), vec![Action::WakeAt(t + DEFER)]);
        assert!(write(&mut b, 2, true, t + Duration::from_millis(1)).is_empty(), "a wake-up is already due earlier");
        assert_eq!(
            write(&mut b, 3, false, t + Duration::from_millis(2)),
            vec![Action::Start { units: vec![(1, 1), (1, 2), (1, 3)], barriers: vec![] }]
        );
    }

    #[test]
    fn a_deferred_unit_goes_alone_once_it_has_waited_long_enough() {
        let t = Instant::now();
        let mut b = Batcher::new(16, DEFER);
        assert_eq!(write(&mut b, 1, true, t), vec![Action::WakeAt(t + DEFER)]);
        assert!(event(&mut b, Event::Tick, t + Duration::from_millis(9)).is_empty(), "an early tick changes nothing");
        assert_eq!(event(&mut b, Event::Tick, t + DEFER), vec![Action::Start { units: vec![(1, 1)], barriers: vec![] }]);
    }

    #[test]
    fn a_barrier_commits_the_deferred_units_before_it() {
        let t = Instant::now();
        let mut b = Batcher::new(16, DEFER);
        write(&mut b, 1, true, t);
        assert_eq!(event(&mut b, Event::Barrier(7), t), vec![Action::Start { units: vec![(1, 1)], barriers: vec![7] }]);
        // With nothing queued or in flight, a barrier runs at once.
        event(&mut b, Event::Committed, t);
        assert_eq!(event(&mut b, Event::Barrier(8), t), vec![Action::RunBarriers(vec![8])]);
    }

    #[test]
    fn with_no_defer_every_unit_is_urgent() {
        let t = Instant::now();
        let mut b = Batcher::new(16, Duration::ZERO);
        assert_eq!(write(&mut b, 1, true, t), vec![Action::Start { units: vec![(1, 1)], barriers: vec![] }]);
    }

    #[test]
    fn a_batch_takes_whole_units_up_to_the_limit() {
        let t = Instant::now();
        let mut b = Batcher::new(4, DEFER);
        let mut out = Vec::new();
        b.handle(Event::Write { ops: 10, unit: 1, deferred: false }, t, &mut out);
        assert_eq!(out, vec![Action::Start { units: vec![(10, 1)], barriers: vec![] }], "a unit larger than the limit goes alone");
        for (unit, ops) in [(2, 3), (3, 1), (4, 1)] {
            b.handle(Event::Write { ops, unit, deferred: false }, t, &mut Vec::new());
        }
        b.handle(Event::Barrier(9), t, &mut Vec::new());
        assert_eq!(event(&mut b, Event::Committed, t), vec![Action::Start { units: vec![(3, 2), (1, 3)], barriers: vec![] }]);
        assert_eq!(event(&mut b, Event::Committed, t), vec![Action::Start { units: vec![(1, 4)], barriers: vec![9] }]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write { ops: usize, deferred: bool },
        Barrier,
        Commit,
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1usize..6, any::<bool>()).prop_map(|(ops, deferred)| Step::Write { ops, deferred }),
            1 => Just(Step::Barrier),
            3 => Just(Step::Commit),
            2 => (0u64..15).prop_map(Step::Advance),
        ]
    }

    /// What the shell would do, checked at every step.
    struct Model {
        b: Batcher,
        now: Instant,
        next_unit: u32,
        next_barrier: u32,
        /// Units in the batch in flight, and the barriers to run after it.
        flight: Option<(Vec<u32>, Vec<u32>)>,
        committed: Vec<u32>,
        /// Per barrier: units queued before it.
        barrier_needs: Vec<u32>,
        ran_barriers: Vec<u32>,
        /// Queued units: (id, deferred, arrived).
        waiting: Vec<(u32, bool, Instant)>,
        wake: Option<Instant>,
    }

    impl Model {
        fn apply(&mut self, e: Event<u32, u32>) {
            let mut out = Vec::new();
            self.b.handle(e, self.now, &mut out);
            for action in out {
                match action {
                    Action::Start { units, barriers } => {
                        assert!(self.flight.is_none(), "a batch started while one was in flight");
                        let total: usize = units.iter().map(|(n, _)| n).sum();
                        assert!(units.len() == 1 || total <= 8, "batch over the limit: {units:?}");
                        let ids: Vec<u32> = units.iter().map(|(_, u)| *u).collect();
                        let expected: Vec<u32> = self.waiting.iter().take(ids.len()).map(|w| w.0).collect();
                        assert_eq!(ids, expected, "units leave in queue order");
                        self.waiting.drain(..ids.len());
                        if !barriers.is_empty() {
                            assert!(self.waiting.is_empty(), "a barrier rides only on the batch that empties the queue");
                        }
                        self.flight = Some((ids, barriers));
                    }
                    Action::RunBarriers(bs) => {
                        assert!(self.flight.is_none() && self.waiting.is_empty());
                        self.run_barriers(bs);
                    }
                    Action::WakeAt(at) => self.wake = Some(at),
                }
            }
            // Nothing idles while something is due.
            if self.flight.is_none() {
                for (id, deferred, at) in &self.waiting {
                    assert!(*deferred, "urgent unit {id} waits while the writer is idle");
                    assert!(*at + DEFER > self.now, "deferred unit {id} is overdue");
                    assert!(self.wake.is_some_and(|w| w <= *at + DEFER), "no wake-up for unit {id}");
                }
                assert!(self.waiting.is_empty() || self.b.barriers.is_empty(), "a barrier waits while the writer is idle");
            }
        }

        fn run_barriers(&mut self, bs: Vec<u32>) {
            for b in bs {
                let needs = self.barrier_needs[b as usize];
                assert!(self.committed.len() as u32 >= needs, "barrier {b} ran before the units queued before it");
                self.ran_barriers.push(b);
            }
        }

        fn step(&mut self, s: Step) {
            match s {
                Step::Write { ops, deferred } => {
                    let id = self.next_unit;
                    self.next_unit += 1;
                    self.waiting.push((id, deferred, self.now));
                    self.apply(Event::Write { ops, unit: id, deferred });
                }
                Step::Barrier => {
                    let id = self.next_barrier;
                    self.next_barrier += 1;
                    self.barrier_needs.push(self.next_unit);
                    self.apply(Event::Barrier(id));
                }
                Step::Commit => {
                    if let Some((ids, barriers)) = self.flight.take() {
                        self.committed.extend(ids);
                        self.apply(Event::Committed);
                        self.run_barriers(barriers);
                    }
                }
                Step::Advance(ms) => {
                    self.now += Duration::from_millis(ms);
                    if self.wake.is_some_and(|w| w <= self.now) {
                        self.wake = None;
                        self.apply(Event::Tick);
                    }
                }
            }
        }
    }

    proptest! {
        /// Any interleaving of writes, barriers, commits and time: one batch at a time,
        /// units in order and each exactly once, nothing urgent or overdue left idle,
        /// barriers after what came before them, and everything drains in the end.
        #[test]
        fn every_unit_is_committed_once_in_order_and_never_idles_overdue(steps in proptest::collection::vec(step(), 0..200)) {
            let mut m = Model {
                b: Batcher::new(8, DEFER),
                now: Instant::now(),
                next_unit: 0,
                next_barrier: 0,
                flight: None,
                committed: Vec::new(),
                barrier_needs: Vec::new(),
                ran_barriers: Vec::new(),
                waiting: Vec::new(),
                wake: None,
            };
            for s in steps {
                m.step(s);
            }
            // Drain: commit and let time pass until nothing is left.
            for _ in 0..1000 {
                if m.flight.is_none() && m.waiting.is_empty() {
                    break;
                }
                m.step(Step::Commit);
                m.step(Step::Advance(10));
            }
            prop_assert_eq!(m.committed.clone(), (0..m.next_unit).collect::<Vec<_>>());
            let mut ran = m.ran_barriers.clone();
            ran.sort_unstable();
            prop_assert_eq!(ran, (0..m.next_barrier).collect::<Vec<_>>());
        }
    }
}
