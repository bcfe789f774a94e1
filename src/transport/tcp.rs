//! Raw TCP transport: 4-byte big-endian length, then the protobuf frame.

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::connection::{self, ConnectionDeps, FrameSink};
use crate::protocol::FrameCodec;

struct TcpSink(FramedWrite<OwnedWriteHalf, FrameCodec>);

impl FrameSink for TcpSink {
    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.0.feed(frame).await.map_err(std::io::Error::other)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<Bytes>::flush(&mut self.0).await.map_err(std::io::Error::other)
    }

    async fn close(mut self) {
        let _ = SinkExt::<Bytes>::close(&mut self.0).await;
    }
}

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
            let inbound = FramedRead::new(read, FrameCodec::new(max));
            let sink = TcpSink(FramedWrite::new(write, FrameCodec::new(max)));
            tracing::trace!(%peer, "tcp connection");
            connection::serve(inbound, sink, deps).await;
        });
    }
}
