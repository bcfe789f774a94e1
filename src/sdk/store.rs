//! The SDK's local state on disk: an embedded redb file in which nothing is plaintext, not
//! even the names of the records.
//!
//! The user holds a 32-byte [`StoreKey`]. Two keys are derived from it with HKDF-Expand
//! (RFC 5869, SHA-256, one output block: `HMAC(key, label ‖ 0x01)`), one per purpose:
//! - the **index key** turns each record's name (a table and a logical key, e.g. an Olm
//!   peer's Curve25519 key) into the 32-byte redb key `HMAC-SHA256(index key, table ‖ 0 ‖
//!   name)`, so the file does not reveal whom the device talks to;
//! - the **sealing key** encrypts each record with AES-256-GCM (random 96-bit nonce;
//!   stored value = `nonce ‖ ciphertext ‖ tag`) over `len(name) (2 bytes BE) ‖ name ‖
//!   value`, with the table name and the redb key as associated data, so a record moved to
//!   another key or table, or altered by one bit, fails to open.
//!
//! A check record, written when the store is created, tells a wrong key
//! ([`StoreError::WrongKey`]) from a tampered record ([`StoreError::Tampered`]).
//! vodozemac pickles go in as records like any other (they are sealed here, not by
//! vodozemac's own pickle encryption, so that one rule covers every byte in the file).

use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Key, KeyInit, Nonce, Payload};
use hmac::{Hmac, Mac};
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::Sha256;

/// The user's key of a device's local state: 32 bytes the app keeps in the platform's
/// keychain (or derives from a passphrase).
#[derive(Clone)]
pub struct StoreKey(pub [u8; 32]);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

impl StoreKey {
    /// A fresh random key.
    pub fn random() -> Self {
        StoreKey(rand::rng().random())
    }
}

/// The tables of the SDK's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The Olm account pickle, this device's ids, the to-device position seen.
    Meta,
    /// Olm sessions, by peer Curve25519 key.
    OlmSessions,
    /// Inbound Megolm sessions, by sender key ‖ session id.
    InboundGroup,
    /// Outbound Megolm sessions and their rotation state, by conversation.
    OutboundGroup,
    /// Peers' device identity keys first seen (trust on first use), by user.
    PeerDevices,
    /// Messages that could not be decrypted yet, by conversation ‖ seq.
    Pending,
}

impl Table {
    const ALL: [Table; 6] = [Table::Meta, Table::OlmSessions, Table::InboundGroup, Table::OutboundGroup, Table::PeerDevices, Table::Pending];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::OlmSessions => "olm_sessions",
            Table::InboundGroup => "inbound_group",
            Table::OutboundGroup => "outbound_group",
            Table::PeerDevices => "peer_devices",
            Table::Pending => "pending",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Failures of the SDK's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened, read or written.
    #[error("sdk store: {0}")]
    Db(#[from] redb::Error),
    /// The key does not open this store (its check record does not decrypt).
    #[error("the key does not open this store (wrong key?)")]
    WrongKey,
    /// A record does not decrypt or authenticate with the store's key: altered on disk.
    #[error("record in table {table} was altered or does not belong here")]
    Tampered {
        /// Its table.
        table: &'static str,
    },
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

const CHECK_NAME: &[u8] = b"store-check";
const CHECK_VALUE: &[u8] = b"switchboard/sdk-store/v1";
const AAD_LABEL: &[u8] = b"switchboard/sdk-store/v1";
const NONCE_BYTES: usize = 12;

/// Records as read back: (name, value).
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// One change of a write batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a record.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove a record.
    Delete(Table, Vec<u8>),
}

/// The encrypted store of one device.
pub struct SecretStore {
    db: Database,
    sealing: Aes256Gcm,
    index: [u8; 32],
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStore")
    }
}

