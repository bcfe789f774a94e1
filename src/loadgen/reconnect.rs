//! `bench reconnect`: a reconnect storm of devices that each missed messages.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadError;
use super::server::ServerProcess;
use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, Connection};
use crate::ids::UserId;
use crate::protocol::{self, server_frame};

/// Result of the `reconnect` scenario.
#[derive(Debug, Serialize)]
pub struct ReconnectReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Devices that dropped and reconnected at once.
    pub devices: usize,
    /// Messages each of them missed.
    pub missed_per_device: u64,
    /// Devices whose catch-up delivered exactly what they missed.
    pub caught_up: usize,
    /// From the first reconnect to the last device caught up, seconds.
    pub seconds_until_all_caught_up: f64,
    /// Per-device time from the start of the storm to its CatchUpComplete, percentiles (ms).
    pub catch_up_ms_p50: f64,
    /// 99th percentile.
    pub catch_up_ms_p99: f64,
}

/// Every device (all but the first user, who sends) drops, misses `missed` messages in
/// its group, and reconnects at the same moment; measures until all have caught up.
pub async fn reconnect(
    server: &ServerProcess,
    credentials: &[DeviceCredentials],
    missed: u64,
    parallel: usize,
) -> Result<ReconnectReport, LoadError> {
    const GROUP: usize = 1000;
    let transport = server.transport();
    let (sender, members) = credentials.split_first().ok_or_else(|| LoadError::Server("no users".into()))?;
    let (mut s, _) = Connection::open(&transport, &sender.token).await?;
    let mut groups = Vec::new();
    for chunk in members.chunks(GROUP) {
        let ids: Vec<UserId> = chunk.iter().map(|c| c.user_id).collect();
        groups.push(s.create_group("storm", &ids).await?);
    }
    // Every member connects once and acknowledges the creation event, so what it misses
    // later is exactly the `missed` messages.
    let settle: Vec<Result<(), ClientError>> = super::each_on_tasks(members.iter().cloned(), parallel, |c| {
        let transport = transport.clone();
        async move {
            let (mut conn, _) = Connection::open(&transport, &c.token).await?;
            let m = conn.next_message(Duration::from_secs(30)).await?;
            conn.ack(protocol::parse_id("conversation_id", &m.conversation_id).unwrap_or_default(), m.seq).await?;
            conn.bye().await
        }
    })
    .await?;
    settle.into_iter().collect::<Result<Vec<_>, _>>()?;
    // The server ends those sessions after the clients left; the storm starts once it has
    // (else it would measure the end of 10,000 sessions as well). One stays: the sender's.
    // (Their detached last-seen writes may still be in the writer's queue.)
    sessions_down_to(server, 1).await?;
    for group in &groups {
        for k in 0..missed {
            s.send_and_ack(*group, &format!("missed-{k}"), &b"you were away"[..]).await?;
        }
    }
    let started = Instant::now();
    // Each device stays connected until every one has caught up: a storm of reconnections,
    // not of reconnections and disconnections.
    let results: Vec<Result<(bool, Duration, Connection), ClientError>> = super::each_on_tasks(members.iter().cloned(), parallel, |c| {
        let transport = transport.clone();
        async move {
            let (mut conn, _) = Connection::open(&transport, &c.token).await?;
            let got = conn
                .wait_for(Duration::from_secs(60), true, |k| match k {
                    server_frame::Kind::CatchUpComplete(done) => Some(done.messages),
                    _ => None,
                })
                .await?;
            let at = started.elapsed();
            Ok((got == missed, at, conn))
        }
    })
    .await?;
    let total = started.elapsed();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| LoadError::Server(e.to_string()))?;
    let mut caught_up = 0;
    let mut connections = Vec::with_capacity(results.len());
    for r in results {
        let (exact, at, conn) = r?;
        caught_up += usize::from(exact);
        let _ = histogram.record((at.as_micros() as u64).max(1));
        connections.push(conn);
    }
    drop(connections);
    Ok(ReconnectReport {
        scenario: "reconnect",
        devices: members.len(),
        missed_per_device: missed,
        caught_up,
        seconds_until_all_caught_up: total.as_secs_f64(),
        catch_up_ms_p50: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        catch_up_ms_p99: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Waits (up to 30 s) until the server counts at most `n` sessions.
async fn sessions_down_to(server: &ServerProcess, n: u64) -> Result<(), LoadError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = super::server_metrics::fetch(server.http).await?;
        match super::server_metrics::gauge(&text, "switchboard_sessions") {
            Some(count) if count <= n as f64 => return Ok(()),
            _ if Instant::now() >= deadline => return Err(LoadError::Server("the server's sessions did not end within 30 s".into())),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
