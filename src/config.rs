//! Server configuration: command-line flags, then `SWITCHBOARD_*` environment variables,
//! then an optional TOML file, then defaults that just work (embedded store in
//! `./switchboard-data`, loopback listeners). Resolved once into [`ServerConfig`] and
//! passed down explicitly; nothing reads the environment later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::accounts::AccountsConfig;
use crate::actors::ActorLimits;
use crate::transport::ConnectionConfig;

/// Why configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path given.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// Path given.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {0}")]
    Invalid(String),
    /// A secret's file could not be read or is empty.
    #[error("cannot read {setting} from {path}: {reason}")]
    SecretFile {
        /// Which setting (`cookie_file`, `admin_token_file`).
        setting: &'static str,
        /// Path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A secret given either as a value or as a file holding it, at each level of precedence
/// (flags and environment, then the TOML file): the first level that sets either wins;
/// setting both at one level is refused, as ambiguous.
fn secret(
    setting: &'static str,
    (value, file): (Option<&String>, Option<&PathBuf>),
    (file_value, file_file): (Option<&String>, Option<&PathBuf>),
) -> Result<Option<String>, ConfigError> {
    for (value, path) in [(value, file), (file_value, file_file)] {
        match (value, path) {
            (Some(_), Some(_)) => return Err(ConfigError::Invalid(format!("{setting}: give the value or {setting}_file, not both"))),
            (Some(v), None) => return Ok(Some(v.clone())),
            (None, Some(path)) => return read_secret(setting, path).map(Some),
            (None, None) => {}
        }
    }
    Ok(None)
}

/// The first line of a secret file, without surrounding whitespace.
fn read_secret(setting: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError::SecretFile { setting, path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let value = text.lines().next().unwrap_or_default().trim();
    if value.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(value.to_owned())
}

/// `switchboard serve` flags. Every flag also reads `SWITCHBOARD_<NAME>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store: `embedded:<dir>` (the default is `embedded:./switchboard-data`),
    /// `postgres://user:pass@host:port/db[?pool_size=N]` or
    /// `scylla://[user:pass@]host1,host2/keyspace` (shared by every node).
    #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// HTTP address: accounts API, WebSocket at /v1/ws, /healthz, /metrics.
    #[arg(long, env = "SWITCHBOARD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Raw TCP address (length-prefixed frames).
    #[arg(long, env = "SWITCHBOARD_TCP_LISTEN")]
    pub tcp_listen: Option<SocketAddr>,
    /// Admin address (/admin/tree), separate so it can stay private.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for the client listeners: with `--tls-key`, the raw TCP and
    /// the HTTP/WebSocket listeners serve only TLS (`wss://`, TLS-over-TCP). Reloaded on
    /// SIGHUP and when the files change.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Seconds between checks of the certificate files for changes (default 10).
    #[arg(long, env = "SWITCHBOARD_TLS_RELOAD_SECS")]
    pub tls_reload_secs: Option<u64>,
    /// Bearer token for the admin API; generated and written to `<data>/admin-token` if unset.
    /// Prefer `--admin-token-file` or the environment: a flag's value shows in `ps`.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (its first line), instead of `--admin-token`.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Where one-time codes go: `log` (development) or `webhook:<url>` (SMS gateway).
    #[arg(long, env = "SWITCHBOARD_CODE_SENDER")]
    pub code_sender: Option<String>,
    /// Development mode: registration responses include the one-time code.
    #[arg(long, env = "SWITCHBOARD_DEV_EXPOSE_CODES")]
    pub dev_expose_codes: Option<bool>,
    /// How long a device-pairing code can be approved and claimed, in seconds (1 to 3600;
    /// default 120).
    #[arg(long, env = "SWITCHBOARD_PAIRING_TTL_SECS")]
    pub pairing_ttl_secs: Option<u64>,
    /// Seconds between two sign-up codes for one phone number (default 30; 0 = none; at
    /// most a day).
    #[arg(long, env = "SWITCHBOARD_CODE_COOLDOWN_SECS")]
    pub code_cooldown_secs: Option<u64>,
    /// Sign-up codes one phone number may be sent per day (default 10; 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_CODES_PER_NUMBER_PER_DAY")]
    pub codes_per_number_per_day: Option<u32>,
    /// Code verification attempts per phone number per hour, across all its codes
    /// (default 10; 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_GUESSES_PER_NUMBER_PER_HOUR")]
    pub guesses_per_number_per_hour: Option<u32>,
    /// Registrations per client address per hour (default 100; 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR")]
    pub registrations_per_address_per_hour: Option<u32>,
    /// Code verifications per client address per hour (default 300; 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_VERIFICATIONS_PER_ADDRESS_PER_HOUR")]
    pub verifications_per_address_per_hour: Option<u32>,
    /// Phone numbers new to an account that contact discovery looks up per day (default
    /// 2000; re-checks of numbers already in the account's contacts are free; 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_DISCOVERY_NEW_NUMBERS_PER_DAY")]
    pub discovery_new_numbers_per_day: Option<u32>,
    /// Development and tests: the clock of Status (posts' times, their 24-hour expiry,
    /// the posting budget) runs this many milliseconds ahead of the system clock (default
    /// 0; at most 30 days), so a test restarts a server a day later without waiting a day.
    #[arg(long, env = "SWITCHBOARD_DEV_STATUS_CLOCK_OFFSET_MS")]
    pub dev_status_clock_offset_ms: Option<u64>,
    /// After binding, write the bound addresses as JSON to this file (for tests and tooling).
    #[arg(long, env = "SWITCHBOARD_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// Accept backlog of every listener (connections whose handshake completed, not yet
    /// accepted); the kernel caps it at net.core.somaxconn. Default 4096.
    #[arg(long, env = "SWITCHBOARD_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Runtime worker threads (default: the cores this process may use).
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Most threads for blocking calls on the main runtime; default 16. (The store writer
    /// has a thread of its own; HTTP/WebSocket work runs on actix's workers.)
    #[arg(long, env = "SWITCHBOARD_BLOCKING_THREADS")]
    pub blocking_threads: Option<usize>,
    /// Largest frame in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest message payload in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Heartbeat interval in seconds (idle connections close after three).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u64>,
    /// Frames queued towards one device before it is disconnected as slow.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Connections from one address that may be in their handshake (not yet answered
    /// Welcome) at once; beyond it new ones are refused with RATE_LIMITED (default 64,
    /// 0 = no cap).
    #[arg(long, env = "SWITCHBOARD_MAX_HANDSHAKES_PER_ADDRESS")]
    pub max_handshakes_per_address: Option<u32>,
    /// Addresses the per-address limits do not apply to (the handshake cap, sign-up
    /// limits), comma-separated: load balancers and proxies in front of the node, which
    /// many clients are seen from.
    #[arg(long, env = "SWITCHBOARD_ADDRESS_LIMITS_EXEMPT", value_delimiter = ',')]
    pub address_limits_exempt: Option<Vec<std::net::IpAddr>>,
    /// Seconds a device's full outbound queue may stay full before it is disconnected as slow.
    #[arg(long, env = "SWITCHBOARD_SLOW_CONSUMER_SECS")]
    pub slow_consumer_secs: Option<u64>,
    /// Frames per second one device may send (sustained), over all its connections.
    #[arg(long, env = "SWITCHBOARD_RATE_PER_SEC")]
    pub rate_per_sec: Option<u32>,
    /// Burst above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Sustained frames per second all devices of one user may send together (default:
    /// twice --rate-per-sec).
    #[arg(long, env = "SWITCHBOARD_USER_RATE_PER_SEC")]
    pub user_rate_per_sec: Option<u32>,
    /// Burst of all devices of one user together (default: twice --rate-burst).
    #[arg(long, env = "SWITCHBOARD_USER_RATE_BURST")]
    pub user_rate_burst: Option<u32>,
    /// Seconds between sweeps that delete expired disappearing messages.
    #[arg(long, env = "SWITCHBOARD_PURGE_INTERVAL_SECS")]
    pub purge_interval_secs: Option<u64>,
    /// Seconds between returns of freed heap memory to the OS (glibc `malloc_trim`;
    /// default 10, 0: never).
    #[arg(long, env = "SWITCHBOARD_MALLOC_TRIM_SECS")]
    pub malloc_trim_secs: Option<u64>,
    /// Where push notifications go: `log` (development) or `webhook:<url>` (POST JSON to a
    /// gateway in front of FCM/APNs).
    #[arg(long, env = "SWITCHBOARD_PUSH_SINK")]
    pub push_sink: Option<String>,
    /// Window in milliseconds over which pushes to one device and conversation coalesce.
    #[arg(long, env = "SWITCHBOARD_PUSH_COALESCE_MS")]
    pub push_coalesce_ms: Option<u64>,
    /// First retry delay of a failed push, in milliseconds; doubles each attempt (default 500).
    #[arg(long, env = "SWITCHBOARD_PUSH_RETRY_BACKOFF_MS")]
    pub push_retry_backoff_ms: Option<u64>,
    /// Largest group, in members.
    #[arg(long, env = "SWITCHBOARD_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    /// Most ops the store writer commits in one transaction (16 to 65536; default 2048).
    /// Larger batches cost less per op under load (a B-tree page dirtied by several ops is
    /// copied and checksummed once) and make each commit, and so each wait behind one,
    /// longer.
    #[arg(long, env = "SWITCHBOARD_MAX_WRITE_BATCH")]
    pub max_write_batch: Option<usize>,
    /// Milliseconds a write nobody waits for (a device's cursor moves, a user's last-seen
    /// time) may wait to ride in another write's commit before it is committed alone (0
    /// to 1000; default 10; 0: at once). Each commit has a fixed cost (on the embedded
    /// store an fsync), and at low rates these writes were half the commits. Reads that
    /// need them (a reconnecting device's catch-up, message info, history's ticks, the
    /// conversation list) wait for them first.
    #[arg(long, env = "SWITCHBOARD_WRITE_DEFER_MS")]
    pub write_defer_ms: Option<u64>,
    /// Of a conversation a device never acknowledged anything of (a new or reinstalled
    /// device), catch-up starts at the newest this many log entries (0 to 100000; default
    /// 20), or earlier to include all sent since the device was created; older ones are
    /// read through history.
    #[arg(long, env = "SWITCHBOARD_CATCH_UP_RECENT")]
    pub catch_up_recent: Option<usize>,
    /// How far before the time it was read a conversation-list page's version is set, in
    /// milliseconds (100 to 600000; default 10000): longer than a commit takes and than
    /// the clocks of the cluster's nodes differ.
    #[arg(long, env = "SWITCHBOARD_INBOX_VERSION_MARGIN_MS")]
    pub inbox_version_margin_ms: Option<u64>,
    /// Unacknowledged to-device messages a device's queue may hold (1 to 1000000; default
    /// 10000); a send that would pass it is refused with QUEUE_FULL.
    #[arg(long, env = "SWITCHBOARD_TO_DEVICE_QUEUE")]
    pub to_device_queue: Option<u64>,
    /// Unacknowledged to-device messages one other user may have in a device's queue (1
    /// to the queue's bound; default 1000): a send that would pass it is refused with
    /// QUEUE_FULL, so a stranger in a 1:1 cannot fill the queue for everybody.
    #[arg(long, env = "SWITCHBOARD_TO_DEVICE_QUEUE_PER_SENDER")]
    pub to_device_queue_per_sender: Option<u64>,
    /// To-device messages sent to a device ahead of its acknowledgements (1 to 10000;
    /// default 256): the rest follow as it acknowledges.
    #[arg(long, env = "SWITCHBOARD_TO_DEVICE_WINDOW")]
    pub to_device_window: Option<u64>,
    /// Seconds without traffic before a conversation actor is passivated.
    #[arg(long, env = "SWITCHBOARD_CONVERSATION_IDLE_SECS")]
    pub conversation_idle_secs: Option<u64>,
    /// Seconds allowed for graceful shutdown.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// This node's name in the cluster (unique, stable across restarts). Setting it, or
    /// `--cluster-listen`, turns clustering on; a shared store is then required.
    #[arg(long, env = "SWITCHBOARD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Address of the node-to-node listener (ractor_cluster).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Address peers should connect to, if not `cluster_listen` (NAT, containers).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Peers to join through, `host:port,host:port` (any live member will do; the rest of
    /// the cluster is learned from it).
    #[arg(long, env = "SWITCHBOARD_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Shared secret every node of the cluster must present (not the admin token: nodes
    /// and operators hold different secrets). Prefer `--cookie-file` or the environment: a
    /// flag's value shows in `ps`.
    #[arg(long, env = "SWITCHBOARD_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,
    /// File holding the cluster cookie (its first line), instead of `--cookie`.
    #[arg(long, env = "SWITCHBOARD_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Milliseconds between node heartbeats.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_HEARTBEAT_MS")]
    pub cluster_heartbeat_ms: Option<u64>,
    /// Milliseconds of silence after which a peer is declared dead.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_DEAD_AFTER_MS")]
    pub cluster_dead_after_ms: Option<u64>,
    /// Seconds over which a draining node spreads its devices' reconnects.
    #[arg(long, env = "SWITCHBOARD_DRAIN_SPREAD_SECS")]
    pub drain_spread_secs: Option<u64>,
    /// Redis for the cluster-wide directory and presence: `redis://host:port[/db]`, or
    /// `rediss://host:port[/db]` for TLS.
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    pub redis: Option<String>,
    /// CA certificate(s) (PEM) that sign the Redis server's certificate, for `rediss://`
    /// (without it, the system's roots).
    #[arg(long, env = "SWITCHBOARD_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM) for node-to-node TLS. With the key and the CA,
    /// every cluster connection is mutual TLS: peers must present a certificate signed by
    /// the CA and valid for the address they are reached at.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that sign every node's certificate.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Blob store of media: `fs:<dir>` (default `fs:<data>/media`) or
    /// `s3://bucket[/prefix]?endpoint=http://host:port&region=…` (shared by every node;
    /// credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or the URL).
    #[arg(long, env = "SWITCHBOARD_MEDIA_STORE")]
    pub media_store: Option<String>,
    /// Largest upload in bytes (default 100 MiB).
    #[arg(long, env = "SWITCHBOARD_MEDIA_MAX_UPLOAD_BYTES")]
    pub media_max_upload_bytes: Option<u64>,
    /// Bytes of media one user may store (default 2 GiB).
    #[arg(long, env = "SWITCHBOARD_MEDIA_QUOTA_BYTES")]
    pub media_quota_bytes: Option<u64>,
    /// Uploads one user may start per minute, across the cluster (default 60).
    #[arg(long, env = "SWITCHBOARD_MEDIA_UPLOADS_PER_MINUTE")]
    pub media_uploads_per_minute: Option<u32>,
    /// Seconds an upload may stay incomplete before it is deleted (default 86400).
    #[arg(long, env = "SWITCHBOARD_MEDIA_UPLOAD_TTL_SECS")]
    pub media_upload_ttl_secs: Option<u64>,
    /// Seconds an unreferenced attachment is kept before deletion (default 86400).
    #[arg(long, env = "SWITCHBOARD_MEDIA_GRACE_SECS")]
    pub media_grace_secs: Option<u64>,
    /// Seconds between media sweeps (default 600).
    #[arg(long, env = "SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECS")]
    pub media_sweep_interval_secs: Option<u64>,
    /// Key of signed download URLs (the same on every node and CDN); generated into
    /// `<data>/media-url-key` if unset.
    #[arg(long, env = "SWITCHBOARD_MEDIA_URL_KEY")]
    pub media_url_key: Option<String>,
    /// Seconds a signed download URL is valid (default 300).
    #[arg(long, env = "SWITCHBOARD_MEDIA_URL_TTL_SECS")]
    pub media_url_ttl_secs: Option<u64>,
}

/// The same settings in a TOML file (snake_case keys, all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    store: Option<String>,
    http_listen: Option<SocketAddr>,
    tcp_listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_reload_secs: Option<u64>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    code_sender: Option<String>,
    dev_expose_codes: Option<bool>,
    pairing_ttl_secs: Option<u64>,
    code_cooldown_secs: Option<u64>,
    codes_per_number_per_day: Option<u32>,
    guesses_per_number_per_hour: Option<u32>,
    registrations_per_address_per_hour: Option<u32>,
    verifications_per_address_per_hour: Option<u32>,
    discovery_new_numbers_per_day: Option<u32>,
    dev_status_clock_offset_ms: Option<u64>,
    ready_file: Option<PathBuf>,
    listen_backlog: Option<u32>,
    worker_threads: Option<usize>,
    blocking_threads: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_payload_bytes: Option<usize>,
    heartbeat_secs: Option<u64>,
    outbound_queue: Option<usize>,
    max_handshakes_per_address: Option<u32>,
    address_limits_exempt: Option<Vec<std::net::IpAddr>>,
    slow_consumer_secs: Option<u64>,
    rate_per_sec: Option<u32>,
    rate_burst: Option<u32>,
    user_rate_per_sec: Option<u32>,
    user_rate_burst: Option<u32>,
    conversation_idle_secs: Option<u64>,
    max_group_members: Option<usize>,
    max_write_batch: Option<usize>,
    write_defer_ms: Option<u64>,
    catch_up_recent: Option<usize>,
    inbox_version_margin_ms: Option<u64>,
    to_device_queue: Option<u64>,
    to_device_queue_per_sender: Option<u64>,
    to_device_window: Option<u64>,
    purge_interval_secs: Option<u64>,
    malloc_trim_secs: Option<u64>,
    push_sink: Option<String>,
    push_coalesce_ms: Option<u64>,
    push_retry_backoff_ms: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    node_name: Option<String>,
    cluster_listen: Option<SocketAddr>,
    cluster_advertise: Option<String>,
    seeds: Option<Vec<String>>,
    cookie: Option<String>,
    cookie_file: Option<PathBuf>,
    cluster_heartbeat_ms: Option<u64>,
    cluster_dead_after_ms: Option<u64>,
    drain_spread_secs: Option<u64>,
    redis: Option<String>,
    redis_tls_ca: Option<PathBuf>,
    cluster_tls_cert: Option<PathBuf>,
    cluster_tls_key: Option<PathBuf>,
    cluster_tls_ca: Option<PathBuf>,
    media_store: Option<String>,
    media_max_upload_bytes: Option<u64>,
    media_quota_bytes: Option<u64>,
    media_uploads_per_minute: Option<u32>,
    media_upload_ttl_secs: Option<u64>,
    media_grace_secs: Option<u64>,
    media_sweep_interval_secs: Option<u64>,
    media_url_key: Option<String>,
    media_url_ttl_secs: Option<u64>,
}

/// The files of node-to-node TLS.
#[derive(Debug, Clone)]
pub struct ClusterTlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM).
    pub ca: PathBuf,
}

