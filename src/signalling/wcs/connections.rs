//! The table of live WCS signalling connections, as the model lists them
//! (`/rest-api/connection/…`): each connection's fields and a handle that closes it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// One live connection as the REST API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub session_id: String,
    pub app_key: String,
    pub node_id: String,
    pub status: &'static str,
    pub create_date: u64,
    /// The client's own fields from `connection` (versions, `mediaProviders`, `custom`).
    #[serde(flatten)]
    pub client: Map<String, Value>,
}

struct Entry {
    view: ConnectionView,
    close: CancellationToken,
}

/// Every established connection, by `sessionId`.
#[derive(Default)]
pub struct Connections {
    table: Mutex<BTreeMap<String, Entry>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, view: ConnectionView, close: CancellationToken) {
        self.lock()
            .insert(view.session_id.clone(), Entry { view, close });
    }

    pub(super) fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    /// The connections with this `sessionId` and app (each `None` matches any).
    pub fn find(&self, session_id: Option<&str>, app_key: Option<&str>) -> Vec<ConnectionView> {
        self.lock()
            .values()
            .filter(|e| session_id.is_none_or(|s| e.view.session_id == s))
            .filter(|e| app_key.is_none_or(|a| e.view.app_key == a))
            .map(|e| e.view.clone())
            .collect()
    }

    /// Closes the matching connections (their streams end with them); returns them.
    pub fn terminate(
        &self,
        session_id: Option<&str>,
        app_key: Option<&str>,
    ) -> Vec<ConnectionView> {
        let table = self.lock();
        table
            .values()
            .filter(|e| session_id.is_none_or(|s| e.view.session_id == s))
            .filter(|e| app_key.is_none_or(|a| e.view.app_key == a))
            .map(|e| {
                e.close.cancel();
                e.view.clone()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
