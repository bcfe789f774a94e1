//! WebSocket transport at `/v1/ws`: one binary message per frame. actix-ws's message
//! stream is not `Send`, so the reader loop stays on the actix worker that accepted the
//! upgrade; the session actor and the writer task run on the shared tokio runtime.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytes::Bytes;
use futures_util::StreamExt;

use super::connection::{self, ConnectionDeps, FrameSink};
use crate::protocol::FrameError;

struct WsSink(actix_ws::Session);

impl FrameSink for WsSink {
    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.0.binary(frame).await.map_err(|_| std::io::Error::other("websocket closed"))
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn close(self) {
        let _ = self.0.close(Some(CloseReason { code: CloseCode::Normal, description: None })).await;
    }
}

/// The upgrade handler.
#[utoipa::path(get, path = "/v1/ws", tag = "public", responses(
    (status = 101, description = "Switching to the WebSocket protocol; each binary message is one protobuf frame (docs/protocol.md)"),
    (status = 400, description = "Not a WebSocket upgrade request"),
))]
pub async fn upgrade(req: HttpRequest, body: web::Payload, deps: web::Data<ConnectionDeps>) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let deps = deps.get_ref().clone();
    let max = deps.config.max_frame;
    let control = session.clone();
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    // WebSocket control frames (ping/close) are handled here; binary messages become
    // protocol frames; text messages are a protocol violation.
    let inbound = stream.filter_map(move |msg| {
        let out = match msg {
            Ok(AggregatedMessage::Binary(bytes)) => Some(Ok(bytes)),
            Ok(AggregatedMessage::Text(_)) => Some(Err(FrameError::Malformed("text messages are not frames; send binary".into()))),
            Ok(AggregatedMessage::Ping(p)) => {
                let mut s = control.clone();
                actix_web::rt::spawn(async move {
                    let _ = s.pong(&p).await;
                });
                None
            }
            Ok(AggregatedMessage::Pong(_)) => None,
            Ok(AggregatedMessage::Close(_)) => Some(Err(FrameError::Io(std::io::Error::other("peer closed")))),
            Err(actix_ws::ProtocolError::Overflow) => Some(Err(FrameError::TooLarge { len: max + 1, max })),
            Err(e) => Some(Err(FrameError::Io(std::io::Error::other(e.to_string())))),
        };
        std::future::ready(out)
    });
    actix_web::rt::spawn(async move {
        let inbound = Box::pin(inbound.take_while(|item| std::future::ready(!matches!(item, Err(FrameError::Io(_))))));
        connection::serve(inbound, WsSink(session), deps).await;
    });
    Ok(response)
}
