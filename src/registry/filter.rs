//! Filters of find, terminate and hold: the conditions on a stream record, ANDed. Typed
//! values only (the REST wire format is read in `api`); pure functions over records, so
//! they can be fuzzed and benchmarked without a server.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Status, StreamRecord};

/// A named filter provided by a Lua plugin, with its arguments. Shown in the audit trail as
/// the request spelled it (`"filter": name, "args": {…}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginFilter {
    #[serde(rename = "filter")]
    pub name: String,
    pub args: Value,
}

/// Conditions on a stream; every one that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_session_ids: Option<BTreeSet<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginFilter>,
}

impl StreamFilter {
    /// True when no condition is set: such a filter matches every stream.
    pub fn is_empty(&self) -> bool {
        *self == StreamFilter::default()
    }

    /// Whether `record` meets the built-in conditions. The plugin filter, if any, is
    /// evaluated by the caller that owns the plugins.
    pub fn matches(&self, record: &StreamRecord) -> bool {
        self.media_session_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&record.media_session_id))
            && self.name.as_ref().is_none_or(|n| *n == record.name)
            && self.published.is_none_or(|p| p == record.published)
            && self.status.is_none_or(|s| s == record.status)
            && self.app_key.as_ref().is_none_or(|a| *a == record.app_key)
    }
}

/// The ids a filter names, if it names any: lets the registry look them up instead of scanning.
pub(super) fn named_ids(filter: &StreamFilter) -> Option<&BTreeSet<Uuid>> {
    filter.media_session_ids.as_ref()
}

/// Deduplicates while keeping order; used when merging index lookups.
pub(super) fn dedup(ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}