/// HKDF-Expand (RFC 5869) of one SHA-256 block: `HMAC(prk, info ‖ 0x01)`.
fn expand(prk: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(prk).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(info);
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

impl SecretStore {
    /// Opens (or creates) the store at `path` with `key`. A store created with another
    /// key is refused with [`StoreError::WrongKey`].
    pub fn open(path: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let sealing_key = expand(&key.0, b"switchboard/sdk-store/seal/v1");
        let store = SecretStore {
            db,
            sealing: Aes256Gcm::new(&Key::<Aes256Gcm>::from(sealing_key)),
            index: expand(&key.0, b"switchboard/sdk-store/index/v1"),
        };
        let txn = store.db.begin_write().map_err(dberr)?;
        for table in Table::ALL {
            txn.open_table(table.definition()).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        match store.get(Table::Meta, CHECK_NAME) {
            Ok(Some(v)) if v == CHECK_VALUE => Ok(store),
            Ok(Some(_)) | Err(StoreError::Tampered { .. }) => {
                // The check record exists but does not open: is anything readable at all?
                Err(StoreError::WrongKey)
            }
            Ok(None) => {
                if store.is_empty()? {
                    store.put(Table::Meta, CHECK_NAME, CHECK_VALUE)?;
                    Ok(store)
                } else {
                    // Records, but no check record under this key's index: another key.
                    Err(StoreError::WrongKey)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        for table in Table::ALL {
            if txn.open_table(table.definition()).map_err(dberr)?.iter().map_err(dberr)?.next().is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn slot(&self, table: Table, name: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.index).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(table.name().as_bytes());
        mac.update(&[0]);
        mac.update(name);
        mac.finalize().into_bytes().into()
    }

    fn aad(table: Table, slot: &[u8]) -> Vec<u8> {
        [AAD_LABEL, table.name().as_bytes(), &[0], slot].concat()
    }

    fn seal(&self, table: Table, slot: &[u8], name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(2 + name.len() + value.len());
        plain.extend_from_slice(&(name.len() as u16).to_be_bytes());
        plain.extend_from_slice(name);
        plain.extend_from_slice(value);
        let nonce: [u8; NONCE_BYTES] = rand::rng().random();
        let aad = Self::aad(table, slot);
        let sealed = self
            .sealing
            .encrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: &plain, aad: &aad })
            .unwrap_or_else(|_| unreachable!("records are far below GCM's limit"));
        [&nonce[..], &sealed].concat()
    }

    /// The name and value of a sealed record.
    fn open_record(&self, table: Table, slot: &[u8], sealed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let tampered = || StoreError::Tampered { table: table.name() };
        if sealed.len() < NONCE_BYTES {
            return Err(tampered());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| tampered())?;
        let aad = Self::aad(table, slot);
        let plain = self.sealing.decrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| tampered())?;
        let len = plain.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))).ok_or_else(tampered)?;
        let name = plain.get(2..2 + len).ok_or_else(tampered)?.to_vec();
        Ok((name, plain[2 + len..].to_vec()))
    }

    /// Sets one record.
    pub fn put(&self, table: Table, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(vec![Op::Put(table, name.to_vec(), value.to_vec())])
    }

    /// Applies every change in one transaction (all or nothing).
    pub fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        for op in ops {
            match op {
                Op::Put(table, name, value) => {
                    let slot = self.slot(table, &name);
                    let sealed = self.seal(table, &slot, &name, &value);
                    txn.open_table(table.definition()).map_err(dberr)?.insert(&slot[..], &sealed[..]).map_err(dberr)?;
                }
                Op::Delete(table, name) => {
                    let slot = self.slot(table, &name);
                    txn.open_table(table.definition()).map_err(dberr)?.remove(&slot[..]).map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)
    }

    /// One record's value.
    pub fn get(&self, table: Table, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let slot = self.slot(table, name);
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(table.definition()).map_err(dberr)?;
        let Some(sealed) = t.get(&slot[..]).map_err(dberr)? else { return Ok(None) };
        let (stored_name, value) = self.open_record(table, &slot, sealed.value())?;
        if stored_name != name {
            return Err(StoreError::Tampered { table: table.name() });
        }
        Ok(Some(value))
    }

    /// Every record of a table: (name, value), in no particular order.
    pub fn all(&self, table: Table) -> Result<Records, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(table.definition()).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (slot, sealed) = entry.map_err(dberr)?;
            out.push(self.open_record(table, slot.value(), sealed.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_nothing_is_plaintext_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdk.redb");
        let key = StoreKey::random();
        {
            let s = SecretStore::open(&path, &key).unwrap();
            s.put(Table::OlmSessions, b"peer-canary-name", b"pickle-canary-value").unwrap();
            s.write(vec![Op::Put(Table::Pending, b"a".to_vec(), b"1".to_vec()), Op::Put(Table::Pending, b"b".to_vec(), b"2".to_vec())]).unwrap();
            s.write(vec![Op::Delete(Table::Pending, b"a".to_vec())]).unwrap();
        }
        let s = SecretStore::open(&path, &key).unwrap();
        assert_eq!(s.get(Table::OlmSessions, b"peer-canary-name").unwrap().as_deref(), Some(&b"pickle-canary-value"[..]));
        assert_eq!(s.get(Table::InboundGroup, b"peer-canary-name").unwrap(), None, "tables are apart");
        assert_eq!(s.all(Table::Pending).unwrap(), vec![(b"b".to_vec(), b"2".to_vec())]);
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        for canary in [&b"canary"[..], CHECK_VALUE] {
            assert!(!raw.windows(canary.len()).any(|w| w == canary), "{} in the file", String::from_utf8_lossy(canary));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..proptest::prelude::ProptestConfig::default() })]

        /// Any record reads back as written, and any single flipped bit of its sealed
        /// bytes makes it `Tampered`, never another value.
        #[test]
        fn any_record_round_trips_and_any_flipped_bit_is_caught(
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            bit in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = SecretStore::open(&dir.path().join("sdk.redb"), &StoreKey::random()).unwrap();
            s.put(Table::OutboundGroup, &name, &value).unwrap();
            proptest::prop_assert_eq!(s.get(Table::OutboundGroup, &name).unwrap(), Some(value.clone()));
            let slot = s.slot(Table::OutboundGroup, &name);
            let txn = s.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(Table::OutboundGroup.definition()).unwrap();
                let mut sealed = t.get(&slot[..]).unwrap().unwrap().value().to_vec();
                let i = bit.index(sealed.len() * 8);
                sealed[i / 8] ^= 1 << (i % 8);
                t.insert(&slot[..], &sealed[..]).unwrap();
            }
            txn.commit().unwrap();
            let tampered = matches!(s.get(Table::OutboundGroup, &name), Err(StoreError::Tampered { .. }));
            proptest::prop_assert!(tampered, "a flipped bit was not caught");
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdk.redb");
        SecretStore::open(&path, &StoreKey::random()).unwrap().put(Table::Meta, b"x", b"y").unwrap();
        assert!(matches!(SecretStore::open(&path, &StoreKey::random()), Err(StoreError::WrongKey)));
    }

    #[test]
    fn an_altered_or_moved_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdk.redb");
        let key = StoreKey::random();
        let s = SecretStore::open(&path, &key).unwrap();
        s.put(Table::InboundGroup, b"session", &[7u8; 200]).unwrap();
        s.put(Table::InboundGroup, b"other", &[8u8; 200]).unwrap();
        // Flip one bit of the sealed value, through redb itself (as an attacker with the
        // file would).
        let slot = s.slot(Table::InboundGroup, b"session");
        let other = s.slot(Table::InboundGroup, b"other");
        let txn = s.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(Table::InboundGroup.definition()).unwrap();
            let mut sealed = t.get(&slot[..]).unwrap().unwrap().value().to_vec();
            let moved = t.get(&other[..]).unwrap().unwrap().value().to_vec();
            sealed[20] ^= 1;
            t.insert(&slot[..], &sealed[..]).unwrap();
            // And put one record's sealed bytes under another name.
            let spare = s.slot(Table::InboundGroup, b"spare");
            t.insert(&spare[..], &moved[..]).unwrap();
        }
        txn.commit().unwrap();
        assert!(matches!(s.get(Table::InboundGroup, b"session"), Err(StoreError::Tampered { table: "inbound_group" })));
        assert!(matches!(s.get(Table::InboundGroup, b"spare"), Err(StoreError::Tampered { .. })));
        assert!(matches!(s.all(Table::InboundGroup), Err(StoreError::Tampered { .. })));
        assert_eq!(s.get(Table::InboundGroup, b"other").unwrap(), Some(vec![8u8; 200]));
    }
}
