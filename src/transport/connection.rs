//! One device connection, whatever the transport: the handshake, the reader loop with
//! its limits (idle timeout, frame rate, malformed frames), and the writer task that
//! drains the session's bounded outbox into the socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::accounts::{Accounts, AuthError};
use crate::actors::mailbox::MailboxError;
use crate::actors::node::Node;
use crate::actors::session::{CloseSignal, Outbox, SessionArgs, SessionMsg};
use crate::actors::session_supervisor::start_session;
use crate::protocol::{self, ErrorCode, FrameError, PROTOCOL_VERSION, client_frame, id_bytes, pb, server_frame};
use crate::store::now_ms;

/// Limits of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest accepted frame, in bytes.
    pub max_frame: usize,
    /// Heartbeat interval announced in Welcome; silence for three of them closes.
    pub heartbeat: Duration,
    /// Time allowed between connecting and Hello.
    pub hello_timeout: Duration,
    /// Sustained frames per second a device may send.
    pub rate_per_sec: u32,
    /// Burst above the sustained rate.
    pub rate_burst: u32,
    /// Frames over the limit tolerated before the connection is closed.
    pub max_dropped: u32,
    /// Undecodable frames tolerated before the connection is closed.
    pub max_bad_frames: u32,
    /// Frames queued towards the device before it counts as slow.
    pub outbound_queue: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame: 256 * 1024,
            heartbeat: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            rate_per_sec: 500,
            rate_burst: 1000,
            max_dropped: 1000,
            max_bad_frames: 16,
            outbound_queue: 1024,
        }
    }
}

/// What a connection needs from the node.
#[derive(Clone)]
pub struct ConnectionDeps {
    /// The actor tree.
    pub node: Node,
    /// Token checks.
    pub accounts: Accounts,
    /// Limits.
    pub config: Arc<ConnectionConfig>,
    /// Cancelled when the server stops accepting; new handshakes are refused.
    pub shutdown: CancellationToken,
}

/// The writing half of a transport.
pub trait FrameSink: Send + 'static {
    /// Writes one frame (may buffer).
    fn send(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Pushes buffered frames to the socket.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Closes the transport.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// A token bucket: `rate` frames per second, bursts up to `burst`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        Self { tokens: burst as f64, rate: rate as f64, burst: burst as f64, last: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn err(code: ErrorCode, message: &str, request_ref: &str, fatal: bool) -> Bytes {
    protocol::encode_server(&protocol::error_frame(code, message, request_ref, fatal))
}

/// Sends a fatal error and closes.
fn fail(outbox: &Outbox, code: ErrorCode, message: &str, reconnect_after_ms: u32) {
    outbox.push_now(err(code, message, "", true));
    outbox.close(protocol::encode_server(&protocol::closing_frame(code, message, reconnect_after_ms)));
    metrics::counter!("switchboard_connections_rejected_total", "code" => code.as_str_name()).increment(1);
}

/// How long a closing connection may spend writing its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs one connection to its end. `inbound` yields whole frames (or framing errors).
pub async fn serve<S, W>(mut inbound: S, sink: W, deps: ConnectionDeps)
where
    S: Stream<Item = Result<Bytes, FrameError>> + Unpin,
    W: FrameSink,
{
    let config = deps.config.clone();
    let (outbox, rx, close) = Outbox::new(config.outbound_queue);
    let writer = tokio::spawn(write_loop(sink, rx, close.clone()));
    metrics::gauge!("switchboard_connections").increment(1.0);

    if let Some(session) = handshake(&mut inbound, &outbox, &deps).await {
        read_loop(&mut inbound, &outbox, &close, &session, &config, &deps.shutdown).await;
        // Ordered after every frame the reader forwarded: the session handles them all
        // (acks included) before it stops.
        let _ = session.actor().cast(SessionMsg::ConnectionClosed);
    }
    drop(outbox);
    let _ = writer.await;
    metrics::gauge!("switchboard_connections").decrement(1.0);
}

