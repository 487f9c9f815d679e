//! What a plugin is shown: the stream as a read-only view, the record of a stream that just
//! ended, and what a WHIP/WHEP request tells an admission policy.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::registry::{MediaKind, StatusEvent, StreamRecord, now_ms};

/// The stream as a plugin sees it (read-only in Lua): the model's fields, `age_ms`,
/// `custom`, media kinds and, for players, the publisher's name.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StreamView {
    #[serde(rename = "mediaSessionId")]
    pub media_session_id: String,
    pub name: String,
    #[serde(rename = "appKey")]
    pub app_key: String,
    pub published: bool,
    pub status: String,
    pub info: String,
    #[serde(rename = "sessionId")]
    pub session_id: String,
    #[serde(rename = "nodeId")]
    pub node_id: String,
    #[serde(rename = "createdDate")]
    pub created_date: u64,
    pub age_ms: u64,
    #[serde(rename = "remoteAddress")]
    pub remote_address: String,
    pub custom: BTreeMap<String, String>,
    pub media: Vec<MediaKind>,
    pub has_audio: bool,
    pub has_video: bool,
    /// For a player: the name of the stream its publisher publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

impl StreamView {
    /// The record a plugin is called with, for offline tests (`sluice plugin test`).
    pub fn into_record(self) -> StreamRecord {
        StreamRecord {
            node_id: self.node_id,
            app_key: self.app_key,
            session_id: self.session_id,
            media_session_id: self.media_session_id.parse().unwrap_or_default(),
            name: self.name,
            published: self.published,
            status: crate::registry::Status::ALL
                .into_iter()
                .find(|s| s.as_str() == self.status)
                .unwrap_or(crate::registry::Status::New),
            info: self.info,
            created_date: now_ms().saturating_sub(self.age_ms),
            remote_address: self.remote_address,
            media_kinds: self.media,
            custom: self.custom,
            bearer: crate::registry::Bearer::default(),
            audio_codec: None,
            video_codec: None,
            origin_node: None,
        }
    }
}

/// The record of a stream that just ended, from its final status event.
pub(super) fn record_of_event(event: &StatusEvent, node_id: &str) -> StreamRecord {
    StreamRecord {
        node_id: node_id.to_string(),
        app_key: event.app_key.clone(),
        session_id: event.session_id.clone(),
        media_session_id: event.media_session_id,
        name: event.name.clone(),
        published: event.published,
        status: event.status,
        info: event.info.clone(),
        created_date: now_ms(),
        remote_address: String::new(),
        media_kinds: Vec::new(),
        custom: event.custom.clone(),
        bearer: crate::registry::Bearer::default(),
        audio_codec: None,
        video_codec: None,
        origin_node: None,
    }
}

/// What a WHIP/WHEP request tells an admission policy.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdmissionRequest {
    /// The `Authorization: Bearer` token, if any.
    pub token: Option<String>,
    /// The query parameters (other than `app`).
    pub query: BTreeMap<String, String>,
    pub remote_address: String,
}
