//! Frame budgets that outlive a connection. A device's inbound frame rate is a token
//! bucket kept per device, not per connection: every connection of the device takes from
//! the same bucket (an old connection not yet noticed as gone included), and a new one
//! finds the bucket as the last one left it, refilled for the time in between, so
//! reconnecting buys no new budget. A connection closed for its rate (`RATE_LIMITED`,
//! with `reconnect_after_ms`) leaves its device a penalty: a Hello before the advised delay
//! is refused with the time left, so the advice is enforced, not a suggestion.
//!
//! Per node (a device that reconnects to another node of a cluster starts full there);
//! decided from given instants, so it is tested without sleeping. A device is remembered
//! while it has a connection, a bucket that is not full, or a penalty; the others are
//! forgotten when a connection ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ids::DeviceId;

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

/// One device's budget, shared by its connections.
#[derive(Debug)]
pub struct DeviceBudget {
    bucket: Mutex<Bucket>,
    /// No Hello of this device is served before this instant.
    penalty_until: Mutex<Option<Instant>>,
}

impl DeviceBudget {
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

/// The node's budgets, by device.
#[derive(Debug)]
pub struct DeviceBudgets {
    rate_per_sec: u32,
    burst: u32,
    devices: Mutex<HashMap<DeviceId, Arc<DeviceBudget>>>,
}

impl DeviceBudgets {
    /// Budgets of `rate_per_sec` frames a second with bursts of `burst`.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self { rate_per_sec, burst, devices: Mutex::new(HashMap::new()) }
    }

    /// The budget a new connection of `device` takes from at `now`: the device's, as its
    /// other connections left it, or a full one. `Err(wait)` while the device is in a
    /// penalty: its Hello must be refused, with `wait` as the delay to advise again.
    pub fn resume(&self, device: DeviceId, now: Instant) -> Result<Arc<DeviceBudget>, Duration> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let budget = devices
            .entry(device)
            .or_insert_with(|| {
                Arc::new(DeviceBudget { bucket: Mutex::new(Bucket::full(self.rate_per_sec, self.burst, now)), penalty_until: Mutex::new(None) })
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
    pub fn release(&self, device: DeviceId, now: Instant) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(budget) = devices.get(&device)
            && Arc::strong_count(budget) == 1
            && budget.is_spent_nothing(now)
        {
            devices.remove(&device);
        }
    }

    /// Devices remembered now.
    pub fn len(&self) -> usize {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).len()
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