async fn handshake<S>(inbound: &mut S, outbox: &Outbox, deps: &ConnectionDeps) -> Option<crate::actors::Mailbox<SessionMsg>>
where
    S: Stream<Item = Result<Bytes, FrameError>> + Unpin,
{
    let config = &deps.config;
    if deps.shutdown.is_cancelled() {
        fail(outbox, ErrorCode::ServerShuttingDown, "server is shutting down", 1000);
        return None;
    }
    let first = match tokio::time::timeout(config.hello_timeout, inbound.next()).await {
        Err(_) => {
            fail(outbox, ErrorCode::IdleTimeout, "no Hello in time", 1000);
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(FrameError::TooLarge { len, max }))) => {
            fail(outbox, ErrorCode::FrameTooLarge, &format!("frame of {len} bytes exceeds {max}"), 0);
            return None;
        }
        Ok(Some(Err(e))) => {
            fail(outbox, ErrorCode::BadFrame, &e.to_string(), 0);
            return None;
        }
        Ok(Some(Ok(bytes))) => bytes,
    };
    let hello = match protocol::decode_client(&first) {
        Ok(client_frame::Kind::Hello(hello)) => hello,
        Ok(_) => {
            fail(outbox, ErrorCode::NotAuthenticated, "the first frame must be Hello", 0);
            return None;
        }
        Err(e) => {
            fail(outbox, ErrorCode::BadFrame, &e.to_string(), 0);
            return None;
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        fail(outbox, ErrorCode::UnsupportedVersion, &format!("this server speaks protocol version {PROTOCOL_VERSION}"), 0);
        return None;
    }
    let device = match deps.accounts.authenticate(&hello.token).await {
        Ok(device) => device,
        Err(AuthError::InvalidToken) => {
            fail(outbox, ErrorCode::InvalidToken, "unknown token", 0);
            return None;
        }
        Err(AuthError::Revoked) => {
            fail(outbox, ErrorCode::DeviceRevoked, "this device was revoked", 0);
            return None;
        }
        Err(AuthError::Store(e)) => {
            tracing::warn!(error = %e, "authentication could not read the store");
            fail(outbox, ErrorCode::Internal, "store unavailable", 2000);
            return None;
        }
    };
    let welcome = protocol::server(server_frame::Kind::Welcome(pb::Welcome {
        protocol_version: PROTOCOL_VERSION,
        user_id: id_bytes(device.user_id),
        device_id: id_bytes(device.device_id),
        server_time_ms: now_ms(),
        heartbeat_interval_ms: config.heartbeat.as_millis() as u32,
        max_frame_bytes: config.max_frame as u32,
    }));
    outbox.push_now(protocol::encode_server(&welcome));
    let args = SessionArgs { user: device.user_id, device: device.device_id, outbox: outbox.clone(), ctx: deps.node.ctx.clone() };
    match start_session(&deps.node.sessions.get_cell(), args).await {
        Ok(mailbox) => {
            tracing::debug!(user = %device.user_id, device = %device.device_id, client = %hello.client_name, "device connected");
            metrics::counter!("switchboard_logins_total").increment(1);
            Some(mailbox)
        }
        Err(e) => {
            tracing::error!(error = %e, "session did not start");
            fail(outbox, ErrorCode::Internal, "session did not start", 2000);
            None
        }
    }
}

