//! Contact discovery: a device submits the phone numbers of its address book and learns
//! which belong to users, with their user ids; the numbers become the account's contact
//! list (kept in the store), which "my contacts" privacy settings are decided from.
//!
//! Enumeration defence (the directory must not be readable by brute force): numbers new to
//! the account spend a daily budget kept as a store rate bucket (cluster-wide), a batch
//! all or nothing; numbers already in the list are re-checked for free, so an app that
//! syncs its address book every day spends only on what changed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cores::token_bucket::{BucketRule, Taken};
use crate::ids::UserId;
use crate::phone::normalize;
use crate::store::{Store, StoreError, now_ms};

/// Numbers one request may carry at most (a bound on one request's work and answer).
pub const MAX_BATCH: usize = 1_000;

/// Contact discovery's limits.
#[derive(Debug, Clone, Copy)]
pub struct ContactsConfig {
    /// Numbers new to an account it may submit per day (a burst of this many, then this
    /// many spread over each day); 0 = no limit.
    pub new_numbers_per_day: u32,
}

impl Default for ContactsConfig {
    fn default() -> Self {
        Self { new_numbers_per_day: 2_000 }
    }
}

/// Why a discovery request failed.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// More than [`MAX_BATCH`] numbers in one request.
    #[error("at most {MAX_BATCH} numbers per request, got {0}")]
    TooMany(usize),
    /// More new numbers than the daily budget (or its remainder) allows; nothing was
    /// looked up or remembered.
    #[error("{new} numbers new to this account exceed its discovery budget; retry in {retry_after_secs} s or send fewer")]
    RateLimited {
        /// New numbers in the refused request.
        new: usize,
        /// Seconds until that many may fit (for a batch above the daily budget: never;
        /// send it in parts).
        retry_after_secs: u64,
    },
    /// The store failed.
    #[error("store unavailable")]
    Store(#[from] StoreError),
}

/// One submitted number that belongs to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Match {
    /// The number as submitted (so the app can find its address-book entry).
    pub phone: String,
    /// Its E.164 form.
    pub e164: String,
    /// The user registered with it.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
}

/// The answer to a discovery request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Discovered {
    /// Submitted numbers that belong to users.
    pub users: Vec<Match>,
    /// Submitted strings that are not valid phone numbers (ignored, not remembered).
    pub invalid: Vec<String>,
    /// How many of the valid numbers were new to the account (spent from the budget).
    pub new_numbers: usize,
}

/// A request's numbers, sorted out before any store access (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (as submitted, E.164), one per distinct E.164 number, first spelling kept.
    pub numbers: Vec<(String, String)>,
    /// Submitted strings that do not normalise.
    pub invalid: Vec<String>,
}

impl Plan {
    /// Normalises `submitted` (with `region` for numbers written without a country code)
    /// and drops repeats of one number however written.
    pub fn new(submitted: &[String], region: Option<&str>) -> Self {
        let mut plan = Plan::default();
        let mut seen = std::collections::HashSet::new();
        for s in submitted {
            match normalize(s, region) {
                Ok(e164) => {
                    if seen.insert(e164.clone()) {
                        plan.numbers.push((s.clone(), e164));
                    }
                }
                Err(_) => plan.invalid.push(s.clone()),
            }
        }
        plan
    }

    /// The E.164 numbers.
    pub fn e164(&self) -> Vec<String> {
        self.numbers.iter().map(|(_, e)| e.clone()).collect()
    }
}

/// The contact discovery service (cheap to clone).
#[derive(Clone)]
pub struct Contacts {
    store: Arc<dyn Store>,
    config: ContactsConfig,
}

impl Contacts {
    /// The service over a store.
    pub fn new(store: Arc<dyn Store>, config: ContactsConfig) -> Self {
        Self { store, config }
    }

