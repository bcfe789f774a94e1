//! An account's lifecycle after sign-up (WhatsApp's "Account" settings): changing its
//! phone number ([`number`]), deleting it ([`delete`]) and exporting its data
//! ([`export`]). "Log out all other devices" is `Accounts::revoke_others`. Shells over the
//! store, the router and the accounts service; served by `src/http/account.rs`.

pub mod delete;
pub mod export;
pub mod number;
