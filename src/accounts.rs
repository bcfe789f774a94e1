//! Accounts and devices: phone registration with a one-time code, bearer tokens, linked
//! devices and revocation. Transport-free: the HTTP layer calls these functions, the
//! connection calls [`Accounts::authenticate`].
//!
//! Secrets are never stored: codes and tokens are kept as SHA-256 hashes. A token is 32
//! random bytes, so a hash without a salt is enough (there is nothing to brute-force).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::phone::PhoneError;
use crate::store::{BucketRule, CodeCheck, DeviceId, DeviceRecord, PendingCode, Store, StoreError, Taken, UserId, UserRecord, now_ms};

/// Delivers one-time codes to phones (an SMS gateway in production).
#[async_trait::async_trait]
pub trait CodeSender: Send + Sync + 'static {
    /// Sends `code` to `phone`.
    async fn send_code(&self, phone: &str, code: &str) -> Result<(), String>;
}

/// Development sender: writes the code to the log.
#[derive(Debug, Default)]
pub struct LogCodeSender;

#[async_trait::async_trait]
impl CodeSender for LogCodeSender {
    async fn send_code(&self, phone: &str, code: &str) -> Result<(), String> {
        tracing::info!(phone, code, "one-time code (development sender)");
        Ok(())
    }
}

/// Production-style sender: POSTs `{"phone": …, "code": …}` as JSON to an SMS gateway.
#[derive(Debug)]
pub struct WebhookCodeSender {
    url: String,
    http: reqwest::Client,
}

impl WebhookCodeSender {
    /// A sender posting to `url`.
    pub fn new(url: String) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { url, http }
    }
}

#[async_trait::async_trait]
impl CodeSender for WebhookCodeSender {
    async fn send_code(&self, phone: &str, code: &str) -> Result<(), String> {
        let response =
            self.http.post(&self.url).json(&serde_json::json!({ "phone": phone, "code": code })).send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() { Ok(()) } else { Err(format!("gateway answered {}", response.status())) }
    }
}

/// Account rules.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// How long a code is valid.
    pub code_ttl: Duration,
    /// Wrong guesses before a code is discarded.
    pub max_code_attempts: u32,
    /// Live devices per user: the primary plus linked ones.
    pub max_devices: usize,
    /// Development mode: the code is also returned in the registration response.
    pub expose_codes: bool,
    /// How long a device-pairing code can be approved and claimed
    /// ([`crate::pairing::PAIRING_TTL`] by default).
    pub pairing_ttl: Duration,
    /// Limits against code guessing and SMS abuse.
    pub signup: SignupLimits,
}

/// Live devices per user by default: the primary plus four linked ones.
pub const MAX_DEVICES: usize = 5;

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(600),
            max_code_attempts: 5,
            max_devices: MAX_DEVICES,
            expose_codes: false,
            pairing_ttl: crate::pairing::PAIRING_TTL,
            signup: SignupLimits::default(),
        }
    }
}

/// Sign-up abuse limits, kept as rate buckets in the store (`Store::take_token`), so they
/// hold for the whole cluster and across restarts. Each refusal is `RateLimited` (HTTP 429
/// with `Retry-After`), the same whether the number is registered or not. 0 turns a limit
/// off.
#[derive(Debug, Clone)]
pub struct SignupLimits {
    /// Time between two codes for one number (resend cooldown).
    pub code_cooldown: Duration,
    /// Codes one number may be sent per day (the SMS cost of a number).
    pub codes_per_number_per_day: u32,
    /// Verification attempts per number and client address per hour, across every code
    /// issued to the number: a new code buys no new guesses. From all addresses together
    /// a number gets five times this (a ceiling on guessing from many addresses), so a
    /// stranger guessing from elsewhere cannot lock its owner out with a few requests.
    pub guesses_per_number_per_hour: u32,
    /// Registrations (codes requested) per client address per hour.
    pub registrations_per_address_per_hour: u32,
    /// Verification attempts per client address per hour.
    pub verifications_per_address_per_hour: u32,
    /// Addresses the per-address limits do not apply to (proxies, load balancers).
    pub exempt: Vec<IpAddr>,
}

