//! The audit trail of terminations: who stopped which streams, when, why, with which filter.
//! A bounded history, newest last.

use std::collections::VecDeque;

use serde::Serialize;
use uuid::Uuid;

use super::StreamRecord;

/// Who asked for a termination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TerminationSource {
    /// `POST /rest-api/stream/terminate`, from this remote address.
    #[serde(rename_all = "camelCase")]
    Rest { remote_address: String },
    /// A keep-alive verdict: the app, what gave it (`hook`, `batch`, `plugin`), the method.
    #[serde(rename_all = "camelCase")]
    KeepAlive {
        app_key: String,
        by: String,
        method: String,
    },
    /// The server itself (shutdown).
    Server,
}

impl TerminationSource {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TerminationSource::Rest { .. } => "rest",
            TerminationSource::KeepAlive { .. } => "keep_alive",
            TerminationSource::Server => "server",
        }
    }
}

/// One stream as a termination record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminatedStream {
    pub media_session_id: Uuid,
    pub name: String,
    pub published: bool,
    pub app_key: String,
}

impl From<&StreamRecord> for TerminatedStream {
    fn from(r: &StreamRecord) -> Self {
        TerminatedStream {
            media_session_id: r.media_session_id,
            name: r.name.clone(),
            published: r.published,
            app_key: r.app_key.clone(),
        }
    }
}

/// One termination: a request that stopped one or more streams.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// Increasing per server.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub source: TerminationSource,
    pub reason: String,
    /// The filter that selected the streams (empty for `"all": true`).
    pub filter: super::StreamFilter,
    pub streams: Vec<TerminatedStream>,
    /// The hold this termination put in place, if it asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<u64>,
    /// When that hold expires, in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<u64>,
}

/// The last `capacity` terminations.
pub(super) struct AuditTrail {
    capacity: usize,
    next_id: u64,
    entries: VecDeque<Termination>,
}

impl AuditTrail {
    pub fn new(capacity: usize) -> Self {
        AuditTrail {
            capacity,
            next_id: 1,
            entries: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn push(&mut self, termination: Termination) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(termination);
    }

    pub fn recent(&self) -> Vec<Termination> {
        self.entries.iter().cloned().collect()
    }
}
