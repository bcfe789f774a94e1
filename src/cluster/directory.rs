//! The replicated device directory: which devices are connected to which other node.
//!
//! Each node announces its devices' arrivals and departures to every peer (through the
//! routers, batched) and sends a full snapshot whenever a connection to a peer is
//! (re)established; a dead peer's entries are dropped. Deliveries consult this in-memory
//! copy, so the hot path never waits on a network round trip. Redis holds the same
//! directory for the whole cluster (see `presence`), for presence and for operators.
//!
//! Entries are keyed by (user, device, node): a device that moved from node A to node B
//! is briefly listed on both, and A's late "offline" removes only A's entry. A device
//! listed twice gets a delivery twice; its session drops the copy by seq.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::store::{DeviceId, UserId};

/// A user's devices on other nodes: (device, node).
type RemoteDevices = Vec<(DeviceId, Arc<str>)>;

/// Devices connected to other nodes.
#[derive(Default)]
pub struct RemoteDirectory {
    by_user: RwLock<HashMap<UserId, RemoteDevices>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers replace whole entries, so a poisoned lock still holds consistent data.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl RemoteDirectory {
    /// `node` says `device` of `user` connected (`online`) or left.
    pub fn update(&self, node: &Arc<str>, user: UserId, device: DeviceId, online: bool) {
        let mut map = write(&self.by_user);
        let entries = map.entry(user).or_default();
        entries.retain(|(d, n)| !(*d == device && n == node));
        if online {
            entries.push((device, node.clone()));
        }
        if entries.is_empty() {
            map.remove(&user);
        }
    }

    /// `node`'s full list of devices, replacing what was known of it. Returns the devices
    /// that were listed on `node` and are not any more: their sessions ended without this
    /// node hearing of it (an announcement lost with a broken connection).
    pub fn replace_node(&self, node: &Arc<str>, devices: impl IntoIterator<Item = (UserId, DeviceId)>) -> Vec<(UserId, DeviceId)> {
        let mut map = write(&self.by_user);
        let before = Self::remove_node(&mut map, node);
        let mut now = std::collections::HashSet::new();
        for (user, device) in devices {
            map.entry(user).or_default().push((device, node.clone()));
            now.insert((user, device));
        }
        before.into_iter().filter(|d| !now.contains(d)).collect()
    }

    /// Forgets every device of `node` (it died, or restarted) and returns them.
    pub fn drop_node(&self, node: &Arc<str>) -> Vec<(UserId, DeviceId)> {
        Self::remove_node(&mut write(&self.by_user), node)
    }

    fn remove_node(map: &mut HashMap<UserId, RemoteDevices>, node: &Arc<str>) -> Vec<(UserId, DeviceId)> {
        let mut removed = Vec::new();
        map.retain(|user, entries| {
            entries.retain(|(device, n)| {
                let mine = n == node;
                if mine {
                    removed.push((*user, *device));
                }
                !mine
            });
            !entries.is_empty()
        });
        removed
    }

    /// The nodes that have devices of `users` (other than `except`), each with the users
    /// it has.
    pub fn nodes_for(&self, users: &[UserId], except: Option<DeviceId>) -> Vec<(Arc<str>, Vec<UserId>)> {
        let map = read(&self.by_user);
        let mut out: Vec<(Arc<str>, Vec<UserId>)> = Vec::new();
        for user in users {
            let Some(entries) = map.get(user) else { continue };
            for (device, node) in entries {
                if Some(*device) == except {
                    continue;
                }
                match out.iter_mut().find(|(n, _)| n == node) {
                    Some((_, list)) => {
                        if list.last() != Some(user) {
                            list.push(*user);
                        }
                    }
                    None => out.push((node.clone(), vec![*user])),
                }
            }
        }
        out
    }

    /// The nodes `device` is connected to (usually one).
    pub fn nodes_of_device(&self, user: UserId, device: DeviceId) -> Vec<Arc<str>> {
        read(&self.by_user).get(&user).map(|e| e.iter().filter(|(d, _)| *d == device).map(|(_, n)| n.clone()).collect()).unwrap_or_default()
    }

    /// True if some device of `user` is connected to another node.
    pub fn has_user(&self, user: UserId) -> bool {
        read(&self.by_user).contains_key(&user)
    }

    /// Devices per node, for `admin cluster`.
    pub fn count_by_node(&self) -> HashMap<Arc<str>, usize> {
        let mut counts = HashMap::new();
        for entries in read(&self.by_user).values() {
            for (_, node) in entries {
                *counts.entry(node.clone()).or_default() += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};

    #[test]
    fn a_late_offline_from_the_old_node_keeps_the_device_on_its_new_node() {
        let dir = RemoteDirectory::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let (user, device) = (UserId::random(), DeviceId::random());
        dir.update(&a, user, device, true);
        dir.update(&b, user, device, true);
        dir.update(&a, user, device, false);
        assert_eq!(dir.nodes_of_device(user, device), vec![b.clone()]);
        assert!(dir.has_user(user));
    }

    #[test]
    fn fan_out_groups_users_by_node_and_skips_the_sending_device() {
        let dir = RemoteDirectory::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let users: Vec<UserId> = (0..4).map(|_| UserId::random()).collect();
        let sender_device = DeviceId::random();
        dir.update(&a, users[0], sender_device, true);
        dir.update(&a, users[1], DeviceId::random(), true);
        dir.update(&b, users[2], DeviceId::random(), true);
        dir.update(&b, users[2], DeviceId::random(), true);
        let mut nodes = dir.nodes_for(&users, Some(sender_device));
        nodes.sort();
        assert_eq!(nodes, vec![(a.clone(), vec![users[1]]), (b.clone(), vec![users[2]])]);
    }

    #[test]
    fn snapshots_replace_and_deaths_drop_a_node() {
        let dir = RemoteDirectory::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let (u1, u2) = (UserId::random(), UserId::random());
        dir.update(&a, u1, DeviceId::random(), true);
        dir.update(&b, u2, DeviceId::random(), true);
        let u2_on_a = DeviceId::random();
        let vanished = dir.replace_node(&a, [(u2, u2_on_a)]);
        assert!(!dir.has_user(u1));
        assert_eq!(vanished.len(), 1, "u1's device left a without a word");
        assert_eq!(vanished[0].0, u1);
        assert_eq!(dir.count_by_node().get(&a), Some(&1));
        // A device in both the old list and the snapshot did not end.
        assert!(dir.replace_node(&a, [(u2, u2_on_a)]).is_empty());
        let dropped = dir.drop_node(&b);
        assert_eq!(dropped.iter().map(|(u, _)| *u).collect::<Vec<_>>(), vec![u2]);
        assert_eq!(dir.count_by_node().get(&b), None);
        assert_eq!(dir.nodes_for(&[u2], None).len(), 1);
    }
}