impl Default for SignupLimits {
    fn default() -> Self {
        Self {
            code_cooldown: Duration::from_secs(30),
            codes_per_number_per_day: 10,
            guesses_per_number_per_hour: 10,
            registrations_per_address_per_hour: 100,
            verifications_per_address_per_hour: 300,
            exempt: Vec::new(),
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No device has this token.
    #[error("invalid token")]
    InvalidToken,
    /// The device was revoked.
    #[error("device revoked")]
    Revoked,
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an account operation failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The phone number could not be normalised to E.164 ([`crate::phone::normalize`]).
    #[error(transparent)]
    InvalidPhone(#[from] PhoneError),
    /// A device name was empty or too long.
    #[error("device name must be 1 to 64 characters")]
    InvalidName,
    /// No code is pending, or it expired, or it was wrong.
    #[error("invalid or expired code")]
    InvalidCode,
    /// A sign-up limit (per number or per address) was reached.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next attempt may succeed.
        retry_after_secs: u64,
    },
    /// The code sender failed.
    #[error("could not send the code: {0}")]
    SendFailed(String),
    /// The user has the maximum number of devices.
    #[error("device limit reached ({0} devices)")]
    TooManyDevices(usize),
    /// Only the primary device may link or revoke other devices.
    #[error("only the primary device may do this")]
    NotPrimary,
    /// No pending device pairing has this code (never issued, used, expired, or a wrong
    /// claim secret: not told apart).
    #[error("unknown or expired pairing code")]
    UnknownPairing,
    /// The pairing code was already approved.
    #[error("this pairing code was already approved")]
    PairingAlreadyApproved,
    /// No such device for this user.
    #[error("no such device")]
    UnknownDevice,
    /// The new number already belongs to another account.
    #[error("this number belongs to another account")]
    NumberTaken,
    /// The number given to confirm a deletion is not the account's.
    #[error("that is not this account's number")]
    WrongNumber,
    /// A per-account limit was reached (account exports).
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooOften {
        /// Seconds until the next request may succeed.
        retry_after_secs: u64,
    },
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The store failed.
    #[error("store unavailable")]
    Store(#[source] StoreError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooManyDevices { max } => AccountError::TooManyDevices(max),
            other => AccountError::Store(other),
        }
    }
}

/// Result of a registration request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CodeIssued {
    /// Seconds until the code expires.
    pub expires_in_s: u64,
    /// The code itself, only in development mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_code: Option<String>,
}

/// Credentials of a new device. The token is shown once and never stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeviceCredentials {
    /// Owner.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// The device.
    #[schema(value_type = String, format = Uuid)]
    pub device_id: DeviceId,
    /// Bearer token for HTTP and Hello.
    pub token: String,
}

/// A device as listed to its owner.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub device_id: DeviceId,
    /// Name.
    pub name: String,
    /// The registering phone.
    pub primary: bool,
    /// ms since the epoch.
    pub created_ms: u64,
    /// ms since the epoch, if revoked.
    pub revoked_ms: Option<u64>,
}

impl From<DeviceRecord> for DeviceInfo {
    fn from(d: DeviceRecord) -> Self {
        Self { device_id: d.device_id, name: d.name, primary: d.primary, created_ms: d.created_ms, revoked_ms: d.revoked_ms }
    }
}

/// The accounts service (cheap to clone).
#[derive(Clone)]
pub struct Accounts {
    pub(crate) store: Arc<dyn Store>,
    sender: Arc<dyn CodeSender>,
    pub(crate) config: Arc<AccountsConfig>,
}

/// The phones `provision` creates: `<prefix><n>` for n in `first..first + count`, n
/// zero-padded so that the number has E.164's 15 digits. Refused (`InvalidPhone`) when the
/// range overflows, an n does not fit its width, or a phone is not E.164.
pub fn provisioned_phones(prefix: &str, first: u64, count: usize) -> Result<Vec<String>, AccountError> {
    let width = 15usize.saturating_sub(prefix.trim_start_matches('+').len()).clamp(1, 14);
    let end = first.checked_add(count as u64).ok_or(AccountError::InvalidPhone(PhoneError::Invalid))?;
    if end > 10u64.pow(width as u32) {
        return Err(AccountError::InvalidPhone(PhoneError::Invalid));
    }
    (first..end)
        .map(|n| {
            let phone = format!("{prefix}{n:0width$}");
            if valid_phone(&phone) { Ok(phone) } else { Err(AccountError::InvalidPhone(PhoneError::Invalid)) }
        })
        .collect()
}

