//! `switchboard bench key-rotation`: what key sharing costs the server when a group rotates
//! its Megolm session. A group of M members with D devices each is online; a sending
//! device shares a new session key with every other device at once: one `SendToDevice`
//! with one Olm-sized ciphertext per device (docs/e2ee.md). Every device acknowledges
//! each entry as it arrives (`AckToDevice`), as the SDK does. Reported: to-device
//! messages delivered per second, server CPU per message, and per rotation the time from
//! the send to the last device's delivery. A rotation to more devices than fit in one
//! frame (256 KiB) is sent as several `SendToDevice` frames, as the SDK does.
//!
//! Several senders (`--senders`, distinct members) rotate at once, each one rotation after
//! the other (closed loop): a rotation is rare in an app (membership changes, every N
//! messages), so the question is how many the server carries, not an open-loop rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use super::server::provision_bulk;
use super::{LoadError, Measured, ServerProcess, traffic};
use crate::client::{ClientError, HttpApi};
use crate::ids::{DeviceId, UserId};
use crate::protocol::server_frame;

/// The shape of the run.
#[derive(Debug, Clone, Copy)]
pub struct RotationSpec {
    /// Group members (users).
    pub members: usize,
    /// Devices per member (1 primary + D−1 linked).
    pub devices: usize,
    /// Members that rotate at once (their first device sends; it is not a target).
    pub senders: usize,
    /// Rotations per sender.
    pub rotations: usize,
    /// Bytes per ciphertext (an Olm pre-key message carrying a Megolm session key is
    /// about 400 bytes in the SDK's envelope).
    pub payload_bytes: usize,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    /// Group members.
    pub members: usize,
    /// Devices per member.
    pub devices_per_member: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Targets of each rotation (every device but the senders').
    pub targets_per_rotation: usize,
    /// Rotations in all.
    pub rotations: usize,
    /// Ciphertext size, bytes.
    pub payload_bytes: usize,
    /// From the first send to the last delivery, seconds.
    pub elapsed_s: f64,
    /// To-device messages delivered (and acknowledged).
    pub delivered: u64,
    /// Delivered per second over `elapsed_s`.
    pub delivered_per_s: f64,
    /// Server CPU (user + system) per delivered message, µs.
    pub server_cpu_us_per_message: f64,
    /// Per rotation, send → the last frame's `ToDeviceSent`, ms (p50, p99, max).
    pub stored_ms: [f64; 3],
    /// Per rotation, send → last device's delivery, ms (p50, p99, max).
    pub delivered_ms: [f64; 3],
    /// Server resident memory at the end, MB.
    pub server_rss_mb: f64,
}

/// When a rotation's send left and when its `ToDeviceSent` came back.
type SendTimes = (Instant, Instant);

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    [at(0.5), at(0.99), at(1.0)]
}

