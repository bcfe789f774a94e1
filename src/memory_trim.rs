//! Gives freed heap memory back to the operating system.
//!
//! glibc's allocator keeps what the process freed in its arenas (one per thread that
//! allocated, up to 8 per core) and returns only the top of the main heap by itself: after
//! a burst of load (queued frames, actor states, store pages) a node measured the same RSS
//! 30 s after every client had left as at the peak (BENCHMARKS.md, "Memory that comes
//! back"). `malloc_trim(0)` walks every arena and releases each whole free page inside
//! them (`MADV_DONTNEED`), so it is called on a blocking thread at a fixed interval; it
//! costs a walk of the free chunks, recorded as `switchboard_malloc_trim_seconds`.
//! Elsewhere than glibc this does nothing.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Runs `malloc_trim(0)` every `interval` until `stop` is cancelled (`interval` zero: never).
pub async fn run(interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || !supported() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A walk of every arena: off the runtime's worker threads.
        let took = tokio::task::spawn_blocking(|| {
            let started = Instant::now();
            trim();
            started.elapsed()
        })
        .await;
        if let Ok(took) = took {
            metrics::histogram!("switchboard_malloc_trim_seconds").record(took.as_secs_f64());
        }
    }
}

/// True where trimming means something (glibc on Linux).
pub fn supported() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes the allocator's own locks and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_live_memory_intact() {
        // Free a lot, keep some, trim: what is kept reads back unchanged.
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|_| vec![7u8; 64 * 1024]).collect();
        drop(freed);
        trim();
        for (i, block) in kept.iter().enumerate() {
            assert!(block.iter().all(|b| *b == i as u8));
        }
    }

    #[tokio::test]
    async fn a_zero_interval_never_runs_and_a_cancelled_one_returns() {
        tokio::time::timeout(Duration::from_secs(1), run(Duration::ZERO, CancellationToken::new())).await.expect("returns at once");
        let stop = CancellationToken::new();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), run(Duration::from_millis(10), stop)).await.expect("returns when cancelled");
    }
}
