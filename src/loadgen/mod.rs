//! Load generation for `switchboard bench`: starts a private server process (and, for
//! comparison, a bare relay), provisions users, drives real connections, and measures
//! what the benchmarks report: server CPU and RSS from /proc, the generator's own CPU,
//! send→deliver latency on the receiving device.
//!
//! - [`server`]: the benchmarked `switchboard serve` process and bulk provisioning.
//! - [`traffic`]: open-loop 1:1 and group traffic, one task per device.
//! - [`relay`]: the bare relay (no store, no actors, same frames): the box's ceiling.
//! - [`idle`], [`reconnect`], [`sessions`], [`cross_node`]: the other scenarios.

pub mod cli;
pub mod cross_node;
pub mod idle;
pub mod media;
pub mod reconnect;
pub mod reinstall;
pub mod relay;
pub mod rotation;
pub mod server;
pub mod server_metrics;
pub mod sessions;
pub mod traffic;

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;

pub use cross_node::{CrossNodeReport, cross_node};
pub use idle::{IdleReport, idle};
pub use reconnect::{ReconnectReport, reconnect};
pub use relay::RelayProcess;
pub use server::{BENCH_ADMIN_TOKEN, BenchStore, ServerProcess, provision, provision_bulk};
pub use sessions::{InProcessNode, SessionsReport, sessions};
pub use traffic::{TrafficReport, TrafficSpec};

use crate::client::ClientError;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The server process could not be started or did not become ready.
    #[error("server: {0}")]
    Server(String),
    /// A client operation failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading /proc or a file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `work` on every item, at most `parallel` at once, each on a task of its own;
/// results come in completion order. Why tasks: futures polled by one task (a plain
/// `buffer_unordered`) all run on one thread, which held the login scenarios to one core
/// of the generator and measured the generator, not the server. Errors: `Server` if a
/// task panicked.
pub(crate) async fn each_on_tasks<I, F, Fut, T, E>(items: I, parallel: usize, work: F) -> Result<Vec<Result<T, E>>, LoadError>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let joined: Vec<_> = futures_util::stream::iter(items).map(|item| tokio::spawn(work(item))).buffer_unordered(parallel.max(1)).collect().await;
    joined.into_iter().map(|r| r.map_err(|e| LoadError::Server(format!("a load task failed: {e}")))).collect()
}

/// A process whose cost a benchmark reports (the server, the relay).
pub trait Measured {
    /// Its process id.
    fn pid(&self) -> u32;

    /// User + system CPU time consumed so far.
    fn cpu_time(&self) -> Result<Duration, LoadError> {
        proc_cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident set size in bytes.
    fn rss_bytes(&self) -> Result<u64, LoadError> {
        proc_status(&format!("/proc/{}/status", self.pid()), "VmRSS:").map(|kb| kb * 1024)
    }

    /// Threads of the process.
    fn threads(&self) -> Result<u64, LoadError> {
        proc_status(&format!("/proc/{}/status", self.pid()), "Threads:")
    }
}

/// This process's CPU time (the load generator's own cost).
pub fn own_cpu_time() -> Result<Duration, LoadError> {
    proc_cpu_time("/proc/self/stat")
}

/// This process's resident set size in bytes.
pub fn own_rss() -> Result<u64, LoadError> {
    proc_status("/proc/self/status", "VmRSS:").map(|kb| kb * 1024)
}

fn proc_cpu_time(path: &str) -> Result<Duration, LoadError> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(11) + ticks(12);
    Ok(Duration::from_millis(total * 1000 / clock_ticks_per_second()))
}

fn proc_status(path: &str, field: &str) -> Result<u64, LoadError> {
    let status = std::fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| LoadError::Server(format!("no {field} in {path}")))
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // USER_HZ is 100 on every Linux architecture we run on; `getconf CLK_TCK` confirms it.
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
