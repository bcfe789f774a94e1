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
    #[arg(long, env = "SWITCHBOARD_STORE")]
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
    /// Bearer token for the admin API; generated and written to `<data>/admin-token` if unset.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Where one-time codes go: `log` (development) or `webhook:<url>` (SMS gateway).
    #[arg(long, env = "SWITCHBOARD_CODE_SENDER")]
    pub code_sender: Option<String>,
    /// Development mode: registration responses include the one-time code.
    #[arg(long, env = "SWITCHBOARD_DEV_EXPOSE_CODES")]
    pub dev_expose_codes: Option<bool>,
    /// After binding, write the bound addresses as JSON to this file (for tests and tooling).
    #[arg(long, env = "SWITCHBOARD_READY_FILE")]
    pub ready_file: Option<PathBuf>,
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
    /// Seconds a device's full outbound queue may stay full before it is disconnected as slow.
    #[arg(long, env = "SWITCHBOARD_SLOW_CONSUMER_SECS")]
    pub slow_consumer_secs: Option<u64>,
    /// Frames per second one connection may send (sustained).
    #[arg(long, env = "SWITCHBOARD_RATE_PER_SEC")]
    pub rate_per_sec: Option<u32>,
    /// Burst above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Seconds between sweeps that delete expired disappearing messages.
    #[arg(long, env = "SWITCHBOARD_PURGE_INTERVAL_SECS")]
    pub purge_interval_secs: Option<u64>,
    /// Where push notifications go: `log` (development) or `webhook:<url>` (POST JSON to a
    /// gateway in front of FCM/APNs).
    #[arg(long, env = "SWITCHBOARD_PUSH_SINK")]
    pub push_sink: Option<String>,
    /// Window in milliseconds over which pushes to one device and conversation coalesce.
    #[arg(long, env = "SWITCHBOARD_PUSH_COALESCE_MS")]
    pub push_coalesce_ms: Option<u64>,
    /// Largest group, in members.
    #[arg(long, env = "SWITCHBOARD_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    /// Seconds without traffic before a conversation actor is passivated.
    #[arg(long, env = "SWITCHBOARD_CONVERSATION_IDLE_SECS")]
    pub conversation_idle_secs: Option<u64>,
    /// Seconds allowed for graceful shutdown.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
}

/// The same settings in a TOML file (snake_case keys, all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    store: Option<String>,
    http_listen: Option<SocketAddr>,
    tcp_listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    admin_token: Option<String>,
    code_sender: Option<String>,
    dev_expose_codes: Option<bool>,
    ready_file: Option<PathBuf>,
    max_frame_bytes: Option<usize>,
    max_payload_bytes: Option<usize>,
    heartbeat_secs: Option<u64>,
    outbound_queue: Option<usize>,
    slow_consumer_secs: Option<u64>,
    rate_per_sec: Option<u32>,
    rate_burst: Option<u32>,
    conversation_idle_secs: Option<u64>,
    max_group_members: Option<usize>,
    purge_interval_secs: Option<u64>,
    push_sink: Option<String>,
    push_coalesce_ms: Option<u64>,
    shutdown_grace_secs: Option<u64>,
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
    /// Admin token, if configured (else generated at start).
    pub admin_token: Option<String>,
    /// Code sender.
    pub code_sender: CodeSenderSpec,
    /// Accounts rules.
    pub accounts: AccountsConfig,
    /// Connection limits.
    pub connection: ConnectionConfig,
    /// Actor limits.
    pub actors: ActorLimits,
    /// Ready file.
    pub ready_file: Option<PathBuf>,
    /// Graceful shutdown budget.
    pub shutdown_grace: Duration,
    /// Interval of the expired-message sweep.
    pub purge_interval: Duration,
    /// Push sink.
    pub push_sink: PushSinkSpec,
    /// Push timing.
    pub push: crate::actors::push::PushConfig,
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
        let store = StoreSpec::parse(&args.store.or(file.store).unwrap_or_else(|| "embedded:./switchboard-data".into())).map_err(ConfigError::Invalid)?;
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
        if let Some(v) = args.slow_consumer_secs.or(file.slow_consumer_secs) {
            actors.slow_consumer_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.rate_per_sec.or(file.rate_per_sec) {
            connection.rate_per_sec = v.max(1);
        }
        if let Some(v) = args.rate_burst.or(file.rate_burst) {
            connection.rate_burst = v.max(1);
        }
        if let Some(v) = args.conversation_idle_secs.or(file.conversation_idle_secs) {
            actors.conversation_idle = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.max_group_members.or(file.max_group_members) {
            if !(2..=100_000).contains(&v) {
                return Err(ConfigError::Invalid("max_group_members must be 2 to 100000".into()));
            }
            actors.max_group_members = v;
        }
        let accounts = AccountsConfig { expose_codes: args.dev_expose_codes.or(file.dev_expose_codes).unwrap_or(false), ..Default::default() };
        Ok(Self {
            store,
            http_listen: args.http_listen.or(file.http_listen).unwrap_or(([127, 0, 0, 1], 8080).into()),
            tcp_listen: args.tcp_listen.or(file.tcp_listen).unwrap_or(([127, 0, 0, 1], 8081).into()),
            admin_listen: args.admin_listen.or(file.admin_listen).unwrap_or(([127, 0, 0, 1], 8082).into()),
            admin_token: args.admin_token.or(file.admin_token),
            code_sender,
            accounts,
            connection,
            actors,
            ready_file: args.ready_file.or(file.ready_file),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs.or(file.shutdown_grace_secs).unwrap_or(10)),
            purge_interval: Duration::from_secs(args.purge_interval_secs.or(file.purge_interval_secs).unwrap_or(30).max(1)),
            push_sink,
            push,
        })
    }
}
