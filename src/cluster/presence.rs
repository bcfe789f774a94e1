//! The cluster-wide directory and presence in Redis.
//!
//! Keys (all under the `sb:` prefix):
//!
//! - `sb:node:{name}`: this node is alive; a value with a TTL of three refresh periods,
//!   refreshed every second. The TTL heartbeat is per node, not per device: a node that
//!   dies takes all its devices offline when its key expires, and refreshing costs one
//!   command per node per second whatever the number of devices.
//! - `sb:devices:{user}`: hash device id → node name of every connected device. An entry
//!   whose node key has expired is stale and read as offline.
//! - `sb:seen:{user}`: last-seen time in ms, written when the user's last device leaves.
//! - `sb:nodedevices:{name}`: set of `user/device` entries this node wrote, so that after
//!   an outage (or a restart) it can remove the entries of devices that left meanwhile.
//! - `sb:nodeseen:{name}`: when the node last refreshed its key (ms since the epoch, no
//!   TTL): after a crash, the last moment its previous run is known to have been alive.
//!
//! A node's first rewrite after it starts also finds the devices its previous run held
//! when it ended (a crash, or a stop whose last updates were lost): their sessions ended
//! then, and the node hands them to the end-of-session path (`session_end`), with the
//! previous run's last refresh as their last seen.
//!
//! Nothing on the message path waits for Redis: updates go through a bounded queue to one
//! writer task, and reads (presence queries) fall back to the node's own view when Redis
//! does not answer. If Redis is unreachable the writer reports it (`switchboard_redis_up`,
//! /healthz), drops what it cannot write, and rewrites this node's whole directory once
//! Redis answers again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{DeviceId, UserId};

/// Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The URL is not a Redis URL.
    #[error("invalid redis url: {0}")]
    Url(String),
    /// The CA file for `rediss://` could not be read.
    #[error("redis tls ca {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// Redis did not answer or refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer in time")]
    Timeout,
}

/// One directory change of this node.
#[derive(Debug, Clone, Copy)]
pub struct DeviceChange {
    /// Whose device.
    pub user: UserId,
    /// Which device.
    pub device: DeviceId,
    /// Connected (true) or gone.
    pub online: bool,
    /// The user has no device left anywhere: record last seen.
    pub last_seen_ms: Option<u64>,
}

/// What Redis says of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// A device is connected to a live node.
    pub online: bool,
    /// Last seen (ms), if recorded.
    pub last_seen_ms: Option<u64>,
}

/// The state of the Redis connection, for /healthz.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RedisHealth {
    /// Answered the last probe.
    pub ok: bool,
    /// Round trip of the last probe.
    pub latency_ms: f64,
    /// Last error, if the last probe failed.
    pub error: Option<String>,
}

/// Called with the devices this node's previous run held when it ended, found in Redis by
/// the first rewrite, and that run's last refresh (ms since the epoch; 0 = unknown).
pub type PreviousRun = Arc<dyn Fn(Vec<(UserId, DeviceId)>, u64) + Send + Sync>;

/// What the first rewrite of this run needs to tell the previous run's devices apart.
struct FirstRewrite {
    /// Done: nothing more to track.
    done: AtomicBool,
    /// Entries this run wrote before its first rewrite (they are not the previous run's).
    written: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Called with the previous run's devices.
    previous_run: PreviousRun,
}

const QUEUE: usize = 65_536;
const REFRESH: Duration = Duration::from_secs(1);
const OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// Handle to the Redis directory of this node.
#[derive(Clone)]
pub struct RedisPresence {
    node: Arc<str>,
    conn: ConnectionManager,
    tx: mpsc::Sender<DeviceChange>,
    up: Arc<AtomicBool>,
    /// Set when changes were dropped (queue full, Redis down): rewrite everything.
    dirty: Arc<AtomicBool>,
    health: Arc<Mutex<RedisHealth>>,
    first: Arc<FirstRewrite>,
}