async fn read_loop<S>(
    inbound: &mut S,
    outbox: &Outbox,
    close: &Arc<CloseSignal>,
    session: &crate::actors::Mailbox<SessionMsg>,
    config: &ConnectionConfig,
    shutdown: &CancellationToken,
) where
    S: Stream<Item = Result<Bytes, FrameError>> + Unpin,
{
    let idle = config.heartbeat * 3;
    let mut rate = RateLimit::new(config.rate_per_sec, config.rate_burst);
    let (mut dropped, mut bad) = (0u32, 0u32);
    loop {
        let next = tokio::select! {
            _ = close.closed() => return,
            _ = shutdown.cancelled() => {
                // Shutting down: take no new requests, but keep the session (and so the
                // acks of what it already sent) alive until the server closes it.
                close.closed().await;
                return;
            }
            next = tokio::time::timeout(idle, inbound.next()) => next,
        };
        let bytes = match next {
            Err(_) => {
                fail(outbox, ErrorCode::IdleTimeout, "no frame for three heartbeat intervals", 1000);
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(FrameError::TooLarge { len, max }))) => {
                fail(outbox, ErrorCode::FrameTooLarge, &format!("frame of {len} bytes exceeds {max}"), 0);
                return;
            }
            Ok(Some(Err(FrameError::Io(_)))) => return,
            Ok(Some(Err(e))) => {
                fail(outbox, ErrorCode::BadFrame, &e.to_string(), 0);
                return;
            }
            Ok(Some(Ok(bytes))) => bytes,
        };
        if !rate.allow() {
            dropped += 1;
            metrics::counter!("switchboard_frames_dropped_total", "reason" => "rate").increment(1);
            if dropped > config.max_dropped {
                fail(outbox, ErrorCode::RateLimited, "too many frames", 5000);
                return;
            }
            outbox.push_now(err(ErrorCode::RateLimited, "frame dropped: rate limit", &protocol::request_ref_of(&bytes), false));
            continue;
        }
        let kind = match protocol::decode_client(&bytes) {
            Ok(kind) => kind,
            Err(e) => {
                bad += 1;
                metrics::counter!("switchboard_frames_dropped_total", "reason" => "malformed").increment(1);
                if bad > config.max_bad_frames {
                    fail(outbox, ErrorCode::BadFrame, "too many malformed frames", 0);
                    return;
                }
                outbox.push_now(err(ErrorCode::BadFrame, &e.to_string(), "", false));
                continue;
            }
        };
        if let client_frame::Kind::Ping(ping) = &kind {
            // Answered here: liveness must not wait behind the session's work.
            let pong = protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: ping.nonce }));
            outbox.push_now(protocol::encode_server(&pong));
            continue;
        }
        match session.send(SessionMsg::Frame(Box::new(kind))) {
            Ok(()) => {}
            Err((MailboxError::Full, msg)) => {
                let request_ref = match msg {
                    Some(SessionMsg::Frame(kind)) => protocol::request_ref(&kind),
                    _ => String::new(),
                };
                outbox.push_now(err(ErrorCode::RateLimited, "frame dropped: session busy", &request_ref, false));
            }
            Err((MailboxError::Closed, _)) => return,
        }
    }
}

async fn write_loop<W: FrameSink>(mut sink: W, mut rx: mpsc::Receiver<Bytes>, close: Arc<CloseSignal>) {
    loop {
        let frame = tokio::select! {
            biased;
            frame = rx.recv() => frame,
            _ = close.closed() => None,
        };
        let Some(frame) = frame else { break };
        if sink.send(frame).await.is_err() {
            close.close(Bytes::new());
            break;
        }
        // Batch whatever else is queued into one flush.
        let mut failed = false;
        while let Ok(more) = rx.try_recv() {
            if sink.send(more).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || sink.flush().await.is_err() {
            close.close(Bytes::new());
            break;
        }
    }
    // Closing: what was queued before the close (e.g. the error that explains it) goes
    // first, then the final frame, within a bounded time: a device that stopped reading
    // (the slow consumer being closed) cannot hold the connection open.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(more) = rx.try_recv() {
            if sink.send(more).await.is_err() {
                return;
            }
        }
        if let Some(last) = close.take_frame()
            && !last.is_empty()
        {
            let _ = sink.send(last).await;
        }
        let _ = sink.flush().await;
    })
    .await;
    close.close(Bytes::new());
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}
