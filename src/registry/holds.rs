//! Stop-and-hold: after a terminate that asks for it, new publishes and plays that the
//! terminated streams' filter matches are refused until the hold expires or is released.
//! Pure data and matching; the registry owns the table and the API layer the HTTP answers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{StreamFilter, StreamRecord, TerminationSource};

/// The longest hold a request may ask for: one day.
pub const MAX_HOLD_MS: u64 = 24 * 60 * 60 * 1000;
/// Holds kept at once; a terminate asking for more is refused.
pub const MAX_HOLDS: usize = 10_000;

/// One stream a hold names: new streams with this name, direction and app are held.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldStream {
    pub name: String,
    pub published: bool,
    pub app_key: String,
}

impl From<&StreamRecord> for HeldStream {
    fn from(r: &StreamRecord) -> Self {
        HeldStream {
            name: r.name.clone(),
            published: r.published,
            app_key: r.app_key.clone(),
        }
    }
}

/// Which new streams a hold refuses: the built-in fields of the terminate filter that a new
/// stream can have (name, direction, app), and — when the filter picked streams by id, status
/// or a plugin, which a new stream cannot match — the streams it actually stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<BTreeSet<HeldStream>>,
}

impl HoldFilter {
    /// The hold a terminate with `filter` that stopped `stopped` puts in place.
    pub fn of(filter: &StreamFilter, stopped: &[StreamRecord]) -> Self {
        let by_identity = filter.media_session_ids.is_some()
            || filter.status.is_some()
            || filter.plugin.is_some();
        HoldFilter {
            name: filter.name.clone(),
            published: filter.published,
            app_key: filter.app_key.clone(),
            streams: by_identity.then(|| stopped.iter().map(HeldStream::from).collect()),
        }
    }

    /// The hold of exactly one stream (a keep-alive verdict's).
    pub fn one(record: &StreamRecord) -> Self {
        HoldFilter {
            streams: Some(BTreeSet::from([HeldStream::from(record)])),
            ..HoldFilter::default()
        }
    }

    pub fn matches(&self, name: &str, published: bool, app_key: &str) -> bool {
        self.covers(&HeldStream {
            name: name.to_string(),
            published,
            app_key: app_key.to_string(),
        })
    }

    /// Whether the hold refuses `stream`; the key is built once per check, not per hold.
    fn covers(&self, stream: &HeldStream) -> bool {
        self.name.as_deref().is_none_or(|n| n == stream.name)
            && self.published.is_none_or(|p| p == stream.published)
            && self.app_key.as_deref().is_none_or(|a| a == stream.app_key)
            // A lookup, not a scan: a hold may name thousands of streams.
            && self.streams.as_ref().is_none_or(|streams| streams.contains(stream))
    }
}

/// What a terminate asks to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpec {
    pub filter: HoldFilter,
    /// How long at most.
    pub ms: u64,
    /// Lifted early by the first request the app's admission policy (plugin or hook) admits.
    pub until_admitted: bool,
}

/// A hold in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub hold_id: u64,
    /// The reason of the terminate; refusals repeat it.
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    pub until: u64,
    pub filter: HoldFilter,
    /// Lifted by the first request the app's admission policy admits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub until_admitted: bool,
    pub source: TerminationSource,
    /// The termination that put the hold in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_id: Option<u64>,
}

impl Hold {
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.until.saturating_sub(now_ms)
    }
}

/// The holds of a server: a short list, searched linearly (holds are few; each check is
/// a handful of string compares) and pruned of expired ones as it is read.
#[derive(Default)]
pub(super) struct HoldTable {
    next_id: u64,
    /// In a cluster, where every node's holds are kept on every node, ids are drawn at
    /// random (53 bits, exact in JSON) rather than counted, so no two nodes give one twice.
    random_ids: bool,
    holds: Vec<Hold>,
}

/// Why a hold could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_HOLDS} holds are already in force; release some first")]
pub struct TooManyHolds;

impl HoldTable {
    pub fn add(&mut self, mut hold: Hold, now_ms: u64) -> Result<Hold, TooManyHolds> {
        self.prune(now_ms);
        if self.holds.len() >= MAX_HOLDS {
            return Err(TooManyHolds);
        }
        hold.hold_id = loop {
            let id = if self.random_ids {
                uuid::Uuid::new_v4().as_u64_pair().0 & ((1 << 53) - 1)
            } else {
                self.next_id += 1;
                self.next_id
            };
            if id != 0 && self.holds.iter().all(|h| h.hold_id != id) {
                break id;
            }
        };
        self.holds.push(hold.clone());
        Ok(hold)
    }

    pub fn use_random_ids(&mut self) {
        self.random_ids = true;
    }

