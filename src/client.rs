//! A Rust client for Switchboard: the HTTP account API and a framed connection over TCP
//! or WebSocket. Used by the integration tests, the benchmarks and `switchboard client`.
//! It is deliberately thin: it speaks the protocol, it does not hide it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{ConversationId, DeviceId, UserId};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::codec::Framed;

use crate::accounts::{DeviceCredentials, DeviceInfo};
use crate::protocol::{self, FrameCodec, PROTOCOL_VERSION, client_frame, id_bytes, pb, server_frame};

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// HTTP transport failure.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered an HTTP error.
    #[error("server answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Socket failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// A frame did not decode.
    #[error("frame: {0}")]
    Frame(#[from] protocol::FrameError),
    /// The server sent an Error frame instead of the expected answer.
    #[error("server error {code:?}: {message}")]
    Rejected {
        /// Error code.
        code: protocol::ErrorCode,
        /// Text.
        message: String,
    },
    /// The connection closed.
    #[error("connection closed")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The TLS settings are unusable (CA file, server name).
    #[error("tls: {0}")]
    Tls(String),
    /// The server did not send a one-time code back (not in development mode).
    #[error("the server did not expose the one-time code (start it with --dev-expose-codes)")]
    NoDevCode,
}

/// The HTTP account API.
#[derive(Debug, Clone)]
pub struct HttpApi {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Issued {
    dev_code: Option<String>,
}

impl HttpApi {
    /// A client for `http://host:port`.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { base: base.into().trim_end_matches('/').to_owned(), http }
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            Ok(response)
        } else {
            let status = response.status().as_u16();
            Err(ClientError::Status { status, body: response.text().await.unwrap_or_default() })
        }
    }

    /// Asks for a one-time code; returns it when the server runs in development mode.
    pub async fn register(&self, phone: &str) -> Result<Option<String>, ClientError> {
        let r = self.http.post(format!("{}/v1/accounts/register", self.base)).json(&serde_json::json!({ "phone": phone })).send().await?;
        Ok(Self::check(r).await?.json::<Issued>().await?.dev_code)
    }

    /// Verifies a code and creates the primary device.
    pub async fn verify(&self, phone: &str, code: &str, device_name: &str) -> Result<DeviceCredentials, ClientError> {
        let body = serde_json::json!({ "phone": phone, "code": code, "device_name": device_name });
        let r = self.http.post(format!("{}/v1/accounts/verify", self.base)).json(&body).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Register + verify in one go (development servers only).
    pub async fn sign_up(&self, phone: &str, device_name: &str) -> Result<DeviceCredentials, ClientError> {
        let code = self.register(phone).await?.ok_or(ClientError::NoDevCode)?;
        self.verify(phone, &code, device_name).await
    }

    /// Links a new device (the caller must be the primary).
    pub async fn link_device(&self, token: &str, name: &str) -> Result<DeviceCredentials, ClientError> {
        let r = self.http.post(format!("{}/v1/devices", self.base)).bearer_auth(token).json(&serde_json::json!({ "name": name })).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Starts a device pairing (this is the new device).
    pub async fn start_pairing(&self, name: &str) -> Result<crate::pairing::PairingStarted, ClientError> {
        let r = self.http.post(format!("{}/v1/pairing", self.base)).json(&serde_json::json!({ "device_name": name })).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Claims the new device's token: `None` while the pairing is not approved (the server
    /// waits up to 25 s before saying so).
    pub async fn claim_pairing(&self, code: &str, claim_secret: &str) -> Result<Option<DeviceCredentials>, ClientError> {
        let body = serde_json::json!({ "code": code, "claim_secret": claim_secret, "wait_s": 25 });
        let r = self.http.post(format!("{}/v1/pairing/claim", self.base)).json(&body).send().await?;
        let r = Self::check(r).await?;
        if r.status() == reqwest::StatusCode::ACCEPTED { Ok(None) } else { Ok(Some(r.json().await?)) }
    }

    /// Lists the caller's devices.
    pub async fn devices(&self, token: &str) -> Result<Vec<DeviceInfo>, ClientError> {
        let r = self.http.get(format!("{}/v1/devices", self.base)).bearer_auth(token).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Revokes a device.
    pub async fn revoke(&self, token: &str, device: DeviceId) -> Result<(), ClientError> {
        let r = self.http.delete(format!("{}/v1/devices/{device}", self.base)).bearer_auth(token).send().await?;
        Self::check(r).await?;
        Ok(())
    }

    /// Registers this device's push token.
    pub async fn set_push_token(&self, token: &str, platform: &str, push_token: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({ "platform": platform, "token": push_token });
        let r = self.http.put(format!("{}/v1/devices/push-token", self.base)).bearer_auth(token).json(&body).send().await?;
        Self::check(r).await?;
        Ok(())
    }

    /// Removes this device's push token.
    pub async fn delete_push_token(&self, token: &str) -> Result<(), ClientError> {
        let r = self.http.delete(format!("{}/v1/devices/push-token", self.base)).bearer_auth(token).send().await?;
        Self::check(r).await?;
        Ok(())
    }

    /// One page of history as JSON (newest first).
    pub async fn history(&self, token: &str, conversation: ConversationId, before: u64, limit: usize) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/conversations/{conversation}/messages?before={before}&limit={limit}", self.base);
        let r = self.http.get(url).bearer_auth(token).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Raw GET, for tests of status codes.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Ok(req.send().await?)
    }
}

/// Where to connect.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Raw TCP, length-prefixed frames.
    Tcp(SocketAddr),
    /// WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`.
    Ws(String),
    /// Raw TCP inside TLS: the same frames, the server's certificate checked by `tls`.
    TcpTls {
        /// Server address.
        addr: SocketAddr,
        /// Trust and the name the certificate must be valid for.
        tls: TlsClient,
    },
    /// WebSocket over TLS: a `wss://` URL.
    WsTls {
        /// `wss://host:port/v1/ws`.
        url: String,
        /// Trust and the name the certificate must be valid for.
        tls: TlsClient,
    },
}

impl Transport {
    /// WebSocket on the HTTP address.
    pub fn ws(http: SocketAddr) -> Self {
        Transport::Ws(format!("ws://{http}/v1/ws"))
    }

    /// Secure WebSocket on the HTTP address.
    pub fn wss(http: SocketAddr, tls: TlsClient) -> Self {
        Transport::WsTls { url: format!("wss://{http}/v1/ws"), tls }
    }
}

/// What a TLS client trusts, and the name it expects the server's certificate to carry.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("name", &self.name).finish()
    }
}

