//! Counters of keep-alive verdicts by source (hook, batch; plugin with the plugin issue) and
//! result (keep, stop, failed, skipped), with a latency histogram per source.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::hooks::Latency;

use super::Source;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictCounts {
    pub results: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Default)]
pub struct KeepAliveStats {
    by_source: Mutex<BTreeMap<&'static str, VerdictCounts>>,
}

impl KeepAliveStats {
    pub(super) fn count(&self, source: Source, result: &'static str, took: Duration) {
        self.count_many(source, result, 1, took);
    }

    /// Counts `n` verdicts with the same result and time, under one lock.
    pub(super) fn count_many(&self, source: Source, result: &'static str, n: u64, took: Duration) {
        if n == 0 {
            return;
        }
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(source.as_str()).or_default();
        *entry.results.entry(result).or_default() += n;
        if result != "skipped" && result != "abstain" {
            entry.latency.observe_many(took, n);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, VerdictCounts> {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
