//! Changing an account's phone number: the same account (id, devices, history, groups)
//! under a new number, proved by one-time codes sent to both the new and the old number
//! (`Accounts::register`, with the sign-up limits): a stolen token alone cannot move an
//! account away from its owner. The old number is released; the user's devices and the
//! 1:1 peers who had the old number in their contacts are told (`NumberChanged`), and
//! those peers have the new one in their contacts instead, so that "my contacts" privacy
//! settings keep treating them alike. Nobody else learns the new number.

use std::net::IpAddr;

use crate::accounts::{AccountError, Accounts};
use crate::actors::Router;
use crate::actors::messages::SessionRequest;
use crate::protocol::{self, id_bytes, pb, server_frame};
use crate::store::{ConversationKind, DeviceRecord, Store};

/// The new number and the proof that the user holds both numbers.
#[derive(Debug, Clone, Copy)]
pub struct Proof<'a> {
    /// The new number as written (see `phone::normalize`).
    pub phone: &'a str,
    /// The region of a number written without its country code.
    pub region: Option<&'a str>,
    /// The one-time code sent to the new number.
    pub code: &'a str,
    /// The one-time code sent to the old number at the same time: a stolen token alone
    /// cannot move the account away from its owner's number.
    pub old_code: &'a str,
    /// The caller's address (the sign-up limits per address).
    pub from: Option<IpAddr>,
}

/// Moves `caller`'s account to the number of `proof` if its code is the one sent there.
/// Returns the number in E.164. Only the primary device may. Errors: `NotPrimary`,
/// `InvalidPhone`, `RateLimited`, `InvalidCode`, `NumberTaken` (another account has it),
/// `Store`.
pub async fn change(
    accounts: &Accounts,
    store: &dyn Store,
    router: &Router,
    caller: &DeviceRecord,
    proof: Proof<'_>,
) -> Result<String, AccountError> {
    if !caller.primary {
        return Err(AccountError::NotPrimary);
    }
    let user = caller.user_id;
    let old = store.user(user).await?.ok_or(AccountError::UnknownDevice)?.phone;
    let phone = accounts.check_code(proof.phone, proof.region, proof.code, proof.from).await?;
    accounts.check_code(&old, None, proof.old_code, proof.from).await?;
    if !store.change_phone(user, &phone).await? {
        return Err(AccountError::NumberTaken);
    }
    if old == phone {
        return Ok(phone);
    }
    // Who is told the new number: the user's own devices, and the 1:1 peers who had the
    // old one in their contacts (their contact lists get the new one instead), not
    // across a block. Nobody else learns a phone number from the server.
    let blocked: std::collections::HashSet<_> = store.blocks_of(user).await?.into_iter().chain(store.blockers_of(user).await?).collect();
    let mut told = vec![user];
    for id in store.conversations_of(user).await? {
        if let Some(record) = store.conversation(id).await?
            && record.kind == ConversationKind::Direct
            && let Some(peer) = record.members.iter().copied().find(|m| *m != user)
            && !blocked.contains(&peer)
            && !store.known_contacts(peer, vec![old.clone()]).await?.is_empty()
        {
            store.add_contacts(peer, vec![phone.clone()]).await?;
            store.remove_contacts(peer, vec![old.clone()]).await?;
            told.push(peer);
        }
    }
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::NumberChanged(pb::NumberChanged {
        user_id: id_bytes(user),
        phone: phone.clone(),
    })));
    router.deliver_to_users(&told, None, || SessionRequest::Push(frame.clone()));
    // Sessions cache their user's number for others' "my contacts" rules: reload them.
    crate::privacy::notify(router, &told, user);
    Ok(phone)
}