impl TlsClient {
    /// Trusts the CA certificates of a PEM file; the server must present a certificate
    /// valid for `name` (a DNS name or an IP address).
    pub fn with_ca_file(ca: &std::path::Path, name: &str) -> Result<Self, ClientError> {
        let pem = std::fs::read(ca).map_err(|e| ClientError::Tls(format!("{}: {e}", ca.display())))?;
        Self::with_ca_pem(&pem, name)
    }

    /// As [`Self::with_ca_file`], from PEM bytes.
    pub fn with_ca_pem(pem: &[u8], name: &str) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(|e| ClientError::Tls(e.to_string()))?).map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("no CA certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).map_err(|e| ClientError::Tls(format!("server name {name:?}: {e}")))?;
        Ok(Self { config: Arc::new(config), name })
    }

    /// Opens TCP to `addr` and completes the handshake; returns the stream and the
    /// certificate the server presented.
    async fn connect(&self, addr: &str) -> Result<(BoxIo, Option<CertificateDer<'static>>), ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone()).connect(self.name.clone(), stream).await?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        Ok((Box::new(tls), leaf))
    }
}

/// Any byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
type BoxIo = Box<dyn Io>;

enum Wire {
    Tcp(Box<Framed<BoxIo, FrameCodec>>),
    Ws(Box<tokio_tungstenite::WebSocketStream<BoxIo>>),
}

/// One protocol connection.
pub struct Connection {
    wire: Wire,
    /// Frames received while waiting for something else, in arrival order.
    buffered: VecDeque<server_frame::Kind>,
    /// The certificate the server presented (TLS transports only).
    peer_certificate: Option<CertificateDer<'static>>,
}

/// Frames received on a split connection (protobuf bytes, one `ServerFrame` each).
pub type FrameStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, ClientError>> + Send>>;
/// Frames to send on a split connection (protobuf bytes, one `ClientFrame` each).
pub type FrameSink = std::pin::Pin<Box<dyn futures_util::Sink<Bytes, Error = ClientError> + Send>>;

