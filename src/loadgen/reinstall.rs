//! `bench reinstall`: the first sync of a reinstalled (newly linked) device of a user with
//! many conversations and a long history: the conversation list (every `InboxRequest`
//! page) and the first catch-up, in time and bytes. Also used by the test of the same
//! (tests/inbox.rs), which asserts the bounds.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prost::Message as _;
use serde::Serialize;

use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, Connection, HttpApi, Transport};
use crate::ids::ConversationId;
use crate::protocol::{self, server_frame};

/// What the new device's first sync cost.
#[derive(Debug, Clone, Serialize)]
pub struct ReinstallReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Conversations of the user.
    pub conversations: usize,
    /// Messages stored in them.
    pub messages_stored: u64,
    /// The server's `--catch-up-recent` of this run (None: its default).
    pub catch_up_recent: Option<usize>,
    /// From Hello to CatchUpComplete, ms.
    pub catch_up_ms: f64,
    /// Messages in the catch-up.
    pub catch_up_messages: u64,
    /// Bytes of the frames from Welcome to CatchUpComplete (protobuf, without the 4-byte
    /// TCP length prefix).
    pub catch_up_bytes: u64,
    /// Every page of the list (`InboxRequest`, since 0, pages of 500), ms.
    pub inbox_ms: f64,
    /// Entries of the list.
    pub inbox_entries: usize,
    /// Bytes of the `InboxPage` frames.
    pub inbox_bytes: u64,
}

fn frame_bytes(kind: &server_frame::Kind) -> u64 {
    protocol::server(kind.clone()).encoded_len() as u64
}

/// Fills the history: each peer opens a 1:1 with `owner` and sends `messages` messages
/// of `payload` bytes (`parallel` peers at once). Returns the conversations.
pub async fn fill(
    transport: &Transport,
    owner: &DeviceCredentials,
    peers: &[DeviceCredentials],
    messages: u64,
    payload: usize,
    parallel: usize,
) -> Result<Vec<ConversationId>, ClientError> {
    let results: Vec<Result<ConversationId, ClientError>> = futures_util::stream::iter(peers.iter().cloned())
        .map(|peer| {
            let transport = transport.clone();
            let owner = owner.user_id;
            async move {
                let (mut conn, _) = Connection::open(&transport, &peer.token).await?;
                let id = conn.open_direct(owner).await?;
                // In bursts below the per-device frame budget, each waited for.
                for start in (1..=messages).step_by(400) {
                    let end = (start + 399).min(messages);
                    for i in start..=end {
                        conn.send_message(id, &format!("fill-{i}"), vec![b'x'; payload]).await?;
                    }
                    conn.wait_for(Duration::from_secs(60), true, |k| matches!(k, server_frame::Kind::SendAck(a) if a.seq == end).then_some(()))
                        .await?;
                }
                conn.bye().await?;
                Ok(id)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Links a new device to `primary`'s account (a reinstall) and measures its first sync:
/// the catch-up, then every page of the list.
pub async fn measure(transport: &Transport, api: &HttpApi, primary: &DeviceCredentials) -> Result<ReinstallReport, ClientError> {
    let device = api.link_device(&primary.token, "reinstalled phone").await?;
    let started = Instant::now();
    let (mut conn, _) = Connection::open(transport, &device.token).await?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    conn.wait_for(Duration::from_secs(300), true, |k| {
        bytes += frame_bytes(k);
        match k {
            server_frame::Kind::Message(_) => {
                messages += 1;
                None
            }
            server_frame::Kind::CatchUpComplete(_) => Some(()),
            _ => None,
        }
    })
    .await?;
    let catch_up = started.elapsed();
    let started = Instant::now();
    let (mut entries, mut inbox_bytes, mut after) = (0usize, 0u64, String::new());
    loop {
        let page = conn.inbox(0, &after, 500).await?;
        inbox_bytes += frame_bytes(&server_frame::Kind::Inbox(page.clone()));
        entries += page.entries.len();
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    let inbox = started.elapsed();
    conn.bye().await?;
    Ok(ReinstallReport {
        scenario: "reinstall",
        conversations: 0,
        messages_stored: 0,
        catch_up_recent: None,
        catch_up_ms: catch_up.as_secs_f64() * 1000.0,
        catch_up_messages: messages,
        catch_up_bytes: bytes,
        inbox_ms: inbox.as_secs_f64() * 1000.0,
        inbox_entries: entries,
        inbox_bytes,
    })
}
