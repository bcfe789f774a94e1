//! Device pairing, WhatsApp's "link a device" flow: the new device asks for a pairing and
//! shows its code as a QR code; the user's primary device scans it and approves it over
//! its own connection (`ApprovePairing`); the new device, which alone holds the claim
//! secret, then receives its own token directly — the token never passes through the
//! primary. Codes expire after [`PAIRING_TTL`] and are used once; requests are limited per
//! client address like registrations.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::accounts::{AccountError, Accounts, DeviceCredentials, hash_secret, new_token, valid_name};
use crate::store::{DeviceRecord, PairingApproval, PairingClaim, PairingRecord, Store, now_ms};

/// How long a pairing code can be approved and claimed, by default (`--pairing-ttl-secs`).
pub const PAIRING_TTL: Duration = Duration::from_secs(120);
/// The longest a claim waits for the approval in one request.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting claim looks again (the approval may land on another node).
const CLAIM_POLL: Duration = Duration::from_millis(500);
/// What a QR code of a pairing says: this prefix, then the code.
pub const QR_PREFIX: &str = "switchboard-pair:";

/// A started pairing, for the new device.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PairingStarted {
    /// The code to show (as a QR code of `qr`), 32 hex characters: the primary approves it.
    pub code: String,
    /// The new device's secret for claiming its token (keep it; never show it).
    pub claim_secret: String,
    /// What the QR code encodes: `switchboard-pair:<code>`.
    pub qr: String,
    /// Seconds the code stays valid.
    pub expires_in_s: u64,
}

fn secret() -> String {
    new_token()[..32].to_owned()
}

impl Accounts {
    /// Starts a pairing for a new device named `device_name`, within the per-address
    /// registration limit (a pairing is a way into an account).
    pub async fn start_pairing(&self, device_name: &str, from: Option<IpAddr>) -> Result<PairingStarted, AccountError> {
        if !valid_name(device_name) {
            return Err(AccountError::InvalidName);
        }
        self.limit_address("pairing-address", from, self.config.signup.registrations_per_address_per_hour).await?;
        let (code, claim_secret) = (secret(), new_token());
        let record = PairingRecord {
            code_hash: hash_secret(&code),
            claim_hash: hash_secret(&claim_secret),
            device_name: device_name.trim().to_owned(),
            expires_ms: now_ms() + self.config.pairing_ttl.as_millis() as u64,
            approved_by: None,
            approved_device: None,
        };
        self.store.put_pairing(record).await?;
        Ok(PairingStarted { qr: format!("{QR_PREFIX}{code}"), code, claim_secret, expires_in_s: self.config.pairing_ttl.as_secs() })
    }

    /// The caller's primary approves a pairing ([`approve`] with this service's device
    /// limit).
    pub async fn approve_pairing(&self, caller: &DeviceRecord, code: &str) -> Result<String, AccountError> {
        approve(self.store.as_ref(), self.config.max_devices, caller, code).await
    }

    /// The new device's claim: waits up to `wait` (at most [`MAX_CLAIM_WAIT`]) for the
    /// approval, then creates the device and answers its credentials — once. `Ok(None)`:
    /// not approved yet (ask again).
    ///
    /// Errors: `UnknownPairing` (unknown, expired, used, or a wrong claim secret),
    /// `TooManyDevices`.
    pub async fn claim_pairing(
        &self,
        code: &str,
        claim_secret: &str,
        wait: Duration,
        from: Option<IpAddr>,
    ) -> Result<Option<DeviceCredentials>, AccountError> {
        // Each claim (a long poll of store reads) counts against the address's
        // verifications: not a free way to keep the store busy.
        self.limit_address("pairing-claim-address", from, self.config.signup.verifications_per_address_per_hour).await?;
        let (code_hash, claim_hash) = (hash_secret(code.trim()), hash_secret(claim_secret.trim()));
        let deadline = tokio::time::Instant::now() + wait.min(MAX_CLAIM_WAIT);
        loop {
            match self.store.claim_pairing(code_hash, claim_hash, now_ms()).await? {
                PairingClaim::Claimed { user, device_name, approver } => {
                    // The approving primary must still be one (not revoked, e.g. by the
                    // owner taking the account back on a new phone since it approved).
                    match self.store.device(approver).await? {
                        Some(d) if d.user_id == user && d.primary && d.revoked_ms.is_none() => {}
                        _ => return Err(AccountError::UnknownPairing),
                    }
                    return Ok(Some(self.add_device(user, &device_name, false).await?));
                }
                PairingClaim::Missing => return Err(AccountError::UnknownPairing),
                PairingClaim::Pending if tokio::time::Instant::now() + CLAIM_POLL > deadline => return Ok(None),
                PairingClaim::Pending => tokio::time::sleep(CLAIM_POLL).await,
            }
        }
    }
}

/// The caller's primary approves the pairing of `code` (the QR's text, with or without its
/// prefix) into its account, unless the account already has `max_devices` live devices;
/// answers the new device's name. Shared by the socket (`ApprovePairing`) and HTTP.
///
/// Errors: `NotPrimary`, `TooManyDevices`, `UnknownPairing`, `PairingAlreadyApproved`.
pub async fn approve(store: &dyn Store, max_devices: usize, caller: &DeviceRecord, code: &str) -> Result<String, AccountError> {
    if !caller.primary || caller.revoked_ms.is_some() {
        return Err(AccountError::NotPrimary);
    }
    let live = store.devices_of(caller.user_id).await?.iter().filter(|d| d.revoked_ms.is_none()).count();
    if live >= max_devices {
        return Err(AccountError::TooManyDevices(max_devices));
    }
    let code = code.trim();
    let code = code.strip_prefix(QR_PREFIX).unwrap_or(code);
    match store.approve_pairing(hash_secret(code), caller.user_id, caller.device_id, now_ms()).await? {
        PairingApproval::Approved(record) => Ok(record.device_name),
        PairingApproval::AlreadyApproved => Err(AccountError::PairingAlreadyApproved),
        PairingApproval::Missing => Err(AccountError::UnknownPairing),
    }
}

/// `text` as a QR code drawn with Unicode half blocks, for a terminal (dark modules on a
/// light background, with the quiet zone).
pub fn qr_text(text: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::new(text.as_bytes())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}
