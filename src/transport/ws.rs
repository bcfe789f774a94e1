//! WebSocket transport at `/v1/ws`: one binary message per frame. actix-ws's message
//! stream is not `Send`, so the reader loop stays on the actix worker that accepted the
//! upgrade; the session actor and the writer task run on the shared tokio runtime.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

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

/// What one WebSocket message means for the protocol: a frame (binary), a violation
/// (text: protocol frames are binary), nothing (control frames: `on_ping` answers pings),
/// or the end (close, transport errors). `max` is the largest frame in bytes.
pub fn frame_of(msg: Result<AggregatedMessage, actix_ws::ProtocolError>, max: usize, on_ping: &impl Fn(Bytes)) -> Option<Result<Bytes, FrameError>> {
    match msg {
        Ok(AggregatedMessage::Binary(bytes)) => Some(Ok(bytes)),
        Ok(AggregatedMessage::Text(_)) => Some(Err(FrameError::Malformed("text messages are not frames; send binary".into()))),
        Ok(AggregatedMessage::Ping(p)) => {
            on_ping(p);
            None
        }
        Ok(AggregatedMessage::Pong(_)) => None,
        Ok(AggregatedMessage::Close(_)) => Some(Err(FrameError::Io(std::io::Error::other("peer closed")))),
        Err(actix_ws::ProtocolError::Overflow) => Some(Err(FrameError::TooLarge { len: max + 1, max })),
        Err(e) => Some(Err(FrameError::Io(std::io::Error::other(e.to_string())))),
    }
}

/// The protocol's frames from a WebSocket's messages: frames of at most `max` bytes
/// (fragmented messages reassembled up to `max`), ending after the first error (which is
/// yielded) or at a transport error or close (which is not).
pub fn inbound(stream: actix_ws::MessageStream, max: usize, on_ping: impl Fn(Bytes) + 'static) -> impl Stream<Item = Result<Bytes, FrameError>> {
    stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max)
        .filter_map(move |msg| std::future::ready(frame_of(msg, max, &on_ping)))
        // The first error ends the stream: actix-ws repeats a protocol error forever
        // (the bytes that caused it stay in its buffer), so a reader that went on would
        // spin. A transport error or close ends it silently.
        .scan(false, |failed, item| {
            std::future::ready(match item {
                _ if *failed => None,
                Err(FrameError::Io(_)) => None,
                Err(e) => {
                    *failed = true;
                    Some(Err(e))
                }
                ok => Some(ok),
            })
        })
}

/// The upgrade handler.
#[utoipa::path(get, path = "/v1/ws", tag = "public", responses(
    (status = 101, description = "Switching to the WebSocket protocol; each binary message is one protobuf frame (docs/protocol.md)"),
    (status = 400, description = "Not a WebSocket upgrade request"),
    (status = 429, description = "too_many_handshakes: this address has too many connections still in their handshake (Retry-After)", body = crate::http::api::ErrorBody),
))]
pub async fn upgrade(req: HttpRequest, body: web::Payload, deps: web::Data<ConnectionDeps>) -> actix_web::Result<HttpResponse> {
    // The handshake cap, before the upgrade: refused with a plain HTTP answer.
    let pending = match req.peer_addr().map(|a| deps.handshakes.enter(a.ip())) {
        Some(None) => {
            metrics::counter!("switchboard_connections_rejected_total", "code" => "TOO_MANY_HANDSHAKES").increment(1);
            return Ok(HttpResponse::TooManyRequests().insert_header((actix_web::http::header::RETRY_AFTER, "1")).json(
                crate::http::api::ErrorBody {
                    error: "too_many_handshakes".into(),
                    message: "too many connections from this address are still in their handshake".into(),
                },
            ));
        }
        Some(Some(pending)) => pending,
        None => None,
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let deps = deps.get_ref().clone();
    let control = session.clone();
    // WebSocket pings are answered here, off the protocol's path.
    let inbound = inbound(stream, deps.config.max_frame, move |p| {
        let mut s = control.clone();
        actix_web::rt::spawn(async move {
            let _ = s.pong(&p).await;
        });
    });
    actix_web::rt::spawn(async move {
        connection::serve(Box::pin(inbound), WsSink(session), deps, pending).await;
    });
    Ok(response)
}
