//! The bare relay: the box's ceiling for 1:1 traffic, measured in the same command as the
//! server. It speaks the same frames over the same TCP framing (Hello → Welcome and
//! CatchUpComplete, OpenDirect → DirectOpened, Send → SendAck and Message to the peer's
//! devices, Ping → Pong; Acks are read and dropped), with none of the server's work: no
//! store, no actors, no authentication beyond a token table, no receipts. One task per
//! connection; a map from user to the outbound queues of their connections.
//!
//! It runs as its own process (`switchboard bench relay`) so that its CPU and memory are
//! read from /proc exactly as the server's are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

use super::{LoadError, Measured};
use crate::accounts::DeviceCredentials;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{self, FrameCodec, PROTOCOL_VERSION, client_frame, id_bytes, parse_id, pb, server_frame};
use crate::store::direct_conversation_id;

/// Made-up credentials for the relay (it has no accounts): random ids and tokens.
pub fn credentials(n: usize) -> Vec<DeviceCredentials> {
    (0..n)
        .map(|_| DeviceCredentials { user_id: UserId::random(), device_id: DeviceId::random(), token: hex::encode(rand::random::<[u8; 16]>()) })
        .collect()
}

/// A relay child process.
pub struct RelayProcess {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where devices connect.
    pub tcp: SocketAddr,
}

impl RelayProcess {
    /// Starts `binary bench relay` with the token table of `credentials`.
    pub fn start(binary: &Path, credentials: &[DeviceCredentials]) -> Result<Self, LoadError> {
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("tokens.json");
        std::fs::write(&tokens, serde_json::to_vec(credentials).map_err(|e| LoadError::Server(e.to_string()))?)?;
        let ready: PathBuf = dir.path().join("ready");
        let child = Command::new(binary)
            .args(["bench", "relay", "--tokens"])
            .arg(&tokens)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(tcp) = text.trim().parse()
            {
                return Ok(Self { child, _dir: dir, tcp });
            }
            if Instant::now() > deadline {
                return Err(LoadError::Server("relay not ready after 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Measured for RelayProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay's state: who is connected where, and the 1:1 conversations opened.
#[derive(Default)]
struct Relay {
    tokens: HashMap<String, (UserId, DeviceId)>,
    devices: RwLock<HashMap<UserId, Vec<mpsc::UnboundedSender<Bytes>>>>,
    conversations: RwLock<HashMap<ConversationId, Arc<Conversation>>>,
}

struct Conversation {
    members: [UserId; 2],
    seq: AtomicU64,
}

/// `switchboard bench relay`: serves until killed; writes its TCP address to `ready`.
pub async fn serve(tokens_file: &Path, ready: &Path) -> Result<(), LoadError> {
    let credentials: Vec<DeviceCredentials> = serde_json::from_slice(&std::fs::read(tokens_file)?).map_err(|e| LoadError::Server(e.to_string()))?;
    let relay = Arc::new(Relay { tokens: credentials.into_iter().map(|c| (c.token, (c.user_id, c.device_id))).collect(), ..Default::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    std::fs::write(ready, listener.local_addr()?.to_string())?;
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(connection(relay.clone(), socket));
    }
}

fn encode(kind: server_frame::Kind) -> Bytes {
    protocol::encode_server(&protocol::server(kind))
}

async fn connection(relay: Arc<Relay>, socket: TcpStream) {
    let (mut read, mut write) = socket.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut codec = FrameCodec::new(1 << 20);
    let mut inbound = BytesMut::with_capacity(4096);
    let mut outbound = BytesMut::new();
    let mut me: Option<(UserId, DeviceId)> = None;
    loop {
        tokio::select! {
            n = read.read_buf(&mut inbound) => {
                if !matches!(n, Ok(n) if n > 0) {
                    break;
                }
                while let Ok(Some(frame)) = codec.decode(&mut inbound) {
                    if let Ok(kind) = protocol::decode_client(&frame) {
                        handle(&relay, &tx, &mut me, kind);
                    }
                }
            }
            Some(frame) = rx.recv() => {
                let _ = codec.encode(frame, &mut outbound);
                while let Ok(more) = rx.try_recv() {
                    let _ = codec.encode(more, &mut outbound);
                }
                if write.write_all_buf(&mut outbound).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some((user, _)) = me
        && let Ok(mut devices) = relay.devices.write()
        && let Some(list) = devices.get_mut(&user)
    {
        list.retain(|t| !t.same_channel(&tx));
    }
}

fn handle(relay: &Relay, tx: &mpsc::UnboundedSender<Bytes>, me: &mut Option<(UserId, DeviceId)>, kind: client_frame::Kind) {
    match kind {
        client_frame::Kind::Hello(hello) => {
            let Some(&(user, device)) = relay.tokens.get(&hello.token) else { return };
            *me = Some((user, device));
            if let Ok(mut devices) = relay.devices.write() {
                devices.entry(user).or_default().push(tx.clone());
            }
            let _ = tx.send(encode(server_frame::Kind::Welcome(pb::Welcome {
                protocol_version: PROTOCOL_VERSION,
                user_id: id_bytes(user),
                device_id: id_bytes(device),
                server_time_ms: crate::store::now_ms(),
                heartbeat_interval_ms: 30_000,
                max_frame_bytes: 1 << 20,
            })));
            let _ = tx.send(encode(server_frame::Kind::CatchUpComplete(pb::CatchUpComplete { conversations: 0, messages: 0 })));
        }
        client_frame::Kind::OpenDirect(open) => {
            let (Some((user, _)), Ok(peer)) = (*me, parse_id::<UserId>("peer_user_id", &open.peer_user_id)) else { return };
            let id = direct_conversation_id(user, peer);
            if let Ok(mut conversations) = relay.conversations.write() {
                conversations.entry(id).or_insert_with(|| Arc::new(Conversation { members: [user, peer], seq: AtomicU64::new(0) }));
            }
            let _ =
                tx.send(encode(server_frame::Kind::DirectOpened(pb::DirectOpened { request_id: open.request_id, conversation_id: id_bytes(id) })));
        }
        client_frame::Kind::Send(send) => {
            let (Some((user, device)), Ok(id)) = (*me, parse_id::<ConversationId>("conversation_id", &send.conversation_id)) else { return };
            let Some(conversation) = relay.conversations.read().ok().and_then(|c| c.get(&id).cloned()) else { return };
            let seq = conversation.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let now = crate::store::now_ms();
            let _ = tx.send(encode(server_frame::Kind::SendAck(pb::SendAck {
                client_msg_id: send.client_msg_id.clone(),
                conversation_id: send.conversation_id.clone(),
                seq,
                server_time_ms: now,
                duplicate: false,
            })));
            let message = encode(server_frame::Kind::Message(pb::Message {
                conversation_id: send.conversation_id,
                seq,
                sender_user_id: id_bytes(user),
                sender_device_id: id_bytes(device),
                client_msg_id: send.client_msg_id,
                server_time_ms: now,
                payload: send.payload,
                event: None,
                kind: send.kind,
                reference_seq: send.reference_seq,
                deleted: false,
                delivered_to: 0,
                read_by: 0,
            }));
            if let Ok(devices) = relay.devices.read() {
                for member in conversation.members.iter().filter(|m| **m != user) {
                    for peer in devices.get(member).into_iter().flatten() {
                        let _ = peer.send(message.clone());
                    }
                }
            }
        }
        client_frame::Kind::Ping(ping) => {
            let _ = tx.send(encode(server_frame::Kind::Pong(pb::Pong { nonce: ping.nonce })));
        }
        // Acks, reads and the rest: read and dropped.
        _ => {}
    }
}
