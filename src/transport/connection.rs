//! One device connection, whatever the transport: the handshake, the reader loop with
//! its limits (idle timeout, frame rate, malformed frames), and the writer task that
//! drains the session's bounded outbox into the socket.
//!
//! Both directions are batched: the reader hands the session everything one socket read
//! brought, as one mailbox message; the writer takes everything queued in the outbox and
//! writes it with one flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::accounts::{Accounts, AuthError};
use crate::actors::mailbox::{Mailbox, MailboxError};
use crate::actors::messages::{SessionControl, SessionMsg, SessionRequest};
use crate::actors::node::Node;
use crate::actors::outbox::{Outbox, Taken};
use crate::actors::session::SessionArgs;
use crate::actors::session_supervisor::start_session;
use crate::ids::{DeviceId, UserId};
use crate::protocol::{self, ErrorCode, FrameError, PROTOCOL_VERSION, RequestError, client_frame, id_bytes, pb, server_frame};
use crate::store::now_ms;
use crate::transport::budgets::{Budget, DeviceBudgets, UserBudgets};
use crate::transport::handshakes::{HandshakeGate, PendingHandshake};

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
    /// Sustained frames per second a user's devices may send together.
    pub user_rate_per_sec: u32,
    /// Burst of a user's devices together.
    pub user_rate_burst: u32,
    /// Frames over the limit tolerated before the connection is closed.
    pub max_dropped: u32,
    /// Undecodable frames tolerated before the connection is closed.
    pub max_bad_frames: u32,
    /// Frames queued towards the device before it counts as slow.
    pub outbound_queue: usize,
    /// Connections from one address that may be in their handshake (connected, not yet
    /// answered Welcome or a refusal) at once; 0: no cap.
    pub max_handshakes_per_address: u32,
    /// Addresses the handshake cap does not count (load balancers in front of the node;
    /// `--address-limits-exempt`).
    pub handshake_cap_exempt: Vec<std::net::IpAddr>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame: 256 * 1024,
            heartbeat: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            rate_per_sec: 500,
            rate_burst: 1000,
            user_rate_per_sec: 1000,
            user_rate_burst: 2000,
            max_dropped: 1000,
            max_bad_frames: 16,
            outbound_queue: 1024,
            max_handshakes_per_address: 64,
            handshake_cap_exempt: Vec::new(),
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
    /// Frame budgets per device, kept across its connections.
    pub budgets: Arc<DeviceBudgets>,
    /// Frame budgets per user, shared by the user's devices.
    pub user_budgets: Arc<UserBudgets>,
    /// Handshakes in progress per address (the cap on connections not yet past Hello).
    pub handshakes: Arc<HandshakeGate>,
}

