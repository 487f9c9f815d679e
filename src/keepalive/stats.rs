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
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(source.as_str()).or_default();
        *entry.results.entry(result).or_default() += 1;
        if result != "skipped" && result != "abstain" {
            entry.latency.observe(took);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, VerdictCounts> {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