    /// Keeps a hold another node put in place, under its own id; false when this table
    /// already has it, or it has expired.
    pub fn adopt(&mut self, hold: Hold, now_ms: u64) -> Result<bool, TooManyHolds> {
        self.prune(now_ms);
        if hold.until <= now_ms || self.holds.iter().any(|h| h.hold_id == hold.hold_id) {
            return Ok(false);
        }
        if self.holds.len() >= MAX_HOLDS {
            return Err(TooManyHolds);
        }
        self.holds.push(hold);
        Ok(true)
    }

    /// The matching hold that lasts longest, if any.
    pub fn find(&self, name: &str, published: bool, app_key: &str, now_ms: u64) -> Option<&Hold> {
        if self.holds.is_empty() {
            return None;
        }
        let stream = HeldStream {
            name: name.to_string(),
            published,
            app_key: app_key.to_string(),
        };
        self.holds
            .iter()
            .filter(|h| h.until > now_ms && h.filter.covers(&stream))
            .max_by_key(|h| h.until)
    }

    pub fn list(&mut self, now_ms: u64) -> Vec<Hold> {
        self.prune(now_ms);
        self.holds.clone()
    }

    /// Removes the holds `pick` selects and returns them.
    pub fn release(&mut self, now_ms: u64, pick: impl Fn(&Hold) -> bool) -> Vec<Hold> {
        self.prune(now_ms);
        let (released, kept) = std::mem::take(&mut self.holds).into_iter().partition(pick);
        self.holds = kept;
        released
    }

    pub fn set_termination(&mut self, hold_id: u64, termination_id: u64) {
        if let Some(hold) = self.holds.iter_mut().find(|h| h.hold_id == hold_id) {
            hold.termination_id = Some(termination_id);
        }
    }

    pub fn len(&self, now_ms: u64) -> usize {
        self.holds.iter().filter(|h| h.until > now_ms).count()
    }

    fn prune(&mut self, now_ms: u64) {
        self.holds.retain(|h| h.until > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewStream;
    use serde_json::json;

    fn record(name: &str, published: bool, app: &str) -> StreamRecord {
        let new = if published {
            NewStream::publisher(name, app)
        } else {
            NewStream::player(name, app)
        };
        StreamRecord::preview(new, "n")
    }

    /// A filter as a REST body spells it (only the fields these tests use).
    fn filter(body: serde_json::Value) -> StreamFilter {
        let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(String::from);
        StreamFilter {
            name: text("name"),
            app_key: text("appKey"),
            published: body.get("published").and_then(|v| v.as_bool()),
            media_session_ids: text("mediaSessionId")
                .and_then(|id| id.parse().ok())
                .map(|id| [id].into()),
            ..StreamFilter::default()
        }
    }

    #[test]
    fn a_name_filter_holds_both_directions_of_that_name_only() {
        let hold = HoldFilter::of(&filter(json!({"name": "cam"})), &[]);
        assert!(hold.matches("cam", true, "defaultApp"));
        assert!(hold.matches("cam", false, "liveApp"));
        assert!(!hold.matches("cam2", true, "defaultApp"));
    }

    #[test]
    fn an_id_filter_holds_the_streams_it_stopped() {
        let stopped = [record("cam", true, "liveApp")];
        let hold = HoldFilter::of(
            &filter(json!({"mediaSessionId": stopped[0].media_session_id})),
            &stopped,
        );
        assert!(hold.matches("cam", true, "liveApp"));
        assert!(
            !hold.matches("cam", false, "liveApp"),
            "its players are not held"
        );
        assert!(!hold.matches("cam", true, "defaultApp"));
        assert!(!hold.matches("other", true, "liveApp"));
    }

    #[test]
    fn holds_expire_and_release() {
        let mut table = HoldTable::default();
        let hold = |until| Hold {
            hold_id: 0,
            reason: "r".into(),
            created: 0,
            until,
            filter: HoldFilter::default(),
            until_admitted: false,
            source: TerminationSource::Server,
            termination_id: None,
        };
        let a = table.add(hold(100), 0).unwrap();
        let b = table.add(hold(200), 0).unwrap();
        assert_eq!(
            table.find("x", true, "a", 50).map(|h| h.hold_id),
            Some(b.hold_id)
        );
        assert_eq!(
            table.find("x", true, "a", 150).map(|h| h.hold_id),
            Some(b.hold_id)
        );
        assert!(table.find("x", true, "a", 200).is_none());
        assert_eq!(table.list(150).len(), 1);
        let released = table.release(50, |h| h.hold_id == a.hold_id);
        assert!(released.is_empty(), "a was already pruned at 150");
        assert_eq!(table.release(50, |_| true).len(), 1);
        assert_eq!(table.len(0), 0);
    }
}
