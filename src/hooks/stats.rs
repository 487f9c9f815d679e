//! Counters of REST hook calls by app, method and outcome, with latency, and the
//! rate-limited log of failures: a back end that is down is one line every few seconds with a
//! count, not one line per stream.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use super::{HookAnswer, HookError};

/// Failures of one app and kind are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// A latency histogram. The buckets are `prometheus-client`'s own [`Histogram`], which
/// `/metrics` encodes as it is; the JSON views show the sum and count, which that type does
/// not give out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    #[serde(skip)]
    pub histogram: Histogram,
    pub latency_seconds_sum: f64,
    /// Every observation, including those above the largest bucket.
    pub latency_count: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new(LATENCY_BUCKETS),
            latency_seconds_sum: 0.0,
            latency_count: 0,
        }
    }
}

impl Latency {
    pub fn observe(&mut self, took: Duration) {
        self.observe_many(took, 1);
    }

    /// `n` observations of the same duration.
    pub fn observe_many(&mut self, took: Duration, n: u64) {
        let seconds = took.as_secs_f64();
        self.latency_seconds_sum += seconds * n as f64;
        self.latency_count += n;
        for _ in 0..n {
            self.histogram.observe(seconds);
        }
    }
}

/// What the calls of one app and method came to.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeCounts {
    pub calls: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by kind (`connect`, `timeout`, `status`, `garbage`, `too_large`, `saturated`).
    pub errors: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Default)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

#[derive(Default)]
pub struct HookStats {
    counts: Mutex<BTreeMap<(String, String), OutcomeCounts>>,
    logs: Mutex<BTreeMap<(String, &'static str), LogState>>,
}

impl HookStats {
    pub(super) fn record(
        &self,
        app: &str,
        method: &str,
        result: &Result<HookAnswer, HookError>,
        took: Duration,
    ) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let entry = counts
                .entry((app.to_string(), method.to_string()))
                .or_default();
            entry.calls += 1;
            entry.latency.observe(took);
            match result {
                Ok(answer) => *entry.statuses.entry(answer.status).or_default() += 1,
                Err(e) => *entry.errors.entry(e.kind()).or_default() += 1,
            }
        }
        if let Err(e) = result {
            self.failure(app, method, e);
        }
    }

    /// Counts a call that was never made (the app's cap on calls in flight was reached, or
    /// its circuit breaker is open).
    pub fn skipped(&self, app: &str, method: &str, e: &HookError) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let entry = counts
                .entry((app.to_string(), method.to_string()))
                .or_default();
            *entry.errors.entry(e.kind()).or_default() += 1;
        }
        self.failure(app, method, e);
    }

    fn failure(&self, app: &str, method: &str, e: &HookError) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let state = logs.entry((app.to_string(), e.kind())).or_default();
        let due = state.last.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            tracing::warn!(app, method, error = %e, suppressed = state.suppressed, "REST hook failed");
            state.last = Some(Instant::now());
            state.suppressed = 0;
        } else {
            state.suppressed += 1;
        }
    }

    /// A copy of every counter, by (app, method).
    pub fn snapshot(&self) -> BTreeMap<(String, String), OutcomeCounts> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_in_the_exposition() {
        let mut latency = Latency::default();
        latency.observe(Duration::from_millis(2));
        latency.observe_many(Duration::from_millis(30), 3);
        latency.observe(Duration::from_secs(9));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("call_seconds", "test", latency.histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (le, n) in [
            ("0.001", 0),
            ("0.0025", 1),
            ("0.025", 1),
            ("0.05", 4),
            ("5.0", 4),
        ] {
            let line = format!("call_seconds_bucket{{le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "no '{line}' in {text}");
        }
        assert!(
            text.contains("call_seconds_bucket{le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("call_seconds_count 5\n"), "{text}");
        assert_eq!(latency.latency_count, 5);
        assert!((latency.latency_seconds_sum - 9.092).abs() < 1e-9);
    }
}
