//! Per-user upload rate: a token bucket per user (capacity = rate per minute, refilled
//! continuously), decided from a given instant so it is tested without sleeping. Per node:
//! in a cluster a user may create up to N × the rate across N nodes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::UserId;

/// The buckets of every user seen recently.
pub struct UploadRate {
    per_minute: u32,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl UploadRate {
    /// `per_minute` creations per user per minute (and as a burst); at least 1.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `user` at `now`: Ok, or how long until one is available.
    pub fn take(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget users whose bucket is full again (they cost nothing to recreate).
            buckets.retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < capacity);
        }
        let (tokens, at) = buckets.entry(user).or_insert((capacity, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rate = UploadRate::new(3);
        let (user, other) = (UserId::random(), UserId::random());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rate.take(user, t0).is_ok());
        }
        let wait = rate.take(user, t0).expect_err("bucket empty");
        assert!(wait <= Duration::from_secs(20) && wait > Duration::from_secs(19), "{wait:?}");
        assert!(rate.take(other, t0).is_ok(), "buckets are per user");
        assert!(rate.take(user, t0 + Duration::from_secs(20)).is_ok(), "one token per 20 s");
        assert!(rate.take(user, t0 + Duration::from_secs(21)).is_err());
    }
}
