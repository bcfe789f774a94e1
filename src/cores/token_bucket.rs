//! A token bucket decided from a stored state, so that every node of a cluster shares one
//! budget per key (a user's uploads, a phone number's codes): the store reads the state,
//! asks [`take`] and writes the new state with compare-and-set (`Store::take_token`).
//!
//! Integer arithmetic in milli-tokens and milliseconds, so the same state gives the same
//! answer on every node and backend. Times come from each node's wall clock: a node whose
//! clock is behind the stored `at_ms` refills nothing until it catches up (the bucket never
//! fills faster than its rate, whatever the skew).

use serde::{Deserialize, Serialize};

/// Milli-tokens in one token.
const MILLI: u64 = 1_000;

/// The rule of a bucket: it holds at most `capacity` tokens (the burst) and refills
/// `refill` tokens every `every_ms` milliseconds, continuously; one take spends `cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRule {
    /// Tokens a full bucket holds (at least 1 is used).
    pub capacity: u32,
    /// Tokens added per period (at least 1 is used).
    pub refill: u32,
    /// The period, ms (at least 1 is used).
    pub every_ms: u64,
    /// Tokens one take spends, all or none (at least 1 is used): 1 for one event, n for a
    /// batch of n (contact discovery's new numbers). A cost above `capacity` never fits:
    /// callers keep batches within it.
    pub cost: u32,
}

impl BucketRule {
    /// A bucket that allows `per_minute` at once and `per_minute` a minute after that.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::per(per_minute, std::time::Duration::from_secs(60))
    }

    /// A bucket that allows `n` at once and `n` per `period` after that.
    pub fn per(n: u32, period: std::time::Duration) -> Self {
        Self { capacity: n, refill: n, every_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX), cost: 1 }
    }

    /// The same bucket, a take of which spends `cost` tokens.
    pub fn costing(self, cost: u32) -> Self {
        Self { cost, ..self }
    }
}

/// A bucket as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    /// Milli-tokens left at `at_ms`.
    pub tokens_milli: u64,
    /// When `tokens_milli` was computed, ms since the Unix epoch.
    pub at_ms: u64,
}

/// What [`take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// One token taken: store this state.
    Take(BucketState),
    /// Empty: nothing to store; a token will be there in this many ms.
    Refuse {
        /// Milliseconds until one whole token has refilled (at least 1).
        retry_after_ms: u64,
    },
}

/// What the store answers for a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A token was taken.
    Yes,
    /// The bucket is empty.
    No {
        /// Milliseconds until a token is available (at least 1).
        retry_after_ms: u64,
    },
}