/// Runs the scenario against `server`.
pub async fn key_rotation(server: &ServerProcess, spec: RotationSpec, progress: impl Fn(&str)) -> Result<RotationReport, LoadError> {
    let members = spec.members.max(spec.senders + 1);
    let senders = spec.senders.max(1);
    progress("provisioning members");
    let primaries = provision_bulk(server, members, |_| {}).await?;
    progress("linking devices");
    let api = HttpApi::new(format!("http://{}", server.http));
    let linked: Vec<Result<crate::accounts::DeviceCredentials, ClientError>> =
        futures_util::stream::iter(primaries.iter().flat_map(|p| (1..spec.devices).map(move |i| (p.token.clone(), i))))
            .map(|(token, i)| {
                let api = api.clone();
                async move { api.link_device(&token, &format!("device {i}")).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut devices = primaries.clone();
    for l in linked {
        devices.push(l?);
    }
    progress("connecting devices");
    let mut conns = traffic::connect_all(&[server.transport()], &devices, 256).await?;
    let others: Vec<UserId> = primaries.iter().skip(1).map(|c| c.user_id).collect();
    conns[0].create_group("rotation bench", &others).await?;

    // Senders: the first device of the first `senders` members; targets: every other device.
    let sender_devices: Vec<DeviceId> = primaries[..senders].iter().map(|c| c.device_id).collect();
    let targets: Vec<(UserId, DeviceId)> =
        devices.iter().filter(|d| !sender_devices.contains(&d.device_id)).map(|d| (d.user_id, d.device_id)).collect();
    let total_rotations = senders * spec.rotations;
    let expected = (targets.len() * total_rotations) as u64;
    // Rotation r (sender s, round k) is r = s * rotations + k; its last delivery time.
    let last_delivery: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total_rotations]));
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let mut sender_conns = Vec::with_capacity(senders);
    let mut receivers = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        if i < senders {
            sender_conns.push(conn);
            continue;
        }
        let (last_delivery, delivered) = (last_delivery.clone(), delivered.clone());
        let per_device = total_rotations;
        receivers.push(tokio::spawn(async move {
            let mut conn = conn;
            for _ in 0..per_device {
                let entry = conn
                    .wait_for(Duration::from_secs(120), false, |k| match k {
                        server_frame::Kind::ToDevice(m) => Some(m.clone()),
                        _ => None,
                    })
                    .await?;
                let now = Instant::now();
                let r = entry.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) as usize;
                if let Ok(mut last) = last_delivery.lock()
                    && let Some(slot) = last.get_mut(r)
                {
                    *slot = Some(slot.map_or(now, |t| t.max(now)));
                }
                delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn.ack_to_device(entry.position).await?;
                // Frames other than to-device ones (the group's creation, device-list
                // notices) stay buffered; drop them so a long run holds no backlog.
                conn.discard_buffered();
            }
            Ok::<_, LoadError>(())
        }));
    }

    progress("rotating");
    let cpu_before = server.cpu_time()?;
    let started = Instant::now();
    let sent_at: Arc<Mutex<Vec<Option<SendTimes>>>> = Arc::new(Mutex::new(vec![None; total_rotations]));
    let mut sending = Vec::new();
    for (s, mut conn) in sender_conns.into_iter().enumerate() {
        let (targets, sent_at) = (targets.clone(), sent_at.clone());
        let (rotations, payload_bytes) = (spec.rotations, spec.payload_bytes.max(8));
        // ~48 bytes of framing per target (two 16-byte ids, tags, lengths).
        let per_frame = (200 * 1024 / (payload_bytes + 48)).clamp(1, 1024);
        sending.push(tokio::spawn(async move {
            for k in 0..rotations {
                let r = s * rotations + k;
                let mut payload = vec![0x5a; payload_bytes];
                payload[..8].copy_from_slice(&(r as u64).to_le_bytes());
                let payload = Bytes::from(payload);
                let before = Instant::now();
                // As many targets per frame as fit well under the 256 KiB frame limit (the
                // SDK splits the same way).
                for (part, chunk) in targets.chunks(per_frame).enumerate() {
                    let batch: Vec<(UserId, DeviceId, Bytes)> = chunk.iter().map(|(u, d)| (*u, *d, payload.clone())).collect();
                    conn.send_to_device(&format!("rotation-{r}-{part}"), batch).await?;
                }
                if let Ok(mut at) = sent_at.lock() {
                    at[r] = Some((before, Instant::now()));
                }
            }
            Ok::<_, LoadError>(conn)
        }));
    }
    let mut keep = Vec::new();
    for task in sending {
        keep.push(task.await.map_err(|e| LoadError::Server(e.to_string()))??);
    }
    for task in receivers {
        task.await.map_err(|e| LoadError::Server(e.to_string()))??;
    }
    let elapsed = started.elapsed();
    let cpu = server.cpu_time()?.saturating_sub(cpu_before);
    let delivered = delivered.load(std::sync::atomic::Ordering::Relaxed);
    if delivered != expected {
        return Err(LoadError::Server(format!("{delivered} of {expected} to-device messages delivered")));
    }
    let sent_at = sent_at.lock().map(|v| v.clone()).unwrap_or_default();
    let last = last_delivery.lock().map(|v| v.clone()).unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stored: Vec<f64> = sent_at.iter().flatten().map(|(b, a)| ms(a.duration_since(*b))).collect();
    let reached: Vec<f64> = sent_at.iter().zip(&last).filter_map(|(s, l)| Some(ms(l.as_ref()?.saturating_duration_since(s.as_ref()?.0)))).collect();
    drop(keep);
    Ok(RotationReport {
        members,
        devices_per_member: spec.devices,
        senders,
        targets_per_rotation: targets.len(),
        rotations: total_rotations,
        payload_bytes: spec.payload_bytes.max(8),
        elapsed_s: elapsed.as_secs_f64(),
        delivered,
        delivered_per_s: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        server_cpu_us_per_message: cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        stored_ms: percentiles(stored),
        delivered_ms: percentiles(reached),
        server_rss_mb: server.rss_bytes()? as f64 / 1e6,
    })
}
