//! `bench idle`: memory per connected idle device and the login rate.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::server::ServerProcess;
use super::{LoadError, Measured};
use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, Connection};
use crate::protocol::server_frame;

/// Result of the `idle` scenario.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Connected, authenticated devices.
    pub devices: usize,
    /// Server RSS before connecting, bytes.
    pub rss_before: u64,
    /// Server RSS with every device connected, bytes.
    pub rss_after: u64,
    /// (after − before) / devices.
    pub bytes_per_device: u64,
    /// Connections + Hello + catch-up per second.
    pub logins_per_sec: f64,
    /// Server CPU (user + system) per login from the first connection to the last
    /// CatchUpComplete, µs (work the server does after that is not counted).
    pub server_cpu_us_per_login: f64,
    /// The load generator's own CPU per login meanwhile, µs (it shares the machine).
    pub generator_cpu_us_per_login: f64,
}

/// Connects `credentials` (TCP) and measures server memory per connected idle device.
pub async fn idle(server: &ServerProcess, credentials: &[DeviceCredentials], parallel: usize) -> Result<(IdleReport, Vec<Connection>), LoadError> {
    let rss_before = server.rss_bytes()?;
    let transport = server.transport();
    let (server_cpu, own_cpu) = (server.cpu_time()?, super::own_cpu_time()?);
    let started = Instant::now();
    let conns: Vec<Result<Connection, ClientError>> = super::each_on_tasks(credentials.iter().cloned(), parallel, |c| {
        let transport = transport.clone();
        async move {
            let (mut conn, _) = Connection::open(&transport, &c.token).await?;
            conn.wait_for(Duration::from_secs(30), true, |k| matches!(k, server_frame::Kind::CatchUpComplete(_)).then_some(())).await?;
            Ok(conn)
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let (server_cpu, own_cpu) = (server.cpu_time()?.saturating_sub(server_cpu), super::own_cpu_time()?.saturating_sub(own_cpu));
    let conns = conns.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Let allocator caches settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.rss_bytes()?;
    let devices = conns.len();
    Ok((
        IdleReport {
            scenario: "idle",
            devices,
            rss_before,
            rss_after,
            bytes_per_device: rss_after.saturating_sub(rss_before) / devices.max(1) as u64,
            logins_per_sec: devices as f64 / elapsed.as_secs_f64(),
            server_cpu_us_per_login: server_cpu.as_secs_f64() * 1e6 / devices.max(1) as f64,
            generator_cpu_us_per_login: own_cpu.as_secs_f64() * 1e6 / devices.max(1) as f64,
        },
        conns,
    ))
}
