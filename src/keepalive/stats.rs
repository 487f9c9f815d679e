//! Counters of keep-alive verdicts by source (hook, batch; plugin with the plugin issue) and
//! result (keep, stop, failed, skipped), with a latency histogram per source.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::hooks::stats_buckets::LATENCY_BUCKETS;

use super::Source;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictCounts {
    pub results: BTreeMap<&'static str, u64>,
    pub latency_seconds_sum: f64,
    /// Cumulative counts per bucket of the hooks' latency buckets.
    pub latency_buckets: Vec<u64>,
}

#[derive(Default)]
pub struct KeepAliveStats {
    by_source: Mutex<BTreeMap<&'static str, VerdictCounts>>,
}

impl KeepAliveStats {
    pub(super) fn count(&self, source: Source, result: &'static str, took: Duration) {
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(source.as_str()).or_default();
        *entry.results.entry(result).or_default() += 1;
        if result == "skipped" || result == "abstain" {
            return;
        }
        entry.latency_seconds_sum += took.as_secs_f64();
        if entry.latency_buckets.is_empty() {
            entry.latency_buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (bucket, bound) in entry.latency_buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if took.as_secs_f64() <= bound {
                *bucket += 1;
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, VerdictCounts> {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