/// Cluster settings (present when clustering is on).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name.
    pub node_name: String,
    /// Node-to-node listener.
    pub listen: SocketAddr,
    /// Address peers connect to.
    pub advertise: String,
    /// Peers to join through.
    pub seeds: Vec<String>,
    /// Shared secret.
    pub cookie: String,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Silence after which a peer is dead.
    pub dead_after: Duration,
    /// Period over which a drain spreads reconnects.
    pub drain_spread: Duration,
    /// Redis URL, if any (`rediss://` for TLS).
    pub redis: Option<String>,
    /// CA for a `rediss://` Redis, if not the system's roots.
    pub redis_tls_ca: Option<PathBuf>,
    /// Node-to-node TLS, if configured.
    pub tls: Option<ClusterTlsFiles>,
}

pub use crate::store::StoreSpec;

/// Where push notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushSinkSpec {
    /// Log them (development).
    Log,
    /// POST them to a gateway.
    Webhook(String),
}

/// Where one-time codes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSenderSpec {
    /// Log them (development).
    Log,
    /// POST them to a gateway.
    Webhook(String),
}

/// The main tokio runtime's threads: few, near the number of cores, and a bounded pool for
/// blocking calls instead of tokio's default of up to 512 threads. (actix's HTTP/WebSocket
/// workers have runtimes of their own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Threads of the main runtime: the node's actors, TCP connections and their
    /// sessions. (The HTTP/WebSocket listener runs on actix's own worker runtimes.)
    pub worker_threads: usize,
    /// Most threads for blocking calls on the main runtime (tokio's
    /// `max_blocking_threads`).
    pub blocking_threads: usize,
}

