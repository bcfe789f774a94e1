//! Wiring and lifecycle of one node: open the store, start the actor tree, bind the
//! listeners, and shut everything down in order (stop accepting, tell clients, drain
//! conversations, flush the store).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::accounts::{Accounts, CodeSender, LogCodeSender, WebhookCodeSender};
use crate::actors::messages::{ConversationControl, ConversationMsg, SessionControl, SessionMsg};
use crate::actors::node::{self, Node};
use crate::actors::push::{LogSink, PushSink, WebhookSink};
use crate::cluster::{Cluster, LocalAddrs};
use crate::config::{CodeSenderSpec, PushSinkSpec, ServerConfig};
use crate::http::admin::{self, AdminState};
use crate::http::api::{self, ApiState};
use crate::media::MediaService;
use crate::media::http::{self as media_http, MediaState};
use crate::protocol::ErrorCode;
use crate::store::{Store, StoreError};
use crate::transport::tls::ClientTls;
use crate::transport::{ConnectionDeps, tcp};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store did not open.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A listener did not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The actor tree did not start.
    #[error("actors: {0}")]
    Actors(String),
    /// The cluster did not start.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The media blob store could not be opened.
    #[error("media: {0}")]
    Media(String),
    /// The client listeners' certificate or key is unusable.
    #[error("client tls: {0}")]
    Tls(#[from] crate::transport::tls::ListenerTlsError),
    /// Anything else at start-up (ready file, admin token file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running node.
pub struct RunningServer {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound TCP address.
    pub tcp_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// The admin token in force.
    pub admin_token: String,
    /// The actor tree.
    pub node: Node,
    /// The cluster, if this node is part of one.
    pub cluster: Option<Arc<Cluster>>,
    /// Cancelled when the node should exit on its own (a drain finished).
    exit: CancellationToken,
    accepting: CancellationToken,
    http: actix_web::dev::ServerHandle,
    admin: actix_web::dev::ServerHandle,
    grace: Duration,
}

/// The process-wide Prometheus recorder (installed once; later servers in the same
/// process, as in tests, share it).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .clone()
}

fn admin_token(config: &ServerConfig, data_dir: &std::path::Path) -> Result<String, ServerError> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    secret_file(&data_dir.join("admin-token"))
}

/// A secret kept in a file readable by its owner only: read if it exists, else generated.
fn secret_file(path: &std::path::Path) -> Result<String, ServerError> {
    let path = path.to_owned();
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_owned());
    }
    let token = hex::encode(rand::rng().random::<[u8; 24]>());
    std::fs::write(&path, &token)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(path = %path.display(), "generated secret");
    Ok(token)
}

