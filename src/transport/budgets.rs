//! Frame budgets that outlive a connection. Inbound frames are paid from token buckets
//! kept per device and per user, not per connection: every connection of a device takes
//! from the device's bucket (an old connection not yet noticed as gone included) and from
//! its user's, and a new connection finds the buckets as the last ones left them,
//! refilled for the time in between, so reconnecting buys no new budget, and neither do
//! more devices (the user's bucket is shared by all of them). A connection closed for its
//! rate (`RATE_LIMITED`, with `reconnect_after_ms`) leaves its device a penalty: a Hello
//! before the advised delay is refused with the time left, so the advice is enforced,
//! not a suggestion.
//!
//! Per node (a device that reconnects to another node of a cluster starts full there);
//! decided from given instants, so it is tested without sleeping. A key is remembered
//! while a connection holds its budget, its bucket is not full, or it has a penalty; the
//! others are forgotten when a connection ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ids::{DeviceId, UserId};

/// Keys remembered before the idle ones among them (no connection, a full bucket, no
/// penalty) are forgotten, at the end of a connection.
pub const PRUNE_ABOVE: usize = 100_000;

/// A token bucket: `rate` frames per second, bursts up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { tokens: burst, at: now, rate: f64::from(rate_per_sec.max(1)), burst }
    }

    /// The tokens at `now` (refilled since the last look, never above the burst).
    fn refilled(&self, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst)
    }

    fn allow(&mut self, now: Instant) -> bool {
        self.tokens = self.refilled(now);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One key's budget (a device's, a user's), shared by its connections.
#[derive(Debug)]
pub struct Budget {
    bucket: Mutex<Bucket>,
    /// No Hello of this device is served before this instant.
    penalty_until: Mutex<Option<Instant>>,
}

impl Budget {
    /// Takes one frame's token at `now`; false if none is left.
    pub fn allow(&self, now: Instant) -> bool {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).allow(now)
    }

    /// The device must not be served again before `now + delay`.
    pub fn penalize(&self, delay: Duration, now: Instant) {
        *self.penalty_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + delay);
    }

    fn penalty_left(&self, now: Instant) -> Option<Duration> {
        let until = (*self.penalty_until.lock().unwrap_or_else(|p| p.into_inner()))?;
        (until > now).then(|| until.saturating_duration_since(now))
    }

    /// Nothing to remember at `now`: a full bucket and no penalty.
    fn is_spent_nothing(&self, now: Instant) -> bool {
        let bucket = *self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.penalty_left(now).is_none() && bucket.refilled(now) >= bucket.burst
    }
}

/// The node's budgets, by key.
#[derive(Debug)]
pub struct Budgets<K> {
    rate_per_sec: u32,
    burst: u32,
    keys: Mutex<HashMap<K, Arc<Budget>>>,
}

/// Budgets by device.
pub type DeviceBudgets = Budgets<DeviceId>;
/// Budgets by user (every device of the user takes from it).
pub type UserBudgets = Budgets<UserId>;

impl<K: Hash + Eq + Copy> Budgets<K> {
    /// Budgets of `rate_per_sec` frames a second with bursts of `burst`.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self { rate_per_sec, burst, keys: Mutex::new(HashMap::new()) }
    }

    /// The budget a new connection of `device` takes from at `now`: the device's, as its
    /// other connections left it, or a full one. `Err(wait)` while the device is in a
    /// penalty: its Hello must be refused, with `wait` as the delay to advise again.
    pub fn resume(&self, key: K, now: Instant) -> Result<Arc<Budget>, Duration> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let budget = keys
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Budget { bucket: Mutex::new(Bucket::full(self.rate_per_sec, self.burst, now)), penalty_until: Mutex::new(None) })
            })
            .clone();
        match budget.penalty_left(now) {
            Some(wait) => Err(wait),
            None => Ok(budget),
        }
    }

    /// A connection of `device` ended at `now` (its handle to the budget dropped by the
    /// caller first): the device is forgotten if no connection holds its budget and there
    /// is nothing to remember.
    pub fn release(&self, key: K, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(budget) = keys.get(&key)
            && Arc::strong_count(budget) == 1
            && budget.is_spent_nothing(now)
        {
            keys.remove(&key);
        }
        // Most connections end within a few seconds of their last frame, before their
        // bucket is full again: those are forgotten here, once there are many.
        if keys.len() > PRUNE_ABOVE {
            keys.retain(|_, b| Arc::strong_count(b) > 1 || !b.is_spent_nothing(now));
        }
    }

    /// Devices remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True if no device is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_device_takes_from_the_same_budget() {
        let budgets = DeviceBudgets::new(10, 100);
        let (device, t0) = (DeviceId::random(), Instant::now());
        let first = budgets.resume(device, t0).expect("no penalty");
        assert!((0..100).all(|_| first.allow(t0)), "the burst");
        assert!(!first.allow(t0));
        // A second connection before the first is noticed as gone: the same bucket.
        let second = budgets.resume(device, t0).expect("no penalty");
        assert!(!second.allow(t0));
        drop((first, second));
        budgets.release(device, t0);
        // Half a second later: 5 tokens, not a new burst.
        let later = t0 + Duration::from_millis(500);
        let third = budgets.resume(device, later).expect("no penalty");
        assert_eq!((0..100).filter(|_| third.allow(later)).count(), 5);
        // Another device is not affected.
        let other = budgets.resume(DeviceId::random(), later).expect("no penalty");
        assert!((0..100).all(|_| other.allow(later)));
    }

    #[test]
    fn a_user_budget_is_shared_by_the_users_devices() {
        let users = UserBudgets::new(10, 100);
        let (user, t0) = (UserId::random(), Instant::now());
        let phone = users.resume(user, t0).expect("no penalty");
        let laptop = users.resume(user, t0).expect("no penalty");
        assert_eq!((0..80).filter(|_| phone.allow(t0)).count(), 80);
        assert_eq!((0..80).filter(|_| laptop.allow(t0)).count(), 20, "one bucket for both");
    }

    #[test]
    fn a_penalty_refuses_hellos_until_it_ends_and_idle_devices_are_forgotten() {
        let budgets = DeviceBudgets::new(10, 100);
        let (device, t0) = (DeviceId::random(), Instant::now());
        let budget = budgets.resume(device, t0).expect("no penalty");
        budget.penalize(Duration::from_secs(5), t0);
        drop(budget);
        budgets.release(device, t0);
        assert_eq!(budgets.resume(device, t0 + Duration::from_secs(1)).err(), Some(Duration::from_secs(4)));
        let back = budgets.resume(device, t0 + Duration::from_secs(5)).expect("served once the delay is over");
        drop(back);
        // Full again and no penalty: nothing is kept once its connection ends.
        budgets.release(device, t0 + Duration::from_secs(6));
        assert!(budgets.is_empty());
        // A device with a connection is kept whatever its bucket.
        let held = budgets.resume(device, t0).expect("no penalty");
        budgets.release(device, t0);
        assert_eq!(budgets.len(), 1);
        drop(held);
    }
}
