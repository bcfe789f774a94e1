// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! Switchboard patch: a small unbounded FIFO that allocates nothing until it is used, for an
//! actor's supervision port and its message port.
//!
//! tokio's unbounded channel allocates its shared state (two cache-padded halves, ~512
//! bytes) and a first block of 32 slots with the channel, so every actor paid about 800
//! bytes per port before it received anything: a million idle device sessions paid it
//! twice each. This queue is a mutex-guarded `VecDeque` (no allocation until the first
//! message) and a [`Notify`](crate::concurrency::Notify) for the one receiver: about 100
//! bytes per actor. A queue left empty after a burst gives its room back (see
//! [`SHRINK_ABOVE`]), so a session that once received many messages at once does not keep
//! that room while idle. Same semantics as the channel for its uses here: unbounded, FIFO,
//! many senders, one receiver; `recv` is cancel-safe (an item is only taken when it is
//! returned); after `close` (or the receiver's drop) sends fail and hand the message back;
//! once every sender is gone and the queue is empty, `recv` returns `None`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::concurrency::Notify;

/// A queue emptied with more room than this (slots) frees it; below it, the room is kept
/// for the next message (steady traffic allocates nothing per message).
pub(super) const SHRINK_ABOVE: usize = 32;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    closed: AtomicBool,
    senders: AtomicUsize,
    notify: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        // No critical section can leave the queue inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half (cheap to clone).
pub struct LazySender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub struct LazyReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for LazySender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for LazyReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyReceiver").finish_non_exhaustive()
    }
}

/// A send to a closed queue: the message is handed back.
#[derive(Debug)]
pub struct LazySendError<T>(pub T);

/// Nothing to take now.
#[derive(Debug, PartialEq, Eq)]
pub enum LazyTryRecvError {
    /// The queue is empty.
    Empty,
    /// The queue is empty and no sender is left.
    Disconnected,
}

/// A new queue.
pub fn lazy_unbounded<T>() -> (LazySender<T>, LazyReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        closed: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        notify: Notify::new(),
    });
    (
        LazySender {
            shared: shared.clone(),
        },
        LazyReceiver { shared },
    )
}

impl<T> LazySender<T> {
    /// Queues a message; fails (handing it back) once the receiver closed.
    pub fn send(&self, message: T) -> Result<(), LazySendError<T>> {
        let mut queue = self.shared.lock();
        // Checked under the lock: `close` then drains, so nothing is queued after it.
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LazySendError(message));
        }
        queue.push_back(message);
        drop(queue);
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl<T> Clone for LazySender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for LazySender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting receiver must see the end.
            self.shared.notify.notify_one();
        }
    }
}

impl<T> LazyReceiver<T> {
    /// The next message, waiting for one; `None` once every sender is gone (or the queue
    /// was closed) and nothing is left. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(message) => return Some(message),
                Err(LazyTryRecvError::Disconnected) => return None,
                Err(LazyTryRecvError::Empty) => {}
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            // A send between the check above and this wait leaves a permit: no wake-up
            // is lost.
            self.shared.notify.notified().await;
        }
    }

    /// Takes a message if one is queued.
    pub fn try_recv(&mut self) -> Result<T, LazyTryRecvError> {
        let mut queue = self.shared.lock();
        if let Some(message) = queue.pop_front() {
            if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
                // A burst is over: an idle actor should not keep its room.
                *queue = VecDeque::new();
            }
            return Ok(message);
        }
        drop(queue);
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            Err(LazyTryRecvError::Disconnected)
        } else {
            Err(LazyTryRecvError::Empty)
        }
    }

    /// Refuses further sends; what is queued can still be taken.
    pub fn close(&mut self) {
        let _queue = self.shared.lock();
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl<T> Drop for LazyReceiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[crate::concurrency::test]
    async fn fifo_wakes_the_receiver_and_ends_with_the_senders() {
        let (tx, mut rx) = lazy_unbounded::<u32>();
        let tx2 = tx.clone();
        let waiter = crate::concurrency::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        tx2.send(100).unwrap();
        drop(tx);
        drop(tx2);
        let got = waiter.await.unwrap();
        assert_eq!(got, (0..=100).collect::<Vec<_>>());
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_of_a_burst_only() {
        let (tx, mut rx) = lazy_unbounded::<u64>();
        tx.send(1).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        let small = rx.shared.lock().capacity();
        assert!(small > 0 && small <= SHRINK_ABOVE, "steady traffic keeps its room");
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        for i in 0..1000 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.shared.lock().capacity(), 0, "the burst's room is freed");
    }

    #[test]
    fn a_closed_queue_hands_messages_back_and_keeps_what_was_queued() {
        let (tx, mut rx) = lazy_unbounded::<&str>();
        tx.send("kept").unwrap();
        rx.close();
        assert_eq!(tx.send("refused").unwrap_err().0, "refused");
        assert_eq!(rx.try_recv(), Ok("kept"));
        assert_eq!(rx.try_recv(), Err(LazyTryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(LazyTryRecvError::Disconnected));
    }
}