/// Fully resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Store.
    pub store: StoreSpec,
    /// HTTP + WebSocket listener.
    pub http_listen: SocketAddr,
    /// TCP listener.
    pub tcp_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// TLS of the TCP and HTTP/WebSocket listeners, if configured.
    pub tls: Option<crate::transport::tls::ClientTlsFiles>,
    /// Admin token, if configured (else generated at start).
    pub admin_token: Option<String>,
    /// Code sender.
    pub code_sender: CodeSenderSpec,
    /// Accounts rules.
    pub accounts: AccountsConfig,
    /// Contact discovery's budget.
    pub contacts: crate::contacts::ContactsConfig,
    /// Status settings (its clock).
    pub status: crate::status::StatusConfig,
    /// Connection limits.
    pub connection: ConnectionConfig,
    /// Actor limits.
    pub actors: ActorLimits,
    /// Ready file.
    pub ready_file: Option<PathBuf>,
    /// Accept backlog of every listener.
    pub listen_backlog: u32,
    /// The tokio runtime's threads.
    pub runtime: RuntimeConfig,
    /// Graceful shutdown budget.
    pub shutdown_grace: Duration,
    /// Interval of the expired-message sweep.
    pub purge_interval: Duration,
    /// Interval between returns of freed heap memory to the OS (zero: never).
    pub malloc_trim: Duration,
    /// Push sink.
    pub push_sink: PushSinkSpec,
    /// Push timing.
    pub push: crate::actors::push::PushConfig,
    /// Cluster membership, if this node is part of one.
    pub cluster: Option<ClusterConfig>,
    /// Media limits and blob store (an empty `url_key` is generated at start).
    pub media: crate::media::MediaConfig,
}