/// Default wait for an expected frame.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

impl Connection {
    /// Opens the transport (no Hello yet).
    pub async fn connect(transport: &Transport) -> Result<Self, ClientError> {
        let framed = |io: BoxIo| Wire::Tcp(Box::new(Framed::new(io, FrameCodec::new(16 * 1024 * 1024))));
        let (wire, peer_certificate) = match transport {
            Transport::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                (framed(Box::new(stream)), None)
            }
            Transport::TcpTls { addr, tls } => {
                let (io, leaf) = tls.connect(&addr.to_string()).await?;
                (framed(io), leaf)
            }
            Transport::Ws(url) => {
                let stream = TcpStream::connect(ws_authority(url, 80)?).await?;
                stream.set_nodelay(true)?;
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), Box::new(stream) as BoxIo).await?;
                (Wire::Ws(Box::new(ws)), None)
            }
            Transport::WsTls { url, tls } => {
                let (io, leaf) = tls.connect(&ws_authority(url, 443)?).await?;
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), io).await?;
                (Wire::Ws(Box::new(ws)), leaf)
            }
        };
        Ok(Self { wire, buffered: VecDeque::new(), peer_certificate })
    }

    /// The certificate the server presented (DER), on a TLS transport.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.peer_certificate.as_ref().map(|c| c.as_ref())
    }

    /// Opens a TCP connection whose kernel receive buffer is capped at `recv_buffer` bytes,
    /// to play a device on a slow network (tests of slow-consumer handling).
    pub async fn connect_tcp_with_recv_buffer(addr: SocketAddr, recv_buffer: u32) -> Result<Self, ClientError> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_recv_buffer_size(recv_buffer)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let io: BoxIo = Box::new(stream);
        Ok(Self { wire: Wire::Tcp(Box::new(Framed::new(io, FrameCodec::new(16 * 1024 * 1024)))), buffered: VecDeque::new(), peer_certificate: None })
    }

    /// Connects and authenticates; returns the connection and the Welcome.
    pub async fn open(transport: &Transport, token: &str) -> Result<(Self, pb::Welcome), ClientError> {
        let mut conn = Self::connect(transport).await?;
        let welcome = conn.hello(token).await?;
        Ok((conn, welcome))
    }

    /// Sends raw bytes as one frame (tests of malformed input).
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        match &mut self.wire {
            Wire::Tcp(framed) => framed.send(bytes).await?,
            Wire::Ws(ws) => ws.send(WsMessage::Binary(bytes)).await?,
        }
        Ok(())
    }

    /// Sends one frame.
    pub async fn send(&mut self, kind: client_frame::Kind) -> Result<(), ClientError> {
        self.send_raw(protocol::encode_client(&protocol::client(kind))).await
    }

    /// Sends several frames with one flush (TCP) — for load generation.
    pub async fn send_many(&mut self, kinds: Vec<client_frame::Kind>) -> Result<(), ClientError> {
        match &mut self.wire {
            Wire::Tcp(framed) => {
                for kind in kinds {
                    framed.feed(protocol::encode_client(&protocol::client(kind))).await?;
                }
                SinkExt::<Bytes>::flush(framed.as_mut()).await?;
            }
            Wire::Ws(ws) => {
                for kind in kinds {
                    ws.feed(WsMessage::Binary(protocol::encode_client(&protocol::client(kind)))).await?;
                }
                ws.flush().await?;
            }
        }
        Ok(())
    }

    /// Next frame from the socket or the buffer; `None` once the server closed.
    pub async fn recv(&mut self) -> Result<Option<server_frame::Kind>, ClientError> {
        if let Some(kind) = self.buffered.pop_front() {
            return Ok(Some(kind));
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Result<Option<server_frame::Kind>, ClientError> {
        loop {
            let bytes = match &mut self.wire {
                Wire::Tcp(framed) => match framed.next().await {
                    Some(Ok(b)) => b,
                    Some(Err(protocol::FrameError::Io(e))) if is_reset(&e) => return Ok(None),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(None),
                },
                Wire::Ws(ws) => match ws.next().await {
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Close(_))) | None => return Ok(None),
                    Some(Ok(_)) => continue,
                    Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed | tokio_tungstenite::tungstenite::Error::AlreadyClosed)) => {
                        return Ok(None);
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) if is_reset(&e) => return Ok(None),
                    Some(Err(tokio_tungstenite::tungstenite::Error::Protocol(_))) => return Ok(None),
                    Some(Err(e)) => return Err(e.into()),
                },
            };
            return Ok(Some(protocol::decode_server(&bytes)?));
        }
    }

    /// Next frame within `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<server_frame::Kind, ClientError> {
        match tokio::time::timeout(wait, self.recv()).await {
            Ok(Ok(Some(kind))) => Ok(kind),
            Ok(Ok(None)) => Err(ClientError::Closed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Waits for the first frame `pick` accepts; other frames are kept for later `recv`s.
    /// An Error frame that `pick` does not accept ends the wait as `Rejected` if `fail_on_error`.
    pub async fn wait_for<T>(
        &mut self,
        wait: Duration,
        fail_on_error: bool,
        mut pick: impl FnMut(&server_frame::Kind) -> Option<T>,
    ) -> Result<T, ClientError> {
        if let Some(pos) = self.buffered.iter().position(|k| pick(k).is_some()) {
            let kind = self.buffered.remove(pos).ok_or(ClientError::Closed)?;
            return pick(&kind).ok_or(ClientError::Closed);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let kind = match tokio::time::timeout_at(deadline, self.recv_wire()).await {
                Ok(Ok(Some(kind))) => kind,
                Ok(Ok(None)) => return Err(ClientError::Closed),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ClientError::Timeout),
            };
            if let Some(found) = pick(&kind) {
                return Ok(found);
            }
            if fail_on_error && let server_frame::Kind::Error(e) = &kind {
                return Err(ClientError::Rejected { code: e.code(), message: e.message.clone() });
            }
            self.buffered.push_back(kind);
        }
    }

    /// Waits for the answer `pick` recognises, or the Error whose `request_ref` is
    /// `request_ref` (the request's id or client_msg_id).
    async fn answer<T>(&mut self, request_ref: String, pick: impl Fn(&server_frame::Kind) -> Option<T>) -> Result<T, ClientError> {
        self.wait_for(DEFAULT_WAIT, false, move |k| match k {
            server_frame::Kind::Error(e) if e.request_ref == request_ref => {
                Some(Err(ClientError::Rejected { code: e.code(), message: e.message.clone() }))
            }
            other => pick(other).map(Ok),
        })
        .await?
    }

    /// Sends Hello and waits for Welcome.
    pub async fn hello(&mut self, token: &str) -> Result<pb::Welcome, ClientError> {
        self.send(client_frame::Kind::Hello(pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_owned(),
            client_name: "switchboard-rs".into(),
        }))
        .await?;
        self.wait_for(DEFAULT_WAIT, true, |k| match k {
            server_frame::Kind::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await
    }

    /// Opens (or finds) the 1:1 conversation with `peer`.
    pub async fn open_direct(&mut self, peer: UserId) -> Result<ConversationId, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::OpenDirect(pb::OpenDirect { request_id, peer_user_id: id_bytes(peer) })).await?;
        let raw = self
            .wait_for(DEFAULT_WAIT, true, |k| match k {
                server_frame::Kind::DirectOpened(d) if d.request_id == request_id => Some(d.conversation_id.clone()),
                _ => None,
            })
            .await?;
        protocol::parse_id("conversation_id", &raw).map_err(|_| ClientError::Closed)
    }

    /// Creates a group; returns its id once the creation event is stored.
    pub async fn create_group(&mut self, subject: &str, members: &[UserId]) -> Result<ConversationId, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::CreateGroup(pb::CreateGroup {
            request_id,
            subject: subject.to_owned(),
            member_user_ids: members.iter().map(|m| id_bytes(*m)).collect(),
        }))
        .await?;
        let answer = self.group_answer(request_id).await?;
        protocol::parse_id("conversation_id", &answer.conversation_id).map_err(|_| ClientError::Closed)
    }

    /// Applies a group change and waits for its answer.
    pub async fn group_change(&mut self, conversation: ConversationId, change: pb::group_change::Change) -> Result<pb::GroupAnswer, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::GroupChange(pb::GroupChange { request_id, conversation_id: id_bytes(conversation), change: Some(change) }))
            .await?;
        self.group_answer(request_id).await
    }

    /// Joins a group by invite token.
    pub async fn join_group(&mut self, invite_token: &str) -> Result<pb::GroupAnswer, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::JoinGroup(pb::JoinGroup { request_id, invite_token: invite_token.to_owned() })).await?;
        self.group_answer(request_id).await
    }

    async fn group_answer(&mut self, request_id: u64) -> Result<pb::GroupAnswer, ClientError> {
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::GroupAnswer(a) if a.request_id == request_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Approves a new device's pairing code (this device must be the primary); answers the
    /// new device's name.
    pub async fn approve_pairing(&mut self, code: &str) -> Result<String, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::ApprovePairing(pb::ApprovePairing { request_id, code: code.to_owned() })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::PairingApproved(a) if a.request_id == request_id => Some(a.device_name.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a message (does not wait for the ack).
    pub async fn send_message(&mut self, conversation: ConversationId, client_msg_id: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send_kind(conversation, client_msg_id, pb::MessageKind::Normal, 0, payload.into(), &[]).await
    }

    /// Sends a message that declares `attachments` (media ids from uploads) next to its
    /// payload, without waiting.
    pub async fn send_with_attachments(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        payload: impl Into<Bytes>,
        attachments: &[crate::ids::MediaId],
    ) -> Result<(), ClientError> {
        self.send_kind(conversation, client_msg_id, pb::MessageKind::Normal, 0, payload.into(), attachments).await
    }

    async fn send_kind(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        kind: pb::MessageKind,
        reference_seq: u64,
        payload: Bytes,
        attachments: &[crate::ids::MediaId],
    ) -> Result<(), ClientError> {
        self.send(client_frame::Kind::Send(pb::Send {
            client_msg_id: client_msg_id.to_owned(),
            conversation_id: id_bytes(conversation),
            payload,
            kind: kind as i32,
            reference_seq,
            attachments: attachments.iter().map(|a| id_bytes(*a)).collect(),
        }))
        .await
    }

    /// Sends an edit of, or a reaction to, the message at `reference_seq`; waits for the ack.
    pub async fn send_reference(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        kind: pb::MessageKind,
        reference_seq: u64,
        payload: impl Into<Bytes>,
    ) -> Result<pb::SendAck, ClientError> {
        self.send_kind(conversation, client_msg_id, kind, reference_seq, payload.into(), &[]).await?;
        self.ack_of(client_msg_id).await
    }

    /// Waits for the SendAck (or Error) of `client_msg_id`.
    async fn ack_of(&mut self, client_msg_id: &str) -> Result<pb::SendAck, ClientError> {
        let id = client_msg_id.to_owned();
        self.answer(id.clone(), move |k| match k {
            server_frame::Kind::SendAck(a) if a.client_msg_id == id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Deletes a message for everyone; returns the answer once the event is stored.
    pub async fn delete_message(&mut self, conversation: ConversationId, seq: u64) -> Result<pb::GroupAnswer, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::DeleteMessage(pb::DeleteMessage { request_id, conversation_id: id_bytes(conversation), seq })).await?;
        self.group_answer(request_id).await
    }

    /// The current state of a group.
    pub async fn group_info(&mut self, conversation: ConversationId) -> Result<pb::GroupInfo, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::GroupInfo(pb::GroupInfoRequest { request_id, conversation_id: id_bytes(conversation) })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::GroupInfo(g) if g.request_id == request_id => Some(g.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes keys (key directory); returns the device's unclaimed one-time key count.
    pub async fn upload_keys(&mut self, mut upload: pb::UploadKeys) -> Result<pb::KeysUploaded, ClientError> {
        let request_id = rand::random::<u64>();
        upload.request_id = request_id;
        self.send(client_frame::Kind::UploadKeys(upload)).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::KeysUploaded(a) if a.request_id == request_id => Some(*a),
            _ => None,
        })
        .await
    }

    /// The devices (with identity keys) of some users.
    pub async fn query_devices(&mut self, users: &[UserId]) -> Result<pb::DeviceList, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::QueryDevices(pb::QueryDevices { request_id, user_ids: users.iter().map(|u| id_bytes(*u)).collect() })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::DeviceList(a) if a.request_id == request_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Claims one one-time key of each device.
    pub async fn claim_keys(&mut self, devices: &[(UserId, DeviceId)]) -> Result<pb::ClaimedKeys, ClientError> {
        let request_id = rand::random::<u64>();
        let devices = devices.iter().map(|(u, d)| pb::DeviceAddress { user_id: id_bytes(*u), device_id: id_bytes(*d) }).collect();
        self.send(client_frame::Kind::ClaimKeys(pb::ClaimKeys { request_id, devices })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::ClaimedKeys(a) if a.request_id == request_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Sends one payload to each of some devices (to-device messages); returns once the
    /// server has stored them all (ToDeviceSent) or with the server's Error.
    pub async fn send_to_device(&mut self, client_id: &str, targets: Vec<(UserId, DeviceId, Bytes)>) -> Result<(), ClientError> {
        let targets =
            targets.into_iter().map(|(u, d, payload)| pb::ToDeviceTarget { user_id: id_bytes(u), device_id: id_bytes(d), payload }).collect();
        self.send(client_frame::Kind::SendToDevice(pb::SendToDevice { client_id: client_id.to_owned(), targets })).await?;
        let id = client_id.to_owned();
        self.answer(client_id.to_owned(), move |k| match k {
            server_frame::Kind::ToDeviceSent(a) if a.client_id == id => Some(()),
            _ => None,
        })
        .await
    }

    /// Acknowledges this device's to-device messages up to `up_to` (their position).
    pub async fn ack_to_device(&mut self, up_to: u64) -> Result<(), ClientError> {
        self.send(client_frame::Kind::AckToDevice(pb::AckToDevice { up_to })).await
    }

    /// Acknowledges device-list change notices for these users.
    pub async fn ack_device_lists(&mut self, users: &[UserId]) -> Result<(), ClientError> {
        self.send(client_frame::Kind::AckDeviceLists(pb::AckDeviceLists { user_ids: users.iter().map(|u| id_bytes(*u)).collect() })).await
    }

    /// Per-member delivered/read times of one of our group messages.
    pub async fn message_info(&mut self, conversation: ConversationId, seq: u64) -> Result<pb::MessageInfoAnswer, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::MessageInfo(pb::MessageInfo { request_id, conversation_id: id_bytes(conversation), seq })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::MessageInfo(a) if a.request_id == request_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Sets disappearing messages (0 = off).
    pub async fn set_retention(&mut self, conversation: ConversationId, seconds: u32) -> Result<pb::GroupAnswer, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::SetRetention(pb::SetRetention { request_id, conversation_id: id_bytes(conversation), seconds })).await?;
        self.group_answer(request_id).await
    }

    /// Sends a message and waits for its SendAck.
    pub async fn send_and_ack(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<pb::SendAck, ClientError> {
        self.send_message(conversation, client_msg_id, payload).await?;
        self.ack_of(client_msg_id).await
    }

    /// Sends a message declaring `attachments` and waits for its SendAck.
    pub async fn send_with_attachments_and_ack(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        payload: impl Into<Bytes>,
        attachments: &[crate::ids::MediaId],
    ) -> Result<pb::SendAck, ClientError> {
        self.send_with_attachments(conversation, client_msg_id, payload, attachments).await?;
        self.ack_of(client_msg_id).await
    }

    /// Acknowledges delivery up to `seq`.
    pub async fn ack(&mut self, conversation: ConversationId, seq: u64) -> Result<(), ClientError> {
        self.send(client_frame::Kind::Ack(pb::Ack { conversation_id: id_bytes(conversation), seq })).await
    }

    /// Marks read up to `seq`.
    pub async fn read(&mut self, conversation: ConversationId, seq: u64) -> Result<(), ClientError> {
        self.send(client_frame::Kind::Read(pb::Read { conversation_id: id_bytes(conversation), seq })).await
    }

    /// Waits for the next conversation message.
    pub async fn next_message(&mut self, wait: Duration) -> Result<pb::Message, ClientError> {
        self.wait_for(wait, false, |k| match k {
            server_frame::Kind::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// One page of history over the socket.
    pub async fn history(&mut self, conversation: ConversationId, before_seq: u64, limit: u32) -> Result<pb::HistoryPage, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::History(pb::HistoryRequest { request_id, conversation_id: id_bytes(conversation), before_seq, limit })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::History(h) if h.request_id == request_id => Some(h.clone()),
            _ => None,
        })
        .await
    }

    /// One page of the conversation list: what changed after `since_version` (0: all),
    /// after the continuation token `after` ("" for the first page).
    pub async fn inbox(&mut self, since_version: u64, after: &str, limit: u32) -> Result<pb::InboxPage, ClientError> {
        let request_id = rand::random::<u64>();
        self.send(client_frame::Kind::Inbox(pb::InboxRequest { request_id, since_version, after: after.to_string(), limit })).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::Inbox(p) if p.request_id == request_id => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Changes the user's state of a conversation (`UpdateChat`, its request id set here);
    /// returns the entry after the change.
    pub async fn update_chat(&mut self, mut update: pb::UpdateChat) -> Result<pb::InboxEntry, ClientError> {
        let request_id = rand::random::<u64>();
        update.request_id = request_id;
        self.send(client_frame::Kind::UpdateChat(update)).await?;
        self.answer(request_id.to_string(), move |k| match k {
            server_frame::Kind::InboxChanged(c) if c.request_id == request_id => c.entry.clone(),
            _ => None,
        })
        .await
    }

    /// Splits the connection into a stream of received frames and a sink of frames to
    /// send, for load generators that read and write concurrently. Frames already
    /// buffered are returned too.
    pub fn into_split(self) -> (FrameStream, FrameSink, Vec<server_frame::Kind>) {
        let buffered = self.buffered.into_iter().collect();
        match self.wire {
            Wire::Tcp(framed) => {
                let parts = framed.into_parts();
                let (read, write) = tokio::io::split(parts.io);
                let mut reader = tokio_util::codec::FramedRead::new(read, parts.codec.clone());
                reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
                let writer = tokio_util::codec::FramedWrite::new(write, parts.codec);
                (Box::pin(reader.map(|r| r.map_err(ClientError::from))), Box::pin(writer.sink_map_err(ClientError::from)), buffered)
            }
            Wire::Ws(ws) => {
                let (sink, stream) = ws.split();
                let stream = stream.filter_map(|m| {
                    std::future::ready(match m {
                        Ok(WsMessage::Binary(b)) => Some(Ok(b)),
                        Ok(_) => None,
                        Err(e) => Some(Err(ClientError::from(e))),
                    })
                });
                let sink = sink.sink_map_err(ClientError::from).with(|b: Bytes| std::future::ready(Ok::<_, ClientError>(WsMessage::Binary(b))));
                (Box::pin(stream), Box::pin(sink), buffered)
            }
        }
    }

    /// Drops frames kept by earlier `wait_for`s; returns how many there were.
    /// The Closing frame among the buffered frames, if the server sent one.
    pub fn closing(&self) -> Option<pb::Closing> {
        self.buffered.iter().find_map(|k| match k {
            server_frame::Kind::Closing(c) => Some(c.clone()),
            _ => None,
        })
    }

    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buffered.len();
        self.buffered.clear();
        n
    }

    /// Closes politely.
    pub async fn bye(mut self) -> Result<(), ClientError> {
        self.send(client_frame::Kind::Bye(pb::Bye {})).await?;
        while let Ok(Some(_)) = self.recv_timeout(Duration::from_secs(2)).await.map(Some) {}
        Ok(())
    }
}

/// A device connection that survives the loss of its node, as a mobile app's does: when
/// the connection ends it reconnects, after the delay the server asked for (Closing's
/// `reconnect_after_ms`, as a draining node sends) or an exponential backoff with jitter,
/// to the next node of its list (in production: the same load-balancer address). The
/// server then resumes from the device's cursors (catch-up). Sends are retried with the
/// same `client_msg_id` until acknowledged, so a message is stored once whatever fails.
pub struct Roaming {
    transports: Vec<Transport>,
    token: String,
    at: usize,
    conn: Connection,
    /// Connections made after the first.
    pub reconnects: u64,
}

/// How long one send waits for its ack before the connection is considered lost.
const ROAMING_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long a reconnection keeps trying before giving up.
const ROAMING_GIVE_UP: Duration = Duration::from_secs(30);

impl Roaming {
    /// Connects to the first node of `transports` that answers, starting at `start`.
    pub async fn connect(transports: Vec<Transport>, token: &str, start: usize) -> Result<Self, ClientError> {
        let n = transports.len().max(1);
        let (conn, at) = Self::dial(&transports, token, start % n, Duration::ZERO).await?;
        Ok(Self { transports, token: token.to_owned(), at, conn, reconnects: 0 })
    }

    /// The current connection.
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Which node (index in the list) the device is connected to.
    pub fn node(&self) -> usize {
        self.at
    }

    /// Replaces the node list (nodes added or restarted on new addresses).
    pub fn set_transports(&mut self, transports: Vec<Transport>) {
        self.transports = transports;
    }

    /// Drops the connection and connects again, to the next node first. A `Closing` that
    /// says not to reconnect (`reconnect_after_ms` = 0: revoked, replaced, bad token) is
    /// returned as an error instead.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        let closing = self.conn.closing();
        if let Some(c) = &closing
            && c.reconnect_after_ms == 0
        {
            return Err(ClientError::Rejected { code: c.code(), message: c.reason.clone() });
        }
        let asked = closing.map(|c| Duration::from_millis(c.reconnect_after_ms.into())).unwrap_or(Duration::ZERO);
        let (conn, at) = Self::dial(&self.transports, &self.token, self.at + 1, asked).await?;
        self.conn = conn;
        self.at = at;
        self.reconnects += 1;
        Ok(())
    }

    async fn dial(transports: &[Transport], token: &str, start: usize, first_delay: Duration) -> Result<(Connection, usize), ClientError> {
        let n = transports.len();
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let give_up = tokio::time::Instant::now() + ROAMING_GIVE_UP;
        let mut delay = first_delay;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0usize;
        loop {
            tokio::time::sleep(delay).await;
            let at = (start + attempt) % n;
            let opened = tokio::time::timeout(Duration::from_secs(3), Connection::open(&transports[at], token)).await;
            match opened {
                Ok(Ok((conn, _))) => return Ok((conn, at)),
                Ok(Err(ClientError::Rejected { code, message }))
                    if matches!(code, protocol::ErrorCode::InvalidToken | protocol::ErrorCode::DeviceRevoked) =>
                {
                    return Err(ClientError::Rejected { code, message });
                }
                _ if tokio::time::Instant::now() >= give_up => return Err(ClientError::Timeout),
                _ => {}
            }
            attempt += 1;
            // Full jitter, capped: a node's devices do not come back in lockstep.
            delay = backoff.mul_f64(rand::random::<f64>());
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Sends until the message is acknowledged, reconnecting as needed. UNAVAILABLE (the
    /// conversation is moving between nodes) is retried on the same connection.
    pub async fn send_until_acked(&mut self, conversation: ConversationId, client_msg_id: &str, payload: Bytes) -> Result<pb::SendAck, ClientError> {
        loop {
            let attempt = tokio::time::timeout(ROAMING_ACK_WAIT, self.conn.send_and_ack(conversation, client_msg_id, payload.clone())).await;
            match attempt {
                Ok(Ok(ack)) => return Ok(ack),
                Ok(Err(ClientError::Rejected { code: protocol::ErrorCode::Unavailable, .. })) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(ClientError::Rejected { code, message })) => return Err(ClientError::Rejected { code, message }),
                _ => self.reconnect().await?,
            }
        }
    }

    /// The next frame, reconnecting when the connection ends (`None` only on timeout).
    pub async fn next_frame(&mut self, wait: Duration) -> Result<Option<server_frame::Kind>, ClientError> {
        match self.conn.recv_timeout(wait).await {
            Ok(server_frame::Kind::Closing(c)) => {
                self.conn.buffered.push_back(server_frame::Kind::Closing(c));
                self.reconnect().await?;
                Ok(None)
            }
            Ok(kind) => Ok(Some(kind)),
            Err(ClientError::Timeout) => Ok(None),
            Err(_) => {
                self.reconnect().await?;
                Ok(None)
            }
        }
    }
}

/// `host:port` of a WebSocket URL (`default_port` when it names none).
fn ws_authority(url: &str, default_port: u16) -> Result<String, ClientError> {
    let request = url.into_client_request()?;
    let uri = request.uri();
    let host = uri.host().ok_or_else(|| ClientError::Tls(format!("{url}: no host")))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(default_port)))
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionAborted
    )
}
