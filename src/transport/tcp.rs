//! Raw TCP transport: 4-byte big-endian length, then the protobuf frame; optionally
//! inside TLS (the same framing within the encrypted stream).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::connection::{self, ConnectionDeps, FrameSink};
use super::handshakes::PendingHandshake;
use crate::protocol::FrameCodec;

/// Frames are gathered in a buffer that starts empty and is written out on flush. Unlike
/// tokio-util's `FramedWrite` (8 KiB reserved per connection up front) an idle connection
/// holds no write buffer: memory per idle device is a headline figure.
struct TcpSink<W> {
    socket: W,
    buffer: BytesMut,
}

/// Above this, `send` writes out instead of buffering more.
const WRITE_HIGH_WATER: usize = 64 * 1024;

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for TcpSink<W> {
    fn reserve_for(&mut self, frames: &[Bytes]) {
        // Each frame and its length prefix; past the high-water mark `send` writes out.
        let bytes: usize = frames.iter().map(|f| 4 + f.len()).sum();
        self.buffer.reserve(bytes.min(WRITE_HIGH_WATER));
    }

    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.buffer.reserve(4 + frame.len());
        self.buffer.put_u32(frame.len() as u32);
        self.buffer.extend_from_slice(&frame);
        if self.buffer.len() >= WRITE_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.socket.write_all_buf(&mut self.buffer).await?;
        if self.buffer.capacity() > WRITE_HIGH_WATER {
            // Give back what a burst grew.
            self.buffer = BytesMut::new();
        }
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.socket.shutdown().await;
    }
}

/// Initial read buffer; it grows for larger frames.
const READ_BUFFER: usize = 512;

/// Accepts TCP connections until `stop` is cancelled. Each connection runs on its own task;
/// with `tls`, its TLS handshake runs there too (bounded by the Hello timeout), so a slow
/// or silent client never holds up the accept loop.
pub async fn serve(listener: TcpListener, deps: ConnectionDeps, tls: Option<TlsAcceptor>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE under a connection storm: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let deps = deps.clone();
        let tls = tls.clone();
        // Counted from the accept: a TLS handshake is part of the connection's handshake.
        let pending = deps.handshakes.enter(peer.ip());
        tokio::spawn(async move {
            tracing::trace!(%peer, tls = tls.is_some(), "tcp connection");
            let Some(pending) = pending else {
                refuse_busy_address(socket, tls.is_some()).await;
                return;
            };
            match tls {
                None => {
                    let (read, write) = socket.into_split();
                    run(read, write, deps, pending).await;
                }
                // Boxed: the TLS handshake and a TLS connection's state machines are
                // larger than a plain one's, and every plain connection's task would
                // otherwise be sized for them (memory per idle device).
                Some(acceptor) => Box::pin(run_tls(acceptor, socket, deps, pending)).await,
            }
        });
    }
}

/// One TLS connection: its handshake (bounded by the Hello timeout), then [`run`].
async fn run_tls(acceptor: TlsAcceptor, socket: TcpStream, deps: ConnectionDeps, pending: Option<PendingHandshake>) {
    if let Some(stream) = handshake(&acceptor, socket, deps.config.hello_timeout).await {
        let (read, write) = tokio::io::split(stream);
        run(read, write, deps, pending).await;
    }
}

/// The server side of a TLS handshake, within `limit`.
async fn handshake(acceptor: &TlsAcceptor, socket: TcpStream, limit: Duration) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            metrics::counter!("switchboard_tls_handshake_failures_total", "listener" => "tcp").increment(1);
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("switchboard_tls_handshake_failures_total", "listener" => "tcp").increment(1);
            None
        }
    }
}

/// A connection from an address with too many handshakes in progress: on plain TCP it
/// gets `Closing{RATE_LIMITED, reconnect_after_ms=1000}` before the socket closes (over
/// TLS, where nothing can be said before a handshake we refuse to spend, just the close).
async fn refuse_busy_address(mut socket: TcpStream, tls: bool) {
    metrics::counter!("switchboard_connections_rejected_total", "code" => "TOO_MANY_HANDSHAKES").increment(1);
    if !tls {
        let closing = crate::protocol::closing_frame(
            crate::protocol::ErrorCode::RateLimited,
            "too many connections from this address are still in their handshake",
            1000,
        );
        let frame = crate::protocol::encode_server(&closing);
        let mut bytes = BytesMut::with_capacity(4 + frame.len());
        bytes.put_u32(frame.len() as u32);
        bytes.extend_from_slice(&frame);
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&bytes)).await;
    }
    let _ = socket.shutdown().await;
}

/// One connection: frames in through the length-prefix codec, frames out through the sink.
async fn run<R, W>(read: R, write: W, deps: ConnectionDeps, pending: Option<PendingHandshake>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max = deps.config.max_frame;
    let inbound = FramedRead::with_capacity(read, FrameCodec::new(max), READ_BUFFER);
    let sink = TcpSink { socket: write, buffer: BytesMut::new() };
    connection::serve(inbound, sink, deps, pending).await;
}