/// Binds a listener with an explicit accept backlog (`listen(2)`'s queue of completed
/// handshakes): std's fixed 128 dropped SYNs in login bursts, each costing a client a 1 s
/// retransmission. The kernel caps it at `net.core.somaxconn`.
fn bind(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, ServerError> {
    use socket2::{Domain, Socket, Type};
    let fail = |source| ServerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(fail)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Starts a node on the current (multi-thread) tokio runtime.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let store = config.store.open().await?;
    let data_dir = config.store.local_dir();
    std::fs::create_dir_all(&data_dir)?;
    tracing::info!(store = %config.store, backend = store.backend(), "store open");
    let admin_token = admin_token(&config, &data_dir)?;
    let metrics = prometheus();
    let push_sink: Arc<dyn PushSink> = match &config.push_sink {
        PushSinkSpec::Log => Arc::new(LogSink),
        PushSinkSpec::Webhook(url) => Arc::new(WebhookSink::new(url.clone())),
    };
    let node =
        node::start(store.clone(), config.actors.clone(), push_sink, config.push.clone()).await.map_err(|e| ServerError::Actors(e.to_string()))?;
    let sender: Arc<dyn CodeSender> = match &config.code_sender {
        CodeSenderSpec::Log => Arc::new(LogCodeSender),
        CodeSenderSpec::Webhook(url) => Arc::new(WebhookCodeSender::new(url.clone())),
    };
    let accounts = Accounts::new(store.clone(), sender, config.accounts.clone());
    let mut media_config = config.media.clone();
    if media_config.url_key.is_empty() {
        media_config.url_key = secret_file(&data_dir.join("media-url-key"))?.into_bytes();
    }
    tracing::info!(media_store = %media_config.store, "media store");
    let media = MediaService::new(store.clone(), media_config).map_err(|e| ServerError::Media(e.to_string()))?;
    let accepting = CancellationToken::new();
    let budgets = Arc::new(crate::transport::budgets::DeviceBudgets::new(config.connection.rate_per_sec, config.connection.rate_burst));
    let user_budgets = Arc::new(crate::transport::budgets::UserBudgets::new(config.connection.user_rate_per_sec, config.connection.user_rate_burst));
    let deps = ConnectionDeps {
        node: node.clone(),
        accounts: accounts.clone(),
        config: Arc::new(config.connection.clone()),
        shutdown: accepting.clone(),
        budgets,
        user_budgets,
        handshakes: Arc::new(crate::transport::handshakes::HandshakeGate::new(
            config.connection.max_handshakes_per_address,
            config.connection.handshake_cap_exempt.clone(),
        )),
    };

    // Loaded before anything binds: a bad certificate stops the start, not the first client.
    let tls = match &config.tls {
        Some(files) => {
            let tls = Arc::new(ClientTls::load(files.clone())?);
            tls.clone().watch(accepting.clone());
            Some(tls)
        }
        None => None,
    };
    let http_listener = bind(config.http_listen, config.listen_backlog)?;
    let tcp_listener = bind(config.tcp_listen, config.listen_backlog)?;
    let admin_listener = bind(config.admin_listen, config.listen_backlog)?;
    let http_addr = http_listener.local_addr()?;
    let tcp_addr = tcp_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let cluster = match config.cluster.clone() {
        Some(cluster_config) => {
            let addrs = LocalAddrs::announced(admin_addr, tcp_addr, http_addr, &cluster_config.advertise);
            let cluster = crate::cluster::start(cluster_config, &node, addrs, accepting.clone()).await?;
            cluster.wait_for_peers().await;
            Some(cluster)
        }
        None => None,
    };
    let exit = CancellationToken::new();

    let api_state = ApiState {
        accounts: accounts.clone(),
        contacts: crate::contacts::Contacts::new(store.clone(), config.contacts),
        statuses: crate::status::Statuses::new(store.clone(), config.status),
        node: node.clone(),
        store: store.clone(),
        metrics,
        cluster: cluster.clone(),
        media: media.clone(),
    };
    let media_state = web::Data::new(MediaState { media: media.clone(), accounts: accounts.clone() });
    let ws_deps = api::ws_data(deps.clone());
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4);
    let http = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(api_state.clone()))
            .app_data(ws_deps.clone())
            .app_data(api::json_config())
            .app_data(api::query_config())
            .app_data(api::path_config())
            .app_data(media_state.clone())
            .configure(media_http::routes)
            .configure(api::routes)
            .configure(crate::http::web_app::routes)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(config.shutdown_grace.as_secs());
    let http = match &tls {
        Some(tls) => http.listen_rustls_0_23(http_listener, tls.server_config(&[b"http/1.1"])?)?,
        None => http.listen(http_listener)?,
    }
    .run();
    let http_handle = http.handle();
    tokio::spawn(http);

    let admin_state = AdminState {
        node: node.clone(),
        accounts: accounts.clone(),
        token: admin_token.clone(),
        cluster: cluster.clone(),
        drain: DrainHandle { exit: exit.clone(), spread: config.cluster.as_ref().map(|c| c.drain_spread).unwrap_or_default() },
        media: media.clone(),
    };
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(admin_state.clone()))
            .app_data(api::json_config())
            .app_data(api::query_config())
            .app_data(api::path_config())
            // Admin answers are live state behind a token: never kept by a browser or a
            // proxy (the console's static files set their own, revalidated, policy).
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((actix_web::http::header::CACHE_CONTROL, "no-store"))
                    .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
            )
            .configure(admin::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(admin_listener)?
    .run();
    let admin_handle = admin.handle();
    tokio::spawn(admin);

    tokio::spawn(purge_expired(store.clone(), config.purge_interval, accepting.clone()));
    tokio::spawn(sweep_media(media.clone(), accepting.clone()));
    tokio::spawn(probe_store(store.clone(), Duration::from_secs(5), accepting.clone()));
    tokio::spawn(crate::memory_trim::run(config.malloc_trim, accepting.clone()));

    let tcp_listener = tokio::net::TcpListener::from_std(tcp_listener)?;
    let acceptor = match &tls {
        Some(tls) => Some(tls.acceptor()?),
        None => None,
    };
    tokio::spawn(tcp::serve(tcp_listener, deps, acceptor, accepting.clone()));

    if let Some(path) = &config.ready_file {
        let ready = serde_json::json!({
            "http": http_addr.to_string(),
            "tcp": tcp_addr.to_string(),
            "admin": admin_addr.to_string(),
            "pid": std::process::id(),
            "store": store.backend(),
            "tls": tls.is_some(),
            "node": config.cluster.as_ref().map(|c| c.node_name.clone()),
            "cluster": config.cluster.as_ref().map(|c| c.advertise.clone()),
        });
        // Written to a temporary name and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(%http_addr, %tcp_addr, %admin_addr, "switchboard listening");
    Ok(RunningServer {
        http_addr,
        tcp_addr,
        admin_addr,
        admin_token,
        node,
        cluster,
        exit,
        accepting,
        http: http_handle,
        admin: admin_handle,
        grace: config.shutdown_grace,
    })
}

/// Probes the store every `interval` so that its state and latency are in the metrics even
/// when nobody polls /healthz: `switchboard_store_up{backend}` (1 or 0) and
/// `switchboard_store_ping_seconds{backend}`.
async fn probe_store(store: Arc<dyn Store>, interval: Duration, stop: CancellationToken) {
    let backend = store.backend();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await;
        metrics::histogram!("switchboard_store_ping_seconds", "backend" => backend).record(started.elapsed().as_secs_f64());
        let up = matches!(result, Ok(Ok(())));
        metrics::gauge!("switchboard_store_up", "backend" => backend).set(if up { 1.0 } else { 0.0 });
        if up != was_up {
            match &result {
                Ok(Ok(())) => tracing::info!(backend, "store reachable again"),
                Ok(Err(e)) => tracing::error!(backend, error = %e, "store unreachable"),
                Err(_) => tracing::error!(backend, "store ping timed out"),
            }
            was_up = up;
        }
    }
}