/// The writing half of a transport.
pub trait FrameSink: Send + 'static {
    /// Makes room for `frames`, about to be sent (a batch), so that a buffering sink grows
    /// once per batch rather than frame by frame.
    fn reserve_for(&mut self, _frames: &[Bytes]) {}
    /// Writes one frame (may buffer).
    fn send(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Pushes buffered frames to the socket.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Closes the transport.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// How long a device closed for its frame rate must wait before its next Hello is served
/// (told as `reconnect_after_ms`, enforced by [`DeviceBudgets::resume`]).
const RATE_PENALTY: Duration = Duration::from_secs(5);

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

/// Most frames handed to the session in one message.
const MAX_READ_BATCH: usize = 256;

/// The writer keeps room for this many frames between batches; a larger batch's room is
/// freed once written.
const KEPT_WRITE_ROOM: usize = 64;

/// Runs one connection to its end. `inbound` yields whole frames (or framing errors);
/// `pending` is its place among its address's handshakes, given back once the Hello is
/// answered.
pub async fn serve<S, W>(mut inbound: S, sink: W, deps: ConnectionDeps, pending: Option<PendingHandshake>)
where
    S: Stream<Item = Result<Bytes, FrameError>> + Unpin,
    W: FrameSink,
{
    let config = deps.config.clone();
    let outbox = Outbox::new(config.outbound_queue);
    let writer = tokio::spawn(write_loop(sink, outbox.clone()));
    metrics::gauge!("switchboard_connections").increment(1.0);

    // Boxed: the handshake's state machine (the token check, the session's start: ~1.7
    // KB) would otherwise stay part of every connection's task for the connection's whole
    // life (memory per idle device).
    let handshaken = Box::pin(handshake(&mut inbound, &outbox, &deps, pending)).await;
    if let Some((session, (user, device), budgets)) = handshaken {
        read_loop(&mut inbound, &outbox, &session, &config, &deps.shutdown, &budgets).await;
        // Ordered after every frame the reader forwarded: the session handles them all
        // (acks included) before it stops, then closes the outbox (its end closes the
        // connection, whatever ended it).
        session.control(SessionControl::ConnectionClosed);
        drop(budgets);
        deps.budgets.release(device, Instant::now());
        deps.user_budgets.release(user, Instant::now());
    } else {
        // No session: a refusal closed the outbox with its reason; a peer that left
        // before its Hello (a load balancer's health check, a client giving up) did not,
        // and the writer would wait for frames forever. (The first close's frame wins.)
        outbox.close(Bytes::new());
    }
    let _ = writer.await;
    metrics::gauge!("switchboard_connections").decrement(1.0);
}

/// `pending` (the connection's place among its address's handshakes) is given back once
/// the Hello is answered: at Welcome, or by the refusal.
async fn handshake<S>(
    inbound: &mut S,
    outbox: &Outbox,
    deps: &ConnectionDeps,
    pending: Option<PendingHandshake>,
) -> Option<(Mailbox<SessionMsg>, (UserId, DeviceId), FrameBudget)>
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
    // Reconnecting buys no budget, and the delay advised by a rate-limit close is kept.
    let now = Instant::now();
    let budget = match (deps.budgets.resume(device.device_id, now), deps.user_budgets.resume(device.user_id, now)) {
        (Ok(device_budget), Ok(user_budget)) => FrameBudget { device: device_budget, user: user_budget },
        (device_budget, user_budget) => {
            let wait = device_budget.as_ref().err().or(user_budget.as_ref().err()).copied().unwrap_or_default();
            drop((device_budget, user_budget));
            deps.budgets.release(device.device_id, now);
            deps.user_budgets.release(device.user_id, now);
            let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
            fail(outbox, ErrorCode::RateLimited, "reconnected before the advised delay after a rate-limit close", ms);
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
    drop(pending);
    let args = SessionArgs { user: device.user_id, device: device.device_id, outbox: outbox.clone(), ctx: deps.node.ctx.clone() };
    match start_session(&deps.node.sessions.get_cell(), args).await {
        Ok(mailbox) => {
            tracing::debug!(user = %device.user_id, device = %device.device_id, client = %hello.client_name, "device connected");
            logins().increment(1);
            Some((mailbox, (device.user_id, device.device_id), budget))
        }
        Err(e) => {
            tracing::error!(error = %e, "session did not start");
            fail(outbox, ErrorCode::Internal, "session did not start", 2000);
            None
        }
    }
}

/// What the reader does with one frame.
enum Read {
    /// Hand it to the session.
    Frame(client_frame::Kind),
    /// Answered or dropped here.
    Handled,
    /// The device said Bye: hand it on, read nothing more.
    Bye(client_frame::Kind),
    /// Close the connection (the reason was queued).
    Close,
}

/// What a connection's frames are paid from: its device's budget and its user's.
struct FrameBudget {
    device: Arc<Budget>,
    user: Arc<Budget>,
}

impl FrameBudget {
    /// One frame at `now`: a token from the device's bucket, then one from the user's.
    fn allow(&self, now: Instant) -> bool {
        self.device.allow(now) && self.user.allow(now)
    }
}

struct ReadLimits<'a> {
    config: &'a ConnectionConfig,
    /// The device's and the user's frame budgets (shared with their other connections).
    rate: &'a FrameBudget,
    dropped: u32,
    bad: u32,
}

impl ReadLimits<'_> {
    fn check(&mut self, outbox: &Outbox, item: Result<Bytes, FrameError>) -> Read {
        let bytes = match item {
            Err(FrameError::TooLarge { len, max }) => {
                fail(outbox, ErrorCode::FrameTooLarge, &format!("frame of {len} bytes exceeds {max}"), 0);
                return Read::Close;
            }
            Err(FrameError::Io(_)) => return Read::Close,
            Err(e) => {
                fail(outbox, ErrorCode::BadFrame, &e.to_string(), 0);
                return Read::Close;
            }
            Ok(bytes) => bytes,
        };
        let kind = match protocol::decode_client(&bytes) {
            Ok(kind) => kind,
            Err(e) => {
                self.bad += 1;
                metrics::counter!("switchboard_frames_dropped_total", "reason" => "malformed").increment(1);
                if self.bad > self.config.max_bad_frames {
                    fail(outbox, ErrorCode::BadFrame, "too many malformed frames", 0);
                    return Read::Close;
                }
                outbox.push_now(err(ErrorCode::BadFrame, &e.to_string(), "", false));
                return Read::Handled;
            }
        };
        if !self.rate.allow(Instant::now()) {
            self.dropped += 1;
            metrics::counter!("switchboard_frames_dropped_total", "reason" => "rate").increment(1);
            if self.dropped > self.config.max_dropped {
                fail(outbox, ErrorCode::RateLimited, "too many frames", RATE_PENALTY.as_millis() as u32);
                self.rate.device.penalize(RATE_PENALTY, Instant::now());
                return Read::Close;
            }
            outbox.push_now(err(ErrorCode::RateLimited, "frame dropped: rate limit", &protocol::request_ref(&kind), false));
            return Read::Handled;
        }
        match kind {
            client_frame::Kind::Ping(ping) => {
                // Answered here: liveness must not wait behind the session's work.
                let pong = protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: ping.nonce }));
                outbox.push_now(protocol::encode_server(&pong));
                Read::Handled
            }
            client_frame::Kind::Bye(_) => Read::Bye(kind),
            kind => Read::Frame(kind),
        }
    }
}

