//! What a benchmarked server says about itself after a run: a few of its Prometheus
//! summaries (read from its public `/metrics`), so that a report can name where a latency
//! tail came from (the embedded store's checkpoints, the writer's batches) next to what
//! the clients measured.

use serde::Serialize;

/// One summary of the server's metrics (the exporter renders histograms as summaries:
/// quantiles over a sliding window, plus a total count and sum since start).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SummaryReading {
    /// Observations since the server started.
    pub count: u64,
    /// Their sum (seconds for `_seconds` metrics).
    pub sum: f64,
    /// The 99th percentile of the recent window.
    pub p99: f64,
    /// The largest observation of the recent window (quantile 1).
    pub max: f64,
}

/// Reads the summary `name` out of Prometheus text; `None` if the server never recorded it.
pub fn summary(text: &str, name: &str) -> Option<SummaryReading> {
    let mut reading = SummaryReading::default();
    let mut seen = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some((labels, value)) = rest.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        // Labels (`{backend="embedded"}`) may follow the name or its suffix.
        let is = |suffix: &str| labels == suffix || labels.strip_prefix(suffix).is_some_and(|l| l.starts_with('{'));
        if is("_count") {
            reading.count = value as u64;
            seen = true;
        } else if is("_sum") {
            reading.sum = value;
        } else if labels.starts_with('{') && labels.contains("quantile=\"0.99\"") {
            reading.p99 = value;
        } else if labels.starts_with('{') && labels.contains("quantile=\"1\"") {
            reading.max = value;
        }
    }
    seen.then_some(reading)
}

/// Reads the gauge (or counter) `name` without labels out of Prometheus text; `None` if
/// the server never set it.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Fetches the server's `/metrics` text from its HTTP address.
pub async fn fetch(http: std::net::SocketAddr) -> Result<String, super::LoadError> {
    let api = crate::client::HttpApi::new(format!("http://{http}"));
    let response = api.get("/metrics", None).await.map_err(|e| super::LoadError::Server(format!("metrics: {e}")))?;
    response.text().await.map_err(|e| super::LoadError::Server(format!("metrics: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_gauge_by_its_exact_name() {
        let text = "switchboard_sessions_started_total 12\nswitchboard_sessions 3\n";
        assert_eq!(gauge(text, "switchboard_sessions"), Some(3.0));
        assert_eq!(gauge(text, "switchboard_absent"), None);
    }

    #[test]
    fn reads_a_summary_and_ignores_other_metrics() {
        let text = "\
# TYPE switchboard_store_checkpoint_seconds summary
switchboard_store_checkpoint_seconds{quantile=\"0\"} 0.01
switchboard_store_checkpoint_seconds{quantile=\"0.99\"} 0.25
switchboard_store_checkpoint_seconds{quantile=\"1\"} 0.4
switchboard_store_checkpoint_seconds_sum 3.5
switchboard_store_checkpoint_seconds_count 12
switchboard_store_checkpoint_seconds_other_count 99
switchboard_store_batch_ops{backend=\"embedded\",quantile=\"1\"} 256
switchboard_store_batch_ops_sum{backend=\"embedded\"} 1000
switchboard_store_batch_ops_count{backend=\"embedded\"} 10
";
        let r = summary(text, "switchboard_store_checkpoint_seconds").expect("present");
        assert_eq!(r, SummaryReading { count: 12, sum: 3.5, p99: 0.25, max: 0.4 });
        let batches = summary(text, "switchboard_store_batch_ops").expect("labelled");
        assert_eq!(batches, SummaryReading { count: 10, sum: 1000.0, p99: 0.0, max: 256.0 });
        assert_eq!(summary(text, "switchboard_missing"), None);
    }
}