// Deletes a device's entry only if it still names this node: the device may have moved
// to another node, whose entry must stay. KEYS: devices hash, node set; ARGV: device,
// node, set member.
const HDEL_IF_MINE: &str = r#"
redis.call('SREM', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

fn devices_key(user: UserId) -> String {
    format!("sb:devices:{user}")
}

fn node_key(node: &str) -> String {
    format!("sb:node:{node}")
}

fn seen_key(user: UserId) -> String {
    format!("sb:seen:{user}")
}

/// The HDEL_IF_MINE script as a plain EVAL: small enough to send each time, and it needs
/// no SCRIPT LOAD (which a pipeline would not redo after a Redis restart).
fn hdel_if_mine(devices: &str, node_set: &str, device: &str, node: &str, member: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(HDEL_IF_MINE).arg(2).arg(devices).arg(node_set).arg(device).arg(node).arg(member);
    cmd
}

fn node_devices_key(node: &str) -> String {
    format!("sb:nodedevices:{node}")
}

fn node_seen_key(node: &str) -> String {
    format!("sb:nodeseen:{node}")
}

/// The devices among `stale` entries (`user/device`, left over in this node's set) that
/// its previous run held: those this run did not write itself.
fn previous_run_devices(stale: &[&String], written_by_this_run: &std::collections::HashSet<String>) -> Vec<(UserId, DeviceId)> {
    stale
        .iter()
        .filter(|m| !written_by_this_run.contains(**m))
        .filter_map(|m| {
            let (user, device) = m.split_once('/')?;
            Some((user.parse().ok()?, device.parse().ok()?))
        })
        .collect()
}

fn member(user: UserId, device: DeviceId) -> String {
    format!("{user}/{device}")
}

/// A Redis client for `url`: `redis://` in the clear, `rediss://` over TLS checked
/// against `tls_ca` (PEM) when given, else against the system's roots.
pub fn client(url: &str, tls_ca: Option<&std::path::Path>) -> Result<redis::Client, PresenceError> {
    // redis's rustls support asks rustls for its process-wide provider: make it ours
    // (aws-lc-rs), as a second provider compiled in would otherwise leave it ambiguous.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    match tls_ca {
        None => redis::Client::open(url).map_err(|e| PresenceError::Url(e.to_string())),
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(PresenceError::Url(format!("{url}: a redis tls ca is given, so the url must be rediss://")));
            }
            let root_cert = std::fs::read(path).map_err(|e| PresenceError::Ca { path: path.display().to_string(), message: e.to_string() })?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(url, certificates).map_err(|e| PresenceError::Url(e.to_string()))
        }
    }
}

impl RedisPresence {
    /// Connects lazily (a Redis that is down at start-up only makes presence degraded)
    /// and starts the writer and the refresher. `local_devices` lists this node's devices
    /// for a full rewrite after an outage; `previous_run` gets the devices of this node's
    /// previous run that the first rewrite finds.
    pub fn start(
        url: &str,
        tls_ca: Option<&std::path::Path>,
        node: Arc<str>,
        local_devices: Arc<dyn Fn() -> Vec<(UserId, DeviceId)> + Send + Sync>,
        previous_run: PreviousRun,
        stop: CancellationToken,
    ) -> Result<Self, PresenceError> {
        let client = client(url, tls_ca)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let presence = Self {
            node,
            conn,
            tx,
            up: Arc::new(AtomicBool::new(false)),
            dirty: Arc::new(AtomicBool::new(true)),
            health: Arc::new(Mutex::new(RedisHealth { ok: false, latency_ms: 0.0, error: Some("not probed yet".into()) })),
            first: Arc::new(FirstRewrite { done: AtomicBool::new(false), written: Default::default(), previous_run }),
        };
        tokio::spawn(presence.clone().write_loop(rx, stop.clone()));
        tokio::spawn(presence.clone().refresh_loop(local_devices, stop));
        Ok(presence)
    }

