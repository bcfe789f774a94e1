//! Raw TCP transport: 4-byte big-endian length, then the protobuf frame.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::connection::{self, ConnectionDeps, FrameSink};
use crate::protocol::FrameCodec;

/// Frames are gathered in a buffer that starts empty and is written out on flush. Unlike
/// tokio-util's `FramedWrite` (8 KiB reserved per connection up front) an idle connection
/// holds no write buffer: memory per idle device is a headline figure.
struct TcpSink {
    socket: OwnedWriteHalf,
    buffer: BytesMut,
}

/// Above this, `send` writes out instead of buffering more.
const WRITE_HIGH_WATER: usize = 64 * 1024;

impl FrameSink for TcpSink {
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

/// Accepts TCP connections until `stop` is cancelled. Each connection runs on its own task.
pub async fn serve(listener: TcpListener, deps: ConnectionDeps, stop: CancellationToken) {
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let deps = deps.clone();
        tokio::spawn(async move {
            let (read, write) = socket.into_split();
            let max = deps.config.max_frame;
            let inbound = FramedRead::with_capacity(read, FrameCodec::new(max), READ_BUFFER);
            let sink = TcpSink { socket: write, buffer: BytesMut::new() };
            tracing::trace!(%peer, "tcp connection");
            connection::serve(inbound, sink, deps).await;
        });
    }
}