/// Sweeps media every `sweep_interval` (see `media::sweep`): expired uploads, unreferenced
/// attachments after their grace period, and blobs no record points at.
async fn sweep_media(media: MediaService, stop: CancellationToken) {
    let mut tick = tokio::time::interval(media.config().sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match media.sweep_once().await {
            Ok(report) => tracing::debug!(?report, "media sweep"),
            Err(e) => tracing::warn!(error = %e, "media sweep failed"),
        }
    }
}

/// Deletes expired disappearing messages every `interval`, in bounded batches.
async fn purge_expired(store: Arc<dyn Store>, interval: Duration, stop: CancellationToken) {
    const BATCH: usize = 10_000;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            match store.purge_expired(crate::store::now_ms(), BATCH).await {
                Ok(n) => {
                    metrics::counter!("switchboard_messages_expired_total").increment(n);
                    if (n as usize) < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge of expired messages failed");
                    break;
                }
            }
        }
    }
}

impl RunningServer {
    /// Graceful shutdown: refuse new connections, tell every device to reconnect later,
    /// wait (up to the grace period) for sessions to finish what they hold, stop the HTTP
    /// servers, drain conversations and flush the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        if let Some(cluster) = &self.cluster {
            // Leave the placement first, so that peers route to the conversations' new
            // owners at once instead of waiting for this node to be declared dead.
            cluster.start_drain();
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.node.ctx.router.conversation_count() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.flush_now();
        }
        self.accepting.cancel();
        // Connections stop reading (the token above). Then, in order: sessions hand every
        // request they hold to conversations, conversations sequence them, the writer
        // commits them, conversations turn the commits into acks — and only then are
        // sessions closed. A client whose message was stored hears so before Closing.
        self.sync_sessions().await;
        self.sync_conversations().await;
        self.node.ctx.writer.barrier().await;
        self.sync_conversations().await;
        // The acks are in the sessions' mailboxes: let the sessions put them in their
        // outboxes, then close (a close takes effect at once; what is queued is written).
        self.sync_sessions().await;
        self.node.ctx.router.close_all_here(ErrorCode::ServerShuttingDown, "server is shutting down", || 1000);
        let deadline = Instant::now() + self.grace;
        while self.node.ctx.router.session_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.http.stop(true).await;
        self.admin.stop(true).await;
        self.node.shutdown().await;
        tracing::info!("shutdown complete");
    }

    async fn sync_sessions(&self) {
        for session in self.node.ctx.router.all_sessions() {
            if let Err(e) = ractor::call_t!(session.actor(), |reply| SessionMsg::Control(SessionControl::Sync(reply)), 2000) {
                tracing::debug!(error = %e, "session did not sync before shutdown");
            }
        }
    }

    async fn sync_conversations(&self) {
        for conversation in self.node.ctx.router.all_conversations() {
            if let Err(e) = ractor::call_t!(conversation.actor(), |reply| ConversationMsg::Control(ConversationControl::Sync(reply)), 2000) {
                tracing::debug!(error = %e, "conversation did not sync before shutdown");
            }
        }
    }

    /// Resolves when the node should exit on its own (after a drain).
    pub async fn exit_requested(&self) {
        self.exit.cancelled().await
    }

    /// Resolves if an infrastructure actor failed (the process should exit non-zero).
    pub async fn failed(&self) {
        let mut failed = self.node.failed.clone();
        let _ = failed.wait_for(|f| *f).await;
    }
}