/// What an address counts as for per-address limits: an IPv4-mapped IPv6 address is its
/// IPv4 address, and an IPv6 address is its /64 network (one subscriber's allocation: a
/// client that owns a /64 has 2^64 addresses for free).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `phone` has E.164's shape: `+`, then 8 to 15 digits, the first not 0 (ITU-T
/// E.164 §6). Only bulk provisioning uses this syntactic check: its load-test numbers
/// (15 digits after a prefix such as `+1999`) are deliberately outside every real
/// numbering plan, so that registration ([`crate::phone::normalize`], which refuses them)
/// can never reach one of them.
pub fn valid_phone(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or("");
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// Whether a device name is 1 to 64 characters and not all whitespace.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 64
}

pub(crate) fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

impl Accounts {
    /// The service over a store and a code sender.
    pub fn new(store: Arc<dyn Store>, sender: Arc<dyn CodeSender>, config: AccountsConfig) -> Self {
        Self { store, sender, config: Arc::new(config) }
    }

    /// Takes a token from the store's bucket `key` (0 = no limit); `RateLimited` if empty.
    async fn limit(&self, key: String, n: u32, period: Duration) -> Result<(), AccountError> {
        if n == 0 || period.is_zero() {
            return Ok(());
        }
        match self.store.take_token(&key, BucketRule::per(n, period), now_ms()).await? {
            Taken::Yes => Ok(()),
            Taken::No { retry_after_ms } => {
                metrics::counter!("switchboard_signup_refused_total", "limit" => key.split('/').next().unwrap_or("").to_owned()).increment(1);
                Err(AccountError::RateLimited { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) })
            }
        }
    }

    /// The address `from` counts as, for per-address limits: `None` for an unknown or
    /// exempt one (a load balancer), else [`address_key`] of it.
    fn counted_address(&self, from: Option<IpAddr>) -> Option<IpAddr> {
        let ip = address_key(from?);
        (!self.config.signup.exempt.iter().any(|e| address_key(*e) == ip)).then_some(ip)
    }

    /// The per-address limit `what` for `from` (none for an exempt or unknown address).
    pub(crate) async fn limit_address(&self, what: &str, from: Option<IpAddr>, per_hour: u32) -> Result<(), AccountError> {
        match self.counted_address(from) {
            Some(ip) => self.limit(format!("{what}/{ip}"), per_hour, HOUR).await,
            None => Ok(()),
        }
    }

    /// Issues a one-time code for a phone number and sends it, within the sign-up limits
    /// ([`SignupLimits`]): per address `from`, then the number's cooldown and daily cap.
    ///
    /// `phone` is normalised first ([`crate::phone::normalize`], with `region` for a
    /// number written without its country code): every limit and the code are keyed by
    /// the E.164 form, however the number was written.
    pub async fn register(&self, phone: &str, region: Option<&str>, from: Option<IpAddr>) -> Result<CodeIssued, AccountError> {
        let phone = &crate::phone::normalize(phone, region)?;
        let limits = &self.config.signup;
        self.limit_address("register-address", from, limits.registrations_per_address_per_hour).await?;
        self.limit(format!("code-cooldown/{phone}"), 1, limits.code_cooldown).await?;
        self.limit(format!("code-day/{phone}"), limits.codes_per_number_per_day, DAY).await?;
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        let pending = PendingCode { code_hash: hash_secret(&code), expires_ms: now_ms() + self.config.code_ttl.as_millis() as u64, attempts: 0 };
        self.store.put_pending_code(phone, pending).await?;
        self.sender.send_code(phone, &code).await.map_err(AccountError::SendFailed)?;
        Ok(CodeIssued { expires_in_s: self.config.code_ttl.as_secs(), dev_code: self.config.expose_codes.then_some(code) })
    }

    /// Checks a code and creates the account (or takes it over on a new phone) with a new
    /// primary device. Earlier primaries of the account are revoked; their live
    /// connections are the caller's to close (returned ids).
    pub async fn verify(
        &self,
        phone: &str,
        region: Option<&str>,
        code: &str,
        device_name: &str,
        from: Option<IpAddr>,
    ) -> Result<(DeviceCredentials, Vec<DeviceId>), AccountError> {
        if !valid_name(device_name) {
            return Err(AccountError::InvalidName);
        }
        let phone = &self.check_code(phone, region, code, from).await?;
        let now = now_ms();
        let fresh = UserRecord { user_id: UserId::random(), phone: phone.to_owned(), created_ms: now };
        let (user, _created) = self.store.get_or_create_user(phone, fresh).await?;
        let mut revoked = Vec::new();
        for old in self.store.devices_of(user.user_id).await? {
            if old.primary && old.revoked_ms.is_none() {
                self.store.revoke_device(user.user_id, old.device_id, now).await?;
                revoked.push(old.device_id);
            }
        }
        let credentials = self.add_device(user.user_id, device_name, true).await?;
        Ok((credentials, revoked))
    }

    /// Checks a one-time code sent to `phone` (by [`Accounts::register`]) under the
    /// sign-up limits, and uses it up; returns the number in E.164. Shared by sign-up and
    /// the change of an account's number. Errors: `InvalidPhone`, `RateLimited`,
    /// `InvalidCode`, `Store`.
    pub async fn check_code(&self, phone: &str, region: Option<&str>, code: &str, from: Option<IpAddr>) -> Result<String, AccountError> {
        let phone = crate::phone::normalize(phone, region)?;
        // Every attempt counts, right or wrong, across all codes issued to the number: a
        // re-requested code buys no new guesses.
        let limits = &self.config.signup;
        self.limit_address("verify-address", from, limits.verifications_per_address_per_hour).await?;
        if let Some(ip) = self.counted_address(from) {
            self.limit(format!("code-guess/{phone}/{ip}"), limits.guesses_per_number_per_hour, HOUR).await?;
        }
        self.limit(format!("code-guess/{phone}"), limits.guesses_per_number_per_hour.saturating_mul(5), HOUR).await?;
        // One atomic check in the store: a code is accepted once even when two
        // verifications race, and parallel wrong guesses each count an attempt.
        match self.store.use_pending_code(&phone, hash_secret(code), now_ms(), self.config.max_code_attempts).await? {
            CodeCheck::Accepted => Ok(phone),
            CodeCheck::Wrong | CodeCheck::Missing => Err(AccountError::InvalidCode),
        }
    }

    pub(crate) async fn add_device(&self, user: UserId, name: &str, primary: bool) -> Result<DeviceCredentials, AccountError> {
        let token = new_token();
        let device = DeviceRecord {
            device_id: DeviceId::random(),
            user_id: user,
            name: name.trim().to_owned(),
            primary,
            token_hash: hash_secret(&token),
            created_ms: now_ms(),
            revoked_ms: None,
        };
        let device_id = device.device_id;
        self.store.add_device(device, self.config.max_devices).await?;
        Ok(DeviceCredentials { user_id: user, device_id, token })
    }

    /// Creates `count` accounts with phones `<prefix><n>` (n from `first`, zero-padded to
    /// the E.164 length) without one-time codes: an operator path (admin API) for load
    /// tests and migrations. Phones already registered are skipped.
    pub async fn provision(&self, prefix: &str, first: u64, count: usize) -> Result<Vec<DeviceCredentials>, AccountError> {
        let phones = provisioned_phones(prefix, first, count)?;
        let now = now_ms();
        let mut accounts = Vec::with_capacity(count);
        let mut credentials = Vec::with_capacity(count);
        for phone in phones {
            let user = UserRecord { user_id: UserId::random(), phone, created_ms: now };
            let token = new_token();
            let device = DeviceRecord {
                device_id: DeviceId::random(),
                user_id: user.user_id,
                name: "provisioned".into(),
                primary: true,
                token_hash: hash_secret(&token),
                created_ms: now,
                revoked_ms: None,
            };
            credentials.push(DeviceCredentials { user_id: user.user_id, device_id: device.device_id, token });
            accounts.push((user, device));
        }
        let created = self.store.create_accounts(accounts).await?;
        if created != credentials.len() {
            // Some phones existed: their new credentials were not stored; report none of them.
            let mut kept = Vec::with_capacity(created);
            for c in credentials {
                if self.store.device(c.device_id).await?.is_some() {
                    kept.push(c);
                }
            }
            return Ok(kept);
        }
        Ok(credentials)
    }

    /// The live device a token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<DeviceRecord, AuthError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::InvalidToken);
        }
        let device = self.store.device_by_token(hash_secret(token)).await?.ok_or(AuthError::InvalidToken)?;
        if device.revoked_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(device)
    }

    /// Links a new device to the caller's account (the caller must be the primary).
    pub async fn link_device(&self, caller: &DeviceRecord, name: &str) -> Result<DeviceCredentials, AccountError> {
        if !caller.primary {
            return Err(AccountError::NotPrimary);
        }
        if !valid_name(name) {
            return Err(AccountError::InvalidName);
        }
        self.add_device(caller.user_id, name, false).await
    }

    /// Every device of the caller's account.
    pub async fn list_devices(&self, caller: &DeviceRecord) -> Result<Vec<DeviceInfo>, AccountError> {
        Ok(self.store.devices_of(caller.user_id).await?.into_iter().map(DeviceInfo::from).collect())
    }

    /// "Log out all other devices": the primary revokes every other live device of the
    /// account at once; answers the ones revoked (their connections are the caller's to
    /// close).
    ///
    /// Errors: `NotPrimary` from a linked device.
    pub async fn revoke_others(&self, caller: &DeviceRecord) -> Result<Vec<DeviceId>, AccountError> {
        if !caller.primary {
            return Err(AccountError::NotPrimary);
        }
        let now = now_ms();
        let mut revoked = Vec::new();
        for device in self.store.devices_of(caller.user_id).await? {
            if device.device_id != caller.device_id
                && device.revoked_ms.is_none()
                && self.store.revoke_device(caller.user_id, device.device_id, now).await?
            {
                revoked.push(device.device_id);
            }
        }
        Ok(revoked)
    }

    /// Revokes a device: the primary may revoke any device of the account, any device may
    /// revoke itself (log out).
    pub async fn revoke_device(&self, caller: &DeviceRecord, device: DeviceId) -> Result<(), AccountError> {
        if device != caller.device_id && !caller.primary {
            return Err(AccountError::NotPrimary);
        }
        if self.store.revoke_device(caller.user_id, device, now_ms()).await? { Ok(()) } else { Err(AccountError::UnknownDevice) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn provisioning_refuses_ranges_that_overflow_or_do_not_fit_e164() {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> = Arc::new(crate::store::EmbeddedStore::open(dir.path()).expect("store"));
        let accounts = Accounts::new(store, Arc::new(LogCodeSender), AccountsConfig::default());
        assert!(matches!(accounts.provision("+1", u64::MAX - 1, 5).await, Err(AccountError::InvalidPhone(_))), "overflow");
        assert!(
            matches!(accounts.provision("+1999", 99_999_999_999, 2).await, Err(AccountError::InvalidPhone(_))),
            "12 digits after a 4-digit prefix"
        );
        assert_eq!(accounts.provision("+1999", 99_999_999_998, 2).await.expect("fits").len(), 2);
    }

    #[test]
    fn addresses_count_as_their_ipv4_or_their_ipv6_slash_64() {
        let key = |s: &str| address_key(s.parse().expect("ip")).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7", "IPv4-mapped");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"), "one /64");
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(valid_phone("+14155550123"));
        assert!(!valid_phone("14155550123"));
        assert!(!valid_phone("+1415555"));
        assert!(!valid_phone("+0123456789"));
        assert!(!valid_phone("+1415555012a"));
    }
}
