//! Push notifications: devices without a live connection are notified through the webhook
//! sink (coalesced, without content, retried on failure); connected devices are not.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, TestServer, online, user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A tiny HTTP receiver: every POST body (JSON) goes to the channel; the first
/// `fail_first` requests are answered 500 to exercise retries.
async fn receiver(fail_first: u32) -> (String, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let failures = Arc::new(AtomicU32::new(fail_first));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else { continue };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + length {
                        continue;
                    }
                    let body = &buf[head_end + 4..head_end + 4 + length];
                    let failing = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1)).is_ok();
                    let status = if failing { "500 Internal Server Error" } else { "200 OK" };
                    if !failing && let Ok(json) = serde_json::from_slice(body) {
                        let _ = tx.send(json);
                    }
                    let _ = socket.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
                    return;
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_a_coalesced_push_and_online_ones_do_not() {
    let (url, mut pushes) = receiver(1).await;
    let sink = format!("webhook:{url}");
    let server = TestServer::start_with(&["--push-sink", &sink, "--push-coalesce-ms", "200"]);
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let bob_laptop = api.link_device(&bob.token, "laptop").await.unwrap();
    for (creds, token) in [(&bob, "bob-phone"), (&bob_laptop, "bob-laptop"), (&carol, "carol-phone")] {
        api.set_push_token(&creds.token, "fcm", token).await.unwrap();
    }
    let mut a = online(&server, Kind::Tcp, &alice).await;
    // Bob's phone is connected; his laptop and Carol are not.
    let _b = online(&server, Kind::Tcp, &bob).await;
    let group = a.create_group("push", &[bob.user_id, carol.user_id]).await.unwrap();
    for i in 0..3 {
        a.send_and_ack(group, &format!("p-{i}"), &b"secret content"[..]).await.unwrap();
    }

    let mut counts: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while counts.values().sum::<u64>() < 6 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let push = tokio::time::timeout(remaining, pushes.recv()).await.expect("pushes for both offline devices").unwrap();
        assert_eq!(push["conversation_id"], group.to_string());
        assert_eq!(push["sender_user_id"], alice.user_id.to_string());
        assert!(!push.to_string().contains("secret"), "a push must carry no content: {push}");
        *counts.entry(push["token"].as_str().unwrap().to_owned()).or_default() += push["count"].as_u64().unwrap();
    }
    assert_eq!(counts.get("bob-laptop"), Some(&3));
    assert_eq!(counts.get("carol-phone"), Some(&3));
    assert!(!counts.contains_key("bob-phone"), "a connected device is not pushed");
    // The receiver failed the first delivery with 500: the counts above are only complete
    // because it was retried. Nothing else arrives (no push for the sender or online devices).
    assert!(tokio::time::timeout(Duration::from_millis(800), pushes.recv()).await.is_err());

    // Once Carol removes her token, she is no longer pushed.
    api.delete_push_token(&carol.token).await.unwrap();
    a.send_and_ack(group, "p-last", &b"x"[..]).await.unwrap();
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await.unwrap().unwrap();
    assert_eq!(push["token"], "bob-laptop");
    assert!(tokio::time::timeout(Duration::from_millis(800), pushes.recv()).await.is_err());
}