/// Takes `rule.cost` tokens from `current` (`None`: never used, so full) under `rule` at `now_ms`.
pub fn take(current: Option<BucketState>, rule: BucketRule, now_ms: u64) -> Decision {
    let capacity = u64::from(rule.capacity.max(1)) * MILLI;
    let refill = u128::from(rule.refill.max(1));
    let every = u128::from(rule.every_ms.max(1));
    let (tokens, at) = match current {
        None => (capacity, now_ms),
        Some(s) => {
            let elapsed = u128::from(now_ms.saturating_sub(s.at_ms));
            // milli-tokens refilled = elapsed_ms × refill × 1000 / every_ms.
            let added = elapsed * refill * u128::from(MILLI) / every;
            let tokens = (u128::from(s.tokens_milli.min(capacity)) + added).min(u128::from(capacity)) as u64;
            (tokens, s.at_ms.max(now_ms))
        }
    };
    let cost = u64::from(rule.cost.max(1)) * MILLI;
    if tokens >= cost {
        Decision::Take(BucketState { tokens_milli: tokens - cost, at_ms: at })
    } else {
        // Milli-tokens missing, at refill × 1000 / every_ms milli-tokens a ms: round up.
        // (A cost above the capacity gets the wait for a full bucket's worth and more:
        // honest in that it never fits.)
        let missing = u128::from(cost - tokens);
        let retry_after_ms = u64::try_from((missing * every).div_ceil(refill * u128::from(MILLI))).unwrap_or(u64::MAX);
        // The wait counts from `at`, which may be ahead of this node's clock.
        Decision::Refuse { retry_after_ms: retry_after_ms.saturating_add(at.saturating_sub(now_ms)).max(1) }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(state: &mut Option<BucketState>, rule: BucketRule, now: u64) -> Result<(), u64> {
        match take(*state, rule, now) {
            Decision::Take(next) => {
                *state = Some(next);
                Ok(())
            }
            Decision::Refuse { retry_after_ms } => Err(retry_after_ms),
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rule = BucketRule::per_minute(3);
        let mut s = None;
        for _ in 0..3 {
            assert_eq!(run(&mut s, rule, 1_000), Ok(()));
        }
        assert_eq!(run(&mut s, rule, 1_000), Err(20_000), "one token every 20 s");
        assert_eq!(run(&mut s, rule, 11_000), Err(10_000));
        assert_eq!(run(&mut s, rule, 21_000), Ok(()));
        assert!(run(&mut s, rule, 21_001).is_err());
    }

    #[test]
    fn a_daily_budget_refills_over_the_day() {
        let rule = BucketRule::per(10, std::time::Duration::from_secs(86_400));
        let mut s = None;
        assert!((0..10).all(|_| run(&mut s, rule, 0).is_ok()));
        assert_eq!(run(&mut s, rule, 0), Err(8_640_000), "one every 2.4 hours");
        assert!(run(&mut s, rule, 8_640_000).is_ok());
    }

    #[test]
    fn a_clock_behind_the_stored_time_refills_nothing() {
        let rule = BucketRule { capacity: 1, refill: 60, every_ms: 60_000, cost: 1 };
        let stored = Some(BucketState { tokens_milli: 0, at_ms: 10_000 });
        assert_eq!(take(stored, rule, 9_000), Decision::Refuse { retry_after_ms: 2_000 });
        assert_eq!(take(stored, rule, 11_000), Decision::Take(BucketState { tokens_milli: 0, at_ms: 11_000 }));
    }

    #[test]
    fn a_lowered_capacity_applies_to_stored_buckets() {
        let rule = BucketRule { capacity: 1, refill: 1, every_ms: 60_000, cost: 1 };
        let stored = Some(BucketState { tokens_milli: 50_000, at_ms: 0 });
        assert_eq!(take(stored, rule, 0), Decision::Take(BucketState { tokens_milli: 0, at_ms: 0 }));
    }

    #[test]
    fn a_batch_spends_its_cost_all_or_nothing() {
        let rule = BucketRule::per(10, std::time::Duration::from_secs(86_400));
        let mut s = None;
        assert_eq!(run(&mut s, rule.costing(7), 0), Ok(()));
        // 3 left: a batch of 4 is refused whole (nothing spent), with the wait for one more.
        assert_eq!(run(&mut s, rule.costing(4), 0), Err(8_640_000));
        assert_eq!(run(&mut s, rule.costing(3), 0), Ok(()));
        assert_eq!(run(&mut s, rule, 0), Err(8_640_000));
        assert!(run(&mut s, rule.costing(11), 86_400_000).is_err(), "above the capacity never fits");
        assert_eq!(run(&mut s, rule.costing(10), 86_400_000), Ok(()));
    }

    proptest! {
        /// Batches of any cost never spend more than the burst plus the refill.
        #[test]
        fn batches_never_spend_more_than_burst_plus_refill(
            capacity in 1u32..50,
            per_minute in 1u32..600,
            takes in proptest::collection::vec((0u64..5_000, 1u32..10), 1..200),
        ) {
            let rule = BucketRule { capacity, refill: per_minute, every_ms: 60_000, cost: 1 };
            let mut s = None;
            let (start, mut now, mut spent) = (1_000_000u64, 1_000_000u64, 0u64);
            for (gap, cost) in takes {
                now += gap;
                if run(&mut s, rule.costing(cost), now).is_ok() {
                    spent += u64::from(cost);
                }
                let allowed = u64::from(capacity) + (now - start) * u64::from(per_minute) / 60_000;
                prop_assert!(spent <= allowed, "{spent} spent, {allowed} allowed");
            }
        }

        /// Over any schedule of attempts, no more tokens are taken than the burst plus the
        /// refill over the span, and a refusal's wait is honest: retrying after it succeeds.
        #[test]
        fn never_more_than_burst_plus_refill(
            capacity in 1u32..20,
            per_minute in 1u32..600,
            gaps in proptest::collection::vec(0u64..5_000, 1..200),
        ) {
            let rule = BucketRule { capacity, refill: per_minute, every_ms: 60_000, cost: 1 };
            let mut s = None;
            let (start, mut now, mut taken) = (1_000_000u64, 1_000_000u64, 0u64);
            for gap in gaps {
                now += gap;
                match run(&mut s, rule, now) {
                    Ok(()) => taken += 1,
                    Err(wait) => {
                        prop_assert!(wait >= 1);
                        let mut later = s;
                        prop_assert!(run(&mut later, rule, now + wait).is_ok(), "a token after the advised wait");
                    }
                }
                let allowed = u64::from(capacity) + (now - start) * u64::from(per_minute) / 60_000;
                prop_assert!(taken <= allowed, "{taken} taken, {allowed} allowed");
            }
        }
    }
}
