//! Counters of REST hook calls by app, method and outcome, with latency, and the
//! rate-limited log of failures: a back end that is down is one line every few seconds with a
//! count, not one line per stream.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{HookAnswer, HookError};

/// Failures of one app and kind are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// A latency histogram: sum and cumulative counts per bucket of [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub latency_seconds_sum: f64,
    /// Every observation, including those above the largest bucket.
    pub latency_count: u64,
    pub latency_buckets: Vec<u64>,
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
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (bucket, bound) in self.latency_buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += n;
            }
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