impl ServerConfig {
    /// Resolves flags/environment over the file over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let store = StoreSpec::parse(&args.store.clone().or(file.store.clone()).unwrap_or_else(|| "embedded:./switchboard-data".into()))
            .map_err(ConfigError::Invalid)?;
        let cluster = Self::resolve_cluster(&args, &file, &store)?;
        let media = Self::resolve_media(&args, &file, &store)?;
        let code_sender = match args.code_sender.or(file.code_sender).as_deref() {
            None | Some("log") => CodeSenderSpec::Log,
            Some(s) => match s.strip_prefix("webhook:") {
                Some(url) if url.starts_with("http") => CodeSenderSpec::Webhook(url.to_owned()),
                _ => return Err(ConfigError::Invalid(format!("code_sender {s:?}: expected log or webhook:<url>"))),
            },
        };
        let push_sink = match args.push_sink.or(file.push_sink).as_deref() {
            None | Some("log") => PushSinkSpec::Log,
            Some(s) => match s.strip_prefix("webhook:") {
                Some(url) if url.starts_with("http") => PushSinkSpec::Webhook(url.to_owned()),
                _ => return Err(ConfigError::Invalid(format!("push_sink {s:?}: expected log or webhook:<url>"))),
            },
        };
        let mut push = crate::actors::push::PushConfig::default();
        if let Some(ms) = args.push_coalesce_ms.or(file.push_coalesce_ms) {
            push.coalesce = Duration::from_millis(ms.max(10));
        }
        if let Some(ms) = args.push_retry_backoff_ms.or(file.push_retry_backoff_ms) {
            push.backoff = Duration::from_millis(ms.max(10));
        }
        let mut connection = ConnectionConfig::default();
        let mut actors = ActorLimits::default();
        if let Some(v) = args.max_frame_bytes.or(file.max_frame_bytes) {
            if !(1024..=16 * 1024 * 1024).contains(&v) {
                return Err(ConfigError::Invalid("max_frame_bytes must be 1 KiB to 16 MiB".into()));
            }
            connection.max_frame = v;
        }
        if let Some(v) = args.max_payload_bytes.or(file.max_payload_bytes) {
            actors.max_payload = v;
        }
        if actors.max_payload + 1024 > connection.max_frame {
            return Err(ConfigError::Invalid("max_payload_bytes must be at least 1 KiB below max_frame_bytes".into()));
        }
        if let Some(v) = args.heartbeat_secs.or(file.heartbeat_secs) {
            connection.heartbeat = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.outbound_queue.or(file.outbound_queue) {
            connection.outbound_queue = v.max(16);
        }
        if let Some(v) = args.max_handshakes_per_address.or(file.max_handshakes_per_address) {
            connection.max_handshakes_per_address = v;
        }
        let address_limits_exempt = args.address_limits_exempt.or(file.address_limits_exempt).unwrap_or_default();
        connection.handshake_cap_exempt = address_limits_exempt.clone();
        if let Some(v) = args.slow_consumer_secs.or(file.slow_consumer_secs) {
            actors.slow_consumer_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.rate_per_sec.or(file.rate_per_sec) {
            connection.rate_per_sec = v.max(1);
        }
        if let Some(v) = args.rate_burst.or(file.rate_burst) {
            connection.rate_burst = v.max(1);
        }
        // A user's devices together: twice one device's budget unless set.
        connection.user_rate_per_sec = args.user_rate_per_sec.or(file.user_rate_per_sec).unwrap_or(connection.rate_per_sec.saturating_mul(2)).max(1);
        connection.user_rate_burst = args.user_rate_burst.or(file.user_rate_burst).unwrap_or(connection.rate_burst.saturating_mul(2)).max(1);
        if let Some(v) = args.conversation_idle_secs.or(file.conversation_idle_secs) {
            actors.conversation_idle = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.max_group_members.or(file.max_group_members) {
            if !(2..=100_000).contains(&v) {
                return Err(ConfigError::Invalid("max_group_members must be 2 to 100000".into()));
            }
            actors.max_group_members = v;
        }
        if let Some(v) = args.max_write_batch.or(file.max_write_batch) {
            if !(16..=65_536).contains(&v) {
                return Err(ConfigError::Invalid("max_write_batch must be 16 to 65536".into()));
            }
            actors.max_write_batch = v;
        }
        if let Some(v) = args.write_defer_ms.or(file.write_defer_ms) {
            if v > 1000 {
                return Err(ConfigError::Invalid("write_defer_ms must be 0 to 1000".into()));
            }
            actors.write_defer = Duration::from_millis(v);
        }
        if let Some(v) = args.catch_up_recent.or(file.catch_up_recent) {
            if v > 100_000 {
                return Err(ConfigError::Invalid("catch_up_recent must be 0 to 100000".into()));
            }
            actors.catch_up_recent = v;
        }
        if let Some(v) = args.inbox_version_margin_ms.or(file.inbox_version_margin_ms) {
            if !(100..=600_000).contains(&v) {
                return Err(ConfigError::Invalid("inbox_version_margin_ms must be 100 to 600000".into()));
            }
            actors.inbox_version_margin_ms = v;
        }
        if let Some(v) = args.to_device_queue.or(file.to_device_queue) {
            if !(1..=1_000_000).contains(&v) {
                return Err(ConfigError::Invalid("to_device_queue must be 1 to 1000000".into()));
            }
            actors.to_device.max_queued = v;
        }
        if let Some(v) = args.to_device_queue_per_sender.or(file.to_device_queue_per_sender) {
            if !(1..=actors.to_device.max_queued).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "to_device_queue_per_sender must be 1 to to_device_queue ({})",
                    actors.to_device.max_queued
                )));
            }
            actors.to_device.max_queued_per_sender = v;
        } else {
            // A tenth of the queue unless set (the default keeps that ratio too).
            actors.to_device.max_queued_per_sender = (actors.to_device.max_queued / 10).max(1);
        }
        if let Some(v) = args.to_device_window.or(file.to_device_window) {
            if !(1..=10_000).contains(&v) {
                return Err(ConfigError::Invalid("to_device_window must be 1 to 10000".into()));
            }
            actors.to_device.window = v;
        }
        let admin_token = secret(
            "admin_token",
            (args.admin_token.as_ref(), args.admin_token_file.as_ref()),
            (file.admin_token.as_ref(), file.admin_token_file.as_ref()),
        )?;
        let tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(crate::transport::tls::ClientTlsFiles {
                cert,
                key,
                poll: Duration::from_secs(args.tls_reload_secs.or(file.tls_reload_secs).unwrap_or(10).max(1)),
            }),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls needs both tls_cert and tls_key".into())),
        };
        let mut accounts = AccountsConfig { expose_codes: args.dev_expose_codes.or(file.dev_expose_codes).unwrap_or(false), ..Default::default() };
        if let Some(v) = args.pairing_ttl_secs.or(file.pairing_ttl_secs) {
            if !(1..=3600).contains(&v) {
                return Err(ConfigError::Invalid("pairing_ttl_secs must be 1 to 3600".into()));
            }
            accounts.pairing_ttl = Duration::from_secs(v);
        }
        let signup = &mut accounts.signup;
        if let Some(v) = args.code_cooldown_secs.or(file.code_cooldown_secs) {
            // Rate buckets hold periods of a day at most (store::RATE_BUCKET_IDLE_MS).
            signup.code_cooldown = Duration::from_secs(v.min(86_400));
        }
        if let Some(v) = args.codes_per_number_per_day.or(file.codes_per_number_per_day) {
            signup.codes_per_number_per_day = v;
        }
        if let Some(v) = args.guesses_per_number_per_hour.or(file.guesses_per_number_per_hour) {
            signup.guesses_per_number_per_hour = v;
        }
        if let Some(v) = args.registrations_per_address_per_hour.or(file.registrations_per_address_per_hour) {
            signup.registrations_per_address_per_hour = v;
        }
        if let Some(v) = args.verifications_per_address_per_hour.or(file.verifications_per_address_per_hour) {
            signup.verifications_per_address_per_hour = v;
        }
        signup.exempt = address_limits_exempt;
        let mut contacts = crate::contacts::ContactsConfig::default();
        if let Some(v) = args.discovery_new_numbers_per_day.or(file.discovery_new_numbers_per_day) {
            contacts.new_numbers_per_day = v;
        }
        let clock_offset_ms = args.dev_status_clock_offset_ms.or(file.dev_status_clock_offset_ms).unwrap_or(0);
        if clock_offset_ms > 30 * 86_400_000 {
            return Err(ConfigError::Invalid("dev_status_clock_offset_ms must be 0 to 2592000000 (30 days)".into()));
        }
        let status = crate::status::StatusConfig { clock_offset_ms };
        Ok(Self {
            store,
            http_listen: args.http_listen.or(file.http_listen).unwrap_or(([127, 0, 0, 1], 8080).into()),
            tcp_listen: args.tcp_listen.or(file.tcp_listen).unwrap_or(([127, 0, 0, 1], 8081).into()),
            admin_listen: args.admin_listen.or(file.admin_listen).unwrap_or(([127, 0, 0, 1], 8082).into()),
            tls,
            admin_token,
            code_sender,
            accounts,
            contacts,
            status,
            connection,
            actors,
            ready_file: args.ready_file.or(file.ready_file),
            listen_backlog: args.listen_backlog.or(file.listen_backlog).unwrap_or(4096).max(1),
            runtime: RuntimeConfig {
                worker_threads: args
                    .worker_threads
                    .or(file.worker_threads)
                    .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(2))
                    .max(1),
                blocking_threads: args.blocking_threads.or(file.blocking_threads).unwrap_or(16).max(1),
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs.or(file.shutdown_grace_secs).unwrap_or(10)),
            purge_interval: Duration::from_secs(args.purge_interval_secs.or(file.purge_interval_secs).unwrap_or(30).max(1)),
            malloc_trim: Duration::from_secs(args.malloc_trim_secs.or(file.malloc_trim_secs).unwrap_or(10)),
            push_sink,
            push,
            cluster,
            media,
        })
    }

    fn resolve_media(args: &ServeArgs, file: &FileConfig, store: &StoreSpec) -> Result<crate::media::MediaConfig, ConfigError> {
        use crate::media::{BlobSpec, MediaConfig};
        let spec = match args.media_store.clone().or(file.media_store.clone()) {
            Some(s) => BlobSpec::parse(&s).map_err(ConfigError::Invalid)?,
            None => BlobSpec::Fs(store.local_dir().join("media")),
        };
        let key = args.media_url_key.clone().or(file.media_url_key.clone()).unwrap_or_default();
        if !key.is_empty() && key.len() < 16 {
            return Err(ConfigError::Invalid("media_url_key must be at least 16 characters".into()));
        }
        let mut media = MediaConfig::new(spec, key.into_bytes());
        if let Some(v) = args.media_max_upload_bytes.or(file.media_max_upload_bytes) {
            media.max_upload_bytes = v;
        }
        if let Some(v) = args.media_quota_bytes.or(file.media_quota_bytes) {
            media.quota_bytes = v;
        }
        if let Some(v) = args.media_uploads_per_minute.or(file.media_uploads_per_minute) {
            media.uploads_per_minute = v.max(1);
        }
        if let Some(v) = args.media_upload_ttl_secs.or(file.media_upload_ttl_secs) {
            media.upload_ttl = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.media_grace_secs.or(file.media_grace_secs) {
            media.grace = Duration::from_secs(v);
        }
        if let Some(v) = args.media_sweep_interval_secs.or(file.media_sweep_interval_secs) {
            media.sweep_interval = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.media_url_ttl_secs.or(file.media_url_ttl_secs) {
            media.url_ttl = Duration::from_secs(v.clamp(1, 7 * 24 * 3600));
        }
        Ok(media)
    }

    fn resolve_cluster(args: &ServeArgs, file: &FileConfig, store: &StoreSpec) -> Result<Option<ClusterConfig>, ConfigError> {
        let node_name = args.node_name.clone().or(file.node_name.clone());
        let listen = args.cluster_listen.or(file.cluster_listen);
        if node_name.is_none() && listen.is_none() {
            return Ok(None);
        }
        let node_name = node_name.ok_or_else(|| ConfigError::Invalid("cluster_listen needs node_name".into()))?;
        if node_name.is_empty() || node_name.len() > 64 || !node_name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(ConfigError::Invalid("node_name must be 1 to 64 characters of [A-Za-z0-9-_.]".into()));
        }
        let listen = listen.ok_or_else(|| ConfigError::Invalid("node_name needs cluster_listen".into()))?;
        if matches!(store, StoreSpec::Embedded { .. }) {
            return Err(ConfigError::Invalid("a cluster needs a shared store (postgres:// or scylla://), not embedded".into()));
        }
        let cookie = secret("cookie", (args.cookie.as_ref(), args.cookie_file.as_ref()), (file.cookie.as_ref(), file.cookie_file.as_ref()))?
            .ok_or_else(|| ConfigError::Invalid("a cluster needs a cookie (cookie or cookie_file: the shared secret of its nodes)".into()))?;
        let advertise = match args.cluster_advertise.clone().or(file.cluster_advertise.clone()) {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::Invalid("cluster_listen binds every interface: set cluster_advertise to the address peers use".into()));
            }
            None => listen.to_string(),
        };
        let heartbeat = Duration::from_millis(args.cluster_heartbeat_ms.or(file.cluster_heartbeat_ms).unwrap_or(500).max(50));
        let dead_after = Duration::from_millis(args.cluster_dead_after_ms.or(file.cluster_dead_after_ms).unwrap_or(5000));
        if dead_after < heartbeat * 3 {
            return Err(ConfigError::Invalid("cluster_dead_after_ms must be at least three heartbeats".into()));
        }
        let tls = match (
            args.cluster_tls_cert.clone().or(file.cluster_tls_cert.clone()),
            args.cluster_tls_key.clone().or(file.cluster_tls_key.clone()),
            args.cluster_tls_ca.clone().or(file.cluster_tls_ca.clone()),
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(ClusterTlsFiles { cert, key, ca }),
            (None, None, None) => None,
            _ => return Err(ConfigError::Invalid("cluster TLS needs all of cluster_tls_cert, cluster_tls_key and cluster_tls_ca".into())),
        };
        Ok(Some(ClusterConfig {
            node_name,
            listen,
            advertise,
            seeds: args.seeds.clone().or(file.seeds.clone()).unwrap_or_default().into_iter().filter(|s| !s.trim().is_empty()).collect(),
            cookie,
            heartbeat,
            dead_after,
            drain_spread: Duration::from_secs(args.drain_spread_secs.or(file.drain_spread_secs).unwrap_or(10)),
            redis: args.redis.clone().or(file.redis.clone()),
            redis_tls_ca: args.redis_tls_ca.clone().or(file.redis_tls_ca.clone()),
            tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(path: &str) -> ServeArgs {
        ServeArgs { config: Some(PathBuf::from(path)), ..Default::default() }
    }

    #[test]
    fn the_example_node_configs_are_valid_cluster_configs() {
        for (i, name) in [(1, "node1"), (2, "node2"), (3, "node3")] {
            let path = format!("{}/cluster/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let config = ServerConfig::resolve(with_file(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            let cluster = config.cluster.expect("cluster settings");
            assert_eq!(cluster.node_name, name);
            assert_eq!(cluster.seeds.len(), 2, "seeds are the other two nodes");
            assert_eq!(cluster.advertise, format!("10.0.0.{}:4369", 10 + i));
            assert!(cluster.tls.is_some() && cluster.redis.is_some());
        }
    }

    #[test]
    fn a_cluster_refuses_the_embedded_store_and_half_a_tls_setup() {
        let cluster = |store: &str, tls_cert: Option<&str>| ServeArgs {
            store: Some(store.into()),
            node_name: Some("n1".into()),
            cluster_listen: Some("127.0.0.1:4369".parse().expect("addr")),
            cookie: Some("c".into()),
            cluster_tls_cert: tls_cert.map(PathBuf::from),
            ..Default::default()
        };
        let embedded = ServerConfig::resolve(cluster("embedded:/tmp/x", None)).expect_err("embedded refused");
        assert!(embedded.to_string().contains("shared store"), "{embedded}");
        let half_tls = ServerConfig::resolve(cluster("postgres://u@h/db", Some("/c.pem"))).expect_err("half tls refused");
        assert!(half_tls.to_string().contains("cluster TLS needs all"), "{half_tls}");
        let fine = ServerConfig::resolve(cluster("postgres://u@h/db", None)).expect("valid");
        assert_eq!(fine.cluster.map(|c| c.advertise), Some("127.0.0.1:4369".to_owned()));
    }

    #[test]
    fn secrets_come_from_files_and_a_value_and_a_file_at_one_level_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cookie = dir.path().join("cookie");
        std::fs::write(&cookie, "s3cret\n").expect("write");
        let token = dir.path().join("token");
        std::fs::write(&token, "  t0ken  \nignored\n").expect("write");
        let args = |cookie_value: Option<&str>| ServeArgs {
            store: Some("postgres://u@h/db".into()),
            node_name: Some("n1".into()),
            cluster_listen: Some("127.0.0.1:4369".parse().expect("addr")),
            cookie: cookie_value.map(str::to_owned),
            cookie_file: Some(cookie.clone()),
            admin_token_file: Some(token.clone()),
            ..Default::default()
        };
        let config = ServerConfig::resolve(args(None)).expect("valid");
        assert_eq!(config.cluster.map(|c| c.cookie).as_deref(), Some("s3cret"));
        assert_eq!(config.admin_token.as_deref(), Some("t0ken"));
        let both = ServerConfig::resolve(args(Some("other"))).expect_err("ambiguous");
        assert!(both.to_string().contains("not both"), "{both}");
        std::fs::write(&cookie, "\n").expect("write");
        let empty = ServerConfig::resolve(args(None)).expect_err("empty cookie file");
        assert!(empty.to_string().contains("empty"), "{empty}");
    }

    #[test]
    fn media_settings_come_from_flags_over_the_file_with_defaults() {
        use crate::media::BlobSpec;
        let defaults = ServerConfig::resolve(ServeArgs { store: Some("embedded:/var/sb".into()), ..Default::default() }).expect("defaults");
        assert_eq!(defaults.media.store, BlobSpec::Fs(PathBuf::from("/var/sb/media")), "blobs next to the embedded store");
        assert_eq!(defaults.media.max_upload_bytes, 100 * 1024 * 1024);
        assert!(defaults.media.url_key.is_empty(), "generated at start");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "media_store = \"s3://media?endpoint=http://127.0.0.1:9000\"\nmedia_quota_bytes = 1000\nmedia_grace_secs = 60\nmedia_url_key = \"0123456789abcdef0123\"\n",
        )
        .expect("write");
        let args = ServeArgs { config: Some(file.clone()), media_quota_bytes: Some(5000), ..Default::default() };
        let config = ServerConfig::resolve(args).expect("valid");
        assert!(matches!(&config.media.store, BlobSpec::S3 { bucket, .. } if bucket == "media"));
        assert_eq!(config.media.quota_bytes, 5000, "the flag wins over the file");
        assert_eq!(config.media.grace, Duration::from_secs(60));
        assert_eq!(config.media.url_key, b"0123456789abcdef0123".to_vec());
        let bad = ServeArgs { media_store: Some("ftp://x".into()), ..Default::default() };
        assert!(ServerConfig::resolve(bad).is_err());
        let short_key = ServeArgs { media_url_key: Some("short".into()), ..Default::default() };
        assert!(ServerConfig::resolve(short_key).expect_err("too short").to_string().contains("media_url_key"));
    }

    #[test]
    fn client_tls_needs_both_files_from_any_source() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "tls_cert = \"/etc/sb/cert.pem\"\ntls_reload_secs = 3\n").expect("write");
        let half = ServerConfig::resolve(with_file(path.to_str().expect("utf-8"))).expect_err("key missing");
        assert!(half.to_string().contains("tls_cert and tls_key"), "{half}");
        let args = ServeArgs { tls_key: Some("/etc/sb/key.pem".into()), ..with_file(path.to_str().expect("utf-8")) };
        let tls = ServerConfig::resolve(args).expect("valid").tls.expect("tls on");
        assert_eq!((tls.cert.to_str(), tls.key.to_str(), tls.poll), (Some("/etc/sb/cert.pem"), Some("/etc/sb/key.pem"), Duration::from_secs(3)));
        assert!(ServerConfig::resolve(ServeArgs::default()).expect("defaults").tls.is_none());
    }

    #[test]
    fn the_write_batch_is_a_bounded_setting_from_a_flag_or_the_file() {
        let default = ServerConfig::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(default.actors.max_write_batch, 2048);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "max_write_batch = 8192\n").expect("write");
        let from_file = ServerConfig::resolve(with_file(path.to_str().expect("utf-8"))).expect("valid");
        assert_eq!(from_file.actors.max_write_batch, 8192);
        let flag = ServeArgs { max_write_batch: Some(512), ..with_file(path.to_str().expect("utf-8")) };
        assert_eq!(ServerConfig::resolve(flag).expect("valid").actors.max_write_batch, 512, "the flag wins over the file");
        for bad in [0, 15, 65_537] {
            let e = ServerConfig::resolve(ServeArgs { max_write_batch: Some(bad), ..Default::default() }).expect_err("out of range");
            assert!(e.to_string().contains("max_write_batch must be 16 to 65536"), "{e}");
        }
    }

    #[test]
    fn the_write_defer_is_a_bounded_setting() {
        let default = ServerConfig::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(default.actors.write_defer, Duration::from_millis(10));
        let off = ServerConfig::resolve(ServeArgs { write_defer_ms: Some(0), ..Default::default() }).expect("valid");
        assert_eq!(off.actors.write_defer, Duration::ZERO);
        let e = ServerConfig::resolve(ServeArgs { write_defer_ms: Some(1001), ..Default::default() }).expect_err("out of range");
        assert!(e.to_string().contains("write_defer_ms must be 0 to 1000"), "{e}");
    }

    #[test]
    fn a_node_bound_to_every_interface_must_say_how_peers_reach_it() {
        let args = ServeArgs {
            store: Some("postgres://u@h/db".into()),
            node_name: Some("n1".into()),
            cluster_listen: Some("0.0.0.0:4369".parse().expect("addr")),
            cookie: Some("c".into()),
            ..Default::default()
        };
        let e = ServerConfig::resolve(args).expect_err("advertise required");
        assert!(e.to_string().contains("cluster_advertise"), "{e}");
    }
}
