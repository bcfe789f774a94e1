//! The outbox of one connection: the bounded queue of encoded frames from the session to
//! the socket, and the connection's close signal with its final frame.
//!
//! It allocates nothing until a frame is queued (an idle device holds a few words), the
//! writer takes everything queued in one go (one socket write per batch), and a close
//! takes effect at once, whatever the session is busy with: the router holds the outbox
//! too, so a revocation, a replacement, a drain or the shutdown closes the connection
//! without waiting behind the session's queued work, nor behind the frames already queued
//! for the device ([`Outbox::preempt`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is full: the device is not reading fast enough.
    Full,
    /// The connection is closing or gone.
    Closed,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The frame that ends the connection (Closing), sent after what was queued.
    last: Option<Bytes>,
}

struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    /// No more frames are taken (closing, or the socket is gone).
    closed: AtomicBool,
    /// The socket failed: nothing more can be written.
    gone: AtomicBool,
    /// A server-decided close: queued frames were dropped, and the writer stops writing
    /// the batch it holds.
    preempted: AtomicBool,
    /// Wakes the writer (frames queued, or closing).
    readable: Notify,
    /// Wakes a session waiting for room.
    writable: Notify,
}

/// Both ends of a connection's outbox (the session pushes, the connection's writer
/// takes); cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// What the writer gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames to write (the queue is empty again).
    Frames,
    /// The connection is closing: write these frames, then the final one, then close.
    Closing(Option<Bytes>),
}