/// Starts and finishes a drain (`POST /admin/drain`).
#[derive(Clone)]
pub struct DrainHandle {
    exit: CancellationToken,
    spread: Duration,
}

impl DrainHandle {
    /// Drains `cluster`'s node: it leaves the placement (its conversations move to their
    /// new owners), then its devices are asked to reconnect elsewhere in waves spread over
    /// the drain period, each with a jittered delay, so that the other nodes are not
    /// stampeded. Once no device and no conversation is left, the node exits cleanly.
    pub fn start(&self, cluster: Arc<Cluster>, node: Node) {
        if cluster.draining() {
            return;
        }
        cluster.start_drain();
        let (exit, spread) = (self.exit.clone(), self.spread);
        tokio::spawn(async move {
            const WAVE: Duration = Duration::from_millis(100);
            let waves = (spread.as_millis() / WAVE.as_millis()).max(1) as usize;
            let started = Instant::now();
            for wave in 0..waves {
                let devices = node.ctx.router.local_devices();
                // Close an equal share of what is left in each remaining wave.
                let share = devices.len().div_ceil(waves - wave);
                for (user, device) in devices.into_iter().take(share) {
                    let delay = rand::rng().random_range(0..=WAVE.as_millis() as u32 * 2);
                    node.ctx.router.close_device_after(
                        user,
                        device,
                        ErrorCode::NodeDraining,
                        "node draining; reconnect to another node",
                        delay.max(1),
                    );
                }
                tokio::time::sleep(WAVE).await;
            }
            // Stragglers (devices that connected during the drain) and handoffs still
            // committing: give them a bounded time.
            let deadline = Instant::now() + Duration::from_secs(30);
            while (node.ctx.router.session_count() > 0 || node.ctx.router.conversation_count() > 0) && Instant::now() < deadline {
                node.ctx.router.close_all_here(ErrorCode::NodeDraining, "node draining; reconnect to another node", || 100);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drain complete; exiting");
            exit.cancel();
        });
    }
}