async fn read_loop<S>(
    inbound: &mut S,
    outbox: &Outbox,
    session: &Mailbox<SessionMsg>,
    config: &ConnectionConfig,
    shutdown: &CancellationToken,
    budget: &FrameBudget,
) where
    S: Stream<Item = Result<Bytes, FrameError>> + Unpin,
{
    let idle = config.heartbeat * 3;
    let mut limits = ReadLimits { config, rate: budget, dropped: 0, bad: 0 };
    loop {
        let next = tokio::select! {
            _ = outbox.closed() => return,
            _ = shutdown.cancelled() => {
                // Shutting down: take no new requests, but keep the session (and so the
                // acks of what it already sent) alive until the server closes it.
                outbox.closed().await;
                return;
            }
            next = tokio::time::timeout(idle, inbound.next()) => next,
        };
        let first = match next {
            Err(_) => {
                fail(outbox, ErrorCode::IdleTimeout, "no frame for three heartbeat intervals", 1000);
                return;
            }
            Ok(None) => return,
            Ok(Some(item)) => item,
        };
        // Everything this read brought, as one batch.
        let mut frames = Vec::new();
        let mut item = Some(first);
        let mut end = false;
        while let Some(it) = item.take() {
            match limits.check(outbox, it) {
                Read::Frame(kind) => frames.push(kind),
                Read::Handled => {}
                Read::Bye(kind) => {
                    // Frames after Bye are ignored (docs/protocol.md).
                    frames.push(kind);
                    end = true;
                    break;
                }
                Read::Close => {
                    end = true;
                    break;
                }
            }
            if frames.len() >= MAX_READ_BATCH {
                break;
            }
            item = inbound.next().now_or_never().flatten();
        }
        if !frames.is_empty() {
            let refs: Vec<String> = if session.gauge().depth() > 0 { frames.iter().map(protocol::request_ref).collect() } else { Vec::new() };
            match session.send(SessionRequest::Frames(frames)) {
                Ok(()) => {}
                Err((MailboxError::Full, _)) => {
                    for r in refs {
                        outbox.push_now(protocol::encode_server(&RequestError::RateLimited("frame dropped: session busy".into()).frame(r)));
                    }
                }
                Err((MailboxError::Closed, _)) => return,
            }
        }
        if end {
            return;
        }
    }
}

async fn write_loop<W: FrameSink>(mut sink: W, outbox: Outbox) {
    let mut frames = Vec::new();
    loop {
        let taken = outbox.take(&mut frames).await;
        let last = match taken {
            Taken::Frames => None,
            Taken::Closing(last) => Some(last),
        };
        // Boxed, once per batch: the writes' and the grace timer's state machines are
        // twice the size of the wait for the next batch, where an idle connection spends
        // its life (memory per idle device).
        let ok = Box::pin(write_batch(&mut sink, &outbox, &mut frames, last.as_ref())).await;
        frames.clear();
        if frames.capacity() > KEPT_WRITE_ROOM {
            // A burst (a catch-up) is over: an idle connection keeps no room for it.
            frames = Vec::new();
        }
        if !ok {
            outbox.writer_gone();
            break;
        }
        if last.is_some() {
            break;
        }
    }
    let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, sink.close())).await;
}

/// Writes one batch taken from the outbox (and, when the connection is closing, its final
/// frame), then flushes; false once the socket failed or the close grace ran out.
async fn write_batch<W: FrameSink>(sink: &mut W, outbox: &Outbox, frames: &mut Vec<Bytes>, last: Option<&Option<Bytes>>) -> bool {
    let write = async {
        sink.reserve_for(frames);
        for frame in frames.drain(..) {
            // A server-decided close stops the batch: its final frame goes next.
            if outbox.is_preempted() {
                break;
            }
            sink.send(frame).await?;
        }
        if let Some(Some(last)) = last
            && !last.is_empty()
        {
            sink.send(last.clone()).await?;
        }
        sink.flush().await
    };
    // A device that stopped reading cannot hold a closing connection open: once the
    // outbox is closed, the writes get CLOSE_GRACE.
    let grace = async {
        outbox.closed().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        r = write => r.is_ok(),
        _ = grace => false,
    }
}

fn logins() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("switchboard_logins_total"))
}