impl Outbox {
    /// An outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                capacity: capacity.max(1),
                closed: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                preempted: AtomicBool::new(false),
                readable: Notify::new(),
                writable: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent.
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        self.offer(frame).map_err(|(why, _)| why)
    }

    /// Queues a frame without waiting; a refused frame comes back, for the caller to offer
    /// again once there is room. Why not `try_push(frame.clone())` in a loop: cloning a
    /// frame that is not shared yet (a catch-up's, encoded for this device alone)
    /// allocates its shared header, once per frame.
    pub fn offer(&self, frame: Bytes) -> Result<(), (PushError, Bytes)> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err((PushError::Closed, frame));
        }
        let mut q = self.lock();
        if q.frames.len() >= self.shared.capacity {
            return Err((PushError::Full, frame));
        }
        let was_empty = q.frames.is_empty();
        q.frames.push_back(frame);
        drop(q);
        if was_empty {
            self.shared.readable.notify_one();
        }
        Ok(())
    }

    /// Waits up to `timeout` for room in the queue. False if the time passed or the
    /// connection closed.
    pub async fn wait_room(&self, timeout: Duration) -> bool {
        let ready = async {
            loop {
                let notified = self.shared.writable.notified();
                if self.shared.closed.load(Ordering::Acquire) {
                    return false;
                }
                if self.lock().frames.len() < self.shared.capacity {
                    return true;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or(false)
    }

    /// Queues a frame for the device now, if there is room (the connection uses it
    /// before and beside the session: Welcome, Pong, errors).
    pub fn push_now(&self, frame: Bytes) -> bool {
        self.try_push(frame).is_ok()
    }

    /// Closes the connection with a final frame (the first close wins): frames queued
    /// before are still written, within the writer's grace period. For the device's own
    /// goodbye (Bye) and the server's failures; a server-decided close uses [`Self::preempt`].
    pub fn close(&self, last: Bytes) {
        let mut q = self.lock();
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            q.last = Some(last);
        }
        drop(q);
        self.shared.readable.notify_one();
        self.shared.writable.notify_waiters();
    }

    /// Closes the connection at once with a final frame (the first close's frame wins),
    /// dropping what is queued, and tells the writer to stop the batch it is writing: a
    /// revocation, a replacement or a slow consumer (`messages::close_preempts`) never
    /// waits behind the frames of the session's work. Nothing is lost by it: what
    /// the device did not acknowledge comes again at its next catch-up, and a send whose
    /// ack was dropped is answered again (as a duplicate) when the client retries it.
    pub fn preempt(&self, last: Bytes) {
        let mut q = self.lock();
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            q.last = Some(last);
        }
        q.frames = VecDeque::new();
        self.shared.preempted.store(true, Ordering::Release);
        drop(q);
        self.shared.readable.notify_one();
        self.shared.writable.notify_waiters();
    }

    /// True once a server-decided close dropped the queue: the writer writes no more of
    /// what it took.
    pub fn is_preempted(&self) -> bool {
        self.shared.preempted.load(Ordering::Acquire)
    }

    /// True once closing (or gone).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writer's side: waits for frames or the close, and moves every queued frame
    /// into `into`.
    pub async fn take(&self, into: &mut Vec<Bytes>) -> Taken {
        loop {
            let notified = self.shared.readable.notified();
            {
                let mut q = self.lock();
                if !q.frames.is_empty() {
                    into.extend(q.frames.drain(..));
                    if q.frames.capacity() > 64 {
                        // Give back what a burst grew.
                        q.frames = VecDeque::new();
                    }
                    drop(q);
                    self.shared.writable.notify_waiters();
                    return Taken::Frames;
                }
                if self.shared.closed.load(Ordering::Acquire) {
                    return Taken::Closing(q.last.take());
                }
            }
            notified.await;
        }
    }

    /// The writer's side: the socket failed; nothing more is taken.
    pub fn writer_gone(&self) {
        self.shared.gone.store(true, Ordering::Release);
        self.close(Bytes::new());
    }

    /// Resolves once the connection must close.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.writable.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_queue_up_to_capacity_and_the_writer_takes_them_all_at_once() {
        let outbox = Outbox::new(2);
        outbox.try_push(Bytes::from_static(b"a")).expect("room");
        outbox.try_push(Bytes::from_static(b"b")).expect("room");
        assert_eq!(outbox.try_push(Bytes::from_static(b"c")), Err(PushError::Full));
        let mut got = Vec::new();
        assert_eq!(outbox.take(&mut got).await, Taken::Frames);
        assert_eq!(got, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(outbox.wait_room(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_close_takes_effect_at_once_and_keeps_its_final_frame() {
        let outbox = Outbox::new(4);
        outbox.try_push(Bytes::from_static(b"queued")).expect("room");
        outbox.close(Bytes::from_static(b"bye"));
        outbox.close(Bytes::from_static(b"second close loses"));
        assert_eq!(outbox.try_push(Bytes::from_static(b"late")), Err(PushError::Closed));
        let mut got = Vec::new();
        assert_eq!(outbox.take(&mut got).await, Taken::Frames);
        assert_eq!(outbox.take(&mut got).await, Taken::Closing(Some(Bytes::from_static(b"bye"))));
        assert_eq!(got, vec![Bytes::from_static(b"queued")]);
        assert!(!outbox.wait_room(Duration::from_millis(10)).await, "no waiting on a closed connection");
    }

    #[tokio::test]
    async fn a_preempting_close_drops_the_queue_and_keeps_its_final_frame() {
        let outbox = Outbox::new(4);
        outbox.try_push(Bytes::from_static(b"queued")).expect("room");
        assert!(!outbox.is_preempted());
        outbox.preempt(Bytes::from_static(b"revoked"));
        outbox.close(Bytes::from_static(b"a later close loses"));
        assert!(outbox.is_preempted());
        assert_eq!(outbox.try_push(Bytes::from_static(b"late")), Err(PushError::Closed));
        let mut got = Vec::new();
        assert_eq!(outbox.take(&mut got).await, Taken::Closing(Some(Bytes::from_static(b"revoked"))));
        assert!(got.is_empty(), "the queued frame was dropped");
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_writer() {
        let outbox = Outbox::new(1);
        outbox.try_push(Bytes::from_static(b"a")).expect("room");
        let reader = outbox.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut got = Vec::new();
            reader.take(&mut got).await
        });
        assert!(outbox.wait_room(Duration::from_secs(5)).await);
        assert_eq!(writer.await.expect("join"), Taken::Frames);
    }
}