    /// Looks `submitted` up for `owner` and adds the valid numbers to the owner's contacts.
    /// Numbers not yet in the contacts spend the daily budget, all or nothing.
    ///
    /// Errors: [`ContactsError::TooMany`] over [`MAX_BATCH`];
    /// [`ContactsError::RateLimited`] when the new numbers do not fit the budget (nothing
    /// is looked up or remembered then); [`ContactsError::Store`].
    pub async fn discover(&self, owner: UserId, submitted: &[String], region: Option<&str>) -> Result<Discovered, ContactsError> {
        if submitted.len() > MAX_BATCH {
            return Err(ContactsError::TooMany(submitted.len()));
        }
        let plan = Plan::new(submitted, region);
        let numbers = plan.e164();
        let known: std::collections::HashSet<String> = self.store.known_contacts(owner, numbers.clone()).await?.into_iter().collect();
        let new: Vec<String> = numbers.iter().filter(|n| !known.contains(*n)).cloned().collect();
        self.spend(owner, new.len()).await?;
        if !new.is_empty() {
            self.store.add_contacts(owner, new.clone()).await?;
        }
        let owners: std::collections::HashMap<String, UserId> = self.store.users_by_phone(numbers).await?.into_iter().collect();
        let users = plan
            .numbers
            .iter()
            .filter_map(|(written, e164)| owners.get(e164).map(|u| Match { phone: written.clone(), e164: e164.clone(), user_id: *u }))
            .collect();
        metrics::counter!("switchboard_discovery_numbers_total", "kind" => "new").increment(new.len() as u64);
        metrics::counter!("switchboard_discovery_numbers_total", "kind" => "known").increment(known.len() as u64);
        Ok(Discovered { users, invalid: plan.invalid, new_numbers: new.len() })
    }

    /// Removes numbers from `owner`'s contacts (deleted from the address book); invalid
    /// strings are ignored. Free of the budget: re-adding one later spends it again.
    pub async fn forget(&self, owner: UserId, submitted: &[String], region: Option<&str>) -> Result<(), ContactsError> {
        if submitted.len() > MAX_BATCH {
            return Err(ContactsError::TooMany(submitted.len()));
        }
        let numbers = Plan::new(submitted, region).e164();
        if !numbers.is_empty() {
            self.store.remove_contacts(owner, numbers).await?;
        }
        Ok(())
    }

    /// Spends `n` of `owner`'s daily budget, all or none.
    async fn spend(&self, owner: UserId, n: usize) -> Result<(), ContactsError> {
        let per_day = self.config.new_numbers_per_day;
        if n == 0 || per_day == 0 {
            return Ok(());
        }
        let cost = u32::try_from(n).unwrap_or(u32::MAX);
        let rule = BucketRule::per(per_day, Duration::from_secs(86_400)).costing(cost);
        match self.store.take_token(&format!("discover/{owner}"), rule, now_ms()).await? {
            Taken::Yes => Ok(()),
            Taken::No { retry_after_ms } => {
                metrics::counter!("switchboard_discovery_refused_total").increment(1);
                Err(ContactsError::RateLimited { new: n, retry_after_secs: retry_after_ms.div_ceil(1000).max(1) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_normalises_drops_repeats_and_sets_invalid_aside() {
        let submitted: Vec<String> =
            ["+1 (415) 555-0123", "415.555.0123", "+14155550124", "not a number", "+1 015 555 0123", "+14155550123"].map(String::from).to_vec();
        let plan = Plan::new(&submitted, Some("US"));
        assert_eq!(
            plan.numbers,
            vec![("+1 (415) 555-0123".to_owned(), "+14155550123".to_owned()), ("+14155550124".to_owned(), "+14155550124".to_owned())],
            "one entry per number, its first spelling kept"
        );
        assert_eq!(plan.invalid, vec!["not a number".to_owned(), "+1 015 555 0123".to_owned()]);
        assert_eq!(plan.e164(), vec!["+14155550123".to_owned(), "+14155550124".to_owned()]);
    }
}