    /// Queues a change; never waits. A full queue marks the directory for a rewrite.
    pub fn changed(&self, change: DeviceChange) {
        if self.tx.try_send(change).is_err() {
            metrics::counter!("switchboard_redis_dropped_total").increment(1);
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// The last probe's result.
    pub async fn health(&self) -> RedisHealth {
        self.health.lock().await.clone()
    }

    /// True if the last probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Presence of `users` as Redis sees it (cluster-wide). A device is online if its node's
    /// key is alive in Redis and the caller does not hold that node `dead` (the membership's
    /// dead rule may fire before the key expires: the cluster then has one answer).
    pub async fn presence(&self, users: &[UserId], dead: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<Presence>, PresenceError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.hvals(devices_key(*user)).get(seen_key(*user));
        }
        let answers: Vec<(Vec<String>, Option<u64>)> =
            tokio::time::timeout(OP_TIMEOUT, pipe.query_async(&mut conn)).await.map_err(|_| PresenceError::Timeout)??;
        let mut nodes: Vec<String> = answers.iter().flat_map(|(n, _)| n.iter().cloned()).collect();
        nodes.sort();
        nodes.dedup();
        let alive: HashMap<String, bool> = if nodes.is_empty() {
            HashMap::new()
        } else {
            let keys: Vec<String> = nodes.iter().map(|n| node_key(n)).collect();
            let values: Vec<Option<String>> = tokio::time::timeout(OP_TIMEOUT, conn.mget(keys)).await.map_err(|_| PresenceError::Timeout)??;
            nodes.into_iter().zip(values).map(|(n, v)| (v.is_some() && !dead(&n), n)).map(|(alive, n)| (n, alive)).collect()
        };
        Ok(answers
            .into_iter()
            .map(|(devices_on, last_seen_ms)| Presence { online: devices_on.iter().any(|n| alive.get(n).copied().unwrap_or(false)), last_seen_ms })
            .collect())
    }

    /// Removes `node`'s alive key at once (the cluster declared it dead): whoever reads
    /// Redis sees its devices offline now rather than when the key expires. A node that
    /// was only partitioned away writes it again within a second.
    pub fn node_died(&self, node: &str) {
        let mut conn = self.conn.clone();
        let key = node_key(node);
        tokio::spawn(async move {
            let _: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(OP_TIMEOUT, conn.del(key)).await;
        });
    }

    async fn write_loop(self, mut rx: mpsc::Receiver<DeviceChange>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(1024);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv_many(&mut batch, 1024) => if n == 0 { return },
            }
            let mut pipe = redis::pipe();
            let mine = node_devices_key(&self.node);
            for change in batch.drain(..) {
                let key = devices_key(change.user);
                if change.online {
                    pipe.hset(&key, change.device.to_string(), self.node.as_ref()).ignore();
                    let entry = member(change.user, change.device);
                    if !self.first.done.load(Ordering::SeqCst) {
                        self.first.written.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.clone());
                    }
                    pipe.sadd(&mine, entry).ignore();
                } else {
                    pipe.add_command(hdel_if_mine(&key, &mine, &change.device.to_string(), &self.node, &member(change.user, change.device))).ignore();
                }
                if let Some(at) = change.last_seen_ms {
                    pipe.set(seen_key(change.user), at).ignore();
                }
            }
            let mut conn = self.conn.clone();
            let result: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(OP_TIMEOUT, pipe.query_async(&mut conn)).await;
            if !matches!(result, Ok(Ok(()))) {
                // Dropped: the full rewrite after the outage restores this node's entries.
                metrics::counter!("switchboard_redis_dropped_total").increment(1);
                self.dirty.store(true, Ordering::SeqCst);
            }
        }
    }

    async fn refresh_loop(self, local_devices: Arc<dyn Fn() -> Vec<(UserId, DeviceId)> + Send + Sync>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the previous run of this node last refreshed, read before this run's first
        // refresh overwrites it.
        let mut previous_seen: Option<u64> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let mut conn = self.conn.clone();
            if previous_seen.is_none()
                && let Ok(Ok(seen)) = tokio::time::timeout(OP_TIMEOUT, conn.get::<_, Option<u64>>(node_seen_key(&self.node))).await
            {
                previous_seen = Some(seen.unwrap_or(0));
            }
            let ttl_ms = (REFRESH * 3).as_millis() as u64;
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(node_key(&self.node)).arg(1).arg("PX").arg(ttl_ms).ignore();
            pipe.set(node_seen_key(&self.node), crate::store::now_ms()).ignore();
            let result: Result<Result<(), redis::RedisError>, _> =
                if previous_seen.is_some() { tokio::time::timeout(OP_TIMEOUT, pipe.query_async(&mut conn)).await } else { Ok(Ok(())) };
            let result = match (result, previous_seen) {
                // Not refreshed before the previous run's last refresh could be read.
                (Ok(Ok(())), None) => Ok(Err(redis::RedisError::from((redis::ErrorKind::Io, "redis did not answer")))),
                (result, _) => result,
            };
            let ok = matches!(result, Ok(Ok(())));
            let error = match &result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            let was_up = self.up.swap(ok, Ordering::SeqCst);
            if ok && !was_up {
                // Back (or up for the first time): Redis may have lost everything (a
                // restart without persistence, a failover), so this node rewrites its part.
                self.dirty.store(true, Ordering::SeqCst);
            }
            if ok != was_up {
                match &error {
                    None => tracing::info!("redis reachable"),
                    Some(e) => tracing::error!(error = %e, "redis unreachable; presence degraded, messages unaffected"),
                }
            }
            metrics::gauge!("switchboard_redis_up").set(if ok { 1.0 } else { 0.0 });
            metrics::histogram!("switchboard_redis_ping_seconds").record(started.elapsed().as_secs_f64());
            *self.health.lock().await = RedisHealth { ok, latency_ms: started.elapsed().as_secs_f64() * 1000.0, error };
            if ok
                && self.dirty.swap(false, Ordering::SeqCst)
                && let Err(e) = self.rewrite(&local_devices(), previous_seen.unwrap_or(0)).await
            {
                tracing::warn!(error = %e, "redis directory rewrite failed; retrying");
                self.dirty.store(true, Ordering::SeqCst);
            }
        }
        // Leaving: this node's devices go offline at once rather than after the TTL.
        let mut conn = self.conn.clone();
        let _: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(OP_TIMEOUT, conn.del(node_key(&self.node))).await;
    }

    /// Makes Redis hold exactly this node's devices (after an outage, dropped updates or a
    /// restart): entries this node wrote for devices that have left are removed, current
    /// ones written. The first rewrite of this run hands the previous run's devices (ended
    /// with it, last alive at `previous_seen_ms`) to the end-of-session path.
    async fn rewrite(&self, devices: &[(UserId, DeviceId)], previous_seen_ms: u64) -> Result<(), PresenceError> {
        let mine = node_devices_key(&self.node);
        let mut conn = self.conn.clone();
        let written: Vec<String> = tokio::time::timeout(OP_TIMEOUT, conn.smembers(&mine)).await.map_err(|_| PresenceError::Timeout)??;
        let current: std::collections::HashSet<String> = devices.iter().map(|(u, d)| member(*u, *d)).collect();
        let stale: Vec<&String> = written.iter().filter(|m| !current.contains(*m)).collect();
        if !self.first.done.load(Ordering::SeqCst) {
            let previous = {
                let by_this_run = self.first.written.lock().unwrap_or_else(|p| p.into_inner());
                previous_run_devices(&stale, &by_this_run)
            };
            if !previous.is_empty() {
                tracing::warn!(
                    devices = previous.len(),
                    previous_seen_ms,
                    "the previous run of this node ended holding devices; ending their sessions"
                );
                (self.first.previous_run)(previous, previous_seen_ms);
            }
        }
        for chunk in stale.chunks(1000) {
            let mut pipe = redis::pipe();
            for entry in chunk {
                let Some((user, device)) = entry.split_once('/') else { continue };
                pipe.add_command(hdel_if_mine(&format!("sb:devices:{user}"), &mine, device, &self.node, entry)).ignore();
            }
            tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await.map_err(|_| PresenceError::Timeout)??;
        }
        for chunk in devices.chunks(1000) {
            let mut pipe = redis::pipe();
            for (user, device) in chunk {
                pipe.hset(devices_key(*user), device.to_string(), self.node.as_ref()).ignore();
                pipe.sadd(&mine, member(*user, *device)).ignore();
            }
            tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await.map_err(|_| PresenceError::Timeout)??;
        }
        if !self.first.done.swap(true, Ordering::SeqCst) {
            self.first.written.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        tracing::info!(devices = devices.len(), stale = stale.len(), "redis directory rewritten");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_runs_devices_are_the_leftovers_this_run_did_not_write() {
        let (u1, d1, u2, d2) = (UserId::random(), DeviceId::random(), UserId::random(), DeviceId::random());
        let left_by_crash = member(u1, d1);
        let came_and_went = member(u2, d2);
        let garbage = "not/an-entry".to_owned();
        let stale = vec![&left_by_crash, &came_and_went, &garbage];
        let written = std::collections::HashSet::from([came_and_went.clone()]);
        assert_eq!(previous_run_devices(&stale, &written), vec![(u1, d1)]);
    }
}
