//! A cap on connections from one address that have not finished their handshake. A
//! connection costs its peer nothing until it says Hello, so an address may hold only
//! `max` connections that have not yet been answered (Welcome, or the refusal of their
//! Hello): beyond it a new connection is closed at once with `RATE_LIMITED`. Connections
//! past their handshake are not counted: each needs a device token, and a user's devices
//! are capped already. A load balancer in front of the nodes (every client seen from its
//! address) is listed as exempt, or the cap is set to 0 (off).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Handshakes in progress, by peer address.
#[derive(Debug)]
pub struct HandshakeGate {
    max: u32,
    exempt: Vec<IpAddr>,
    pending: Mutex<HashMap<IpAddr, u32>>,
}

/// One handshake in progress; the address's count goes down when it is dropped.
#[derive(Debug)]
pub struct PendingHandshake {
    gate: Arc<HandshakeGate>,
    address: IpAddr,
}

impl HandshakeGate {
    /// At most `max` handshakes in progress per address (0: no cap), none counted for
    /// the `exempt` addresses.
    pub fn new(max: u32, exempt: Vec<IpAddr>) -> Self {
        Self { max, exempt, pending: Mutex::new(HashMap::new()) }
    }

    /// Starts a handshake from `address`: `None` if the address already has `max` in
    /// progress (the connection must be refused), `Some(guard)` otherwise (`Some` with
    /// nothing counted for an exempt address or without a cap).
    pub fn enter(self: &Arc<Self>, address: IpAddr) -> Option<Option<PendingHandshake>> {
        // IPv4-mapped addresses as IPv4, IPv6 by /64 (`accounts::address_key`).
        let address = crate::accounts::address_key(address);
        if self.max == 0 || self.exempt.iter().any(|e| crate::accounts::address_key(*e) == address) {
            return Some(None);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let count = pending.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(PendingHandshake { gate: self.clone(), address }))
    }

    /// Handshakes in progress from `address` (counted as in [`Self::enter`]).
    pub fn pending(&self, address: IpAddr) -> u32 {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(&crate::accounts::address_key(address)).copied().unwrap_or(0)
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut pending = self.gate.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = pending.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_handshakes_and_a_finished_one_frees_its_place() {
        let gate = Arc::new(HandshakeGate::new(2, vec!["10.0.0.9".parse().expect("ip")]));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        let first = gate.enter(a).expect("room");
        let second = gate.enter(a).expect("room");
        assert!(gate.enter(a).is_none(), "a third handshake from the same address");
        assert!(gate.enter(b).expect("room").is_some(), "another address has its own count");
        drop(first);
        assert_eq!(gate.pending(a), 1);
        assert!(gate.enter(a).is_some(), "a finished handshake frees its place");
        drop(second);
        // Exempt addresses (a load balancer) and a gate without a cap count nothing.
        let lb: IpAddr = "10.0.0.9".parse().expect("ip");
        assert!((0..10).all(|_| matches!(gate.enter(lb), Some(None))));
        let open = Arc::new(HandshakeGate::new(0, Vec::new()));
        assert!((0..10).all(|_| matches!(open.enter(a), Some(None))));
    }
}
