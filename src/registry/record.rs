//! What the registry stores about a stream, and the words of its lifecycle.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The status of a stream, with the names of the system Sluice models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    New,
    Pending,
    Publishing,
    Playing,
    Unpublished,
    Stopped,
    Failed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::New,
        Status::Pending,
        Status::Publishing,
        Status::Playing,
        Status::Unpublished,
        Status::Stopped,
        Status::Failed,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, Status::Unpublished | Status::Stopped | Status::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Pending => "PENDING",
            Status::Publishing => "PUBLISHING",
            Status::Playing => "PLAYING",
            Status::Unpublished => "UNPUBLISHED",
            Status::Stopped => "STOPPED",
            Status::Failed => "FAILED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stream ends. Decides its final status and `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The client hung up (DELETE on its resource, or RTCP BYE).
    ClientLeft,
    /// The server stopped it: REST terminate, keep-alive verdict, shutdown.
    Server(String),
    /// The publisher of a player's stream ended.
    PublisherStopped,
    /// The connection broke (ICE or DTLS failed, no media).
    ConnectionLost(String),
}

impl StopReason {
    pub fn server(reason: impl Into<String>) -> Self {
        StopReason::Server(reason.into())
    }

    /// The reason as given, for a stop by the server or a lost connection.
    pub fn text(&self) -> Option<&str> {
        match self {
            StopReason::Server(why) | StopReason::ConnectionLost(why) => Some(why),
            StopReason::ClientLeft | StopReason::PublisherStopped => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            StopReason::ClientLeft => "client",
            StopReason::Server(_) => "server",
            StopReason::PublisherStopped => "publisher_stopped",
            StopReason::ConnectionLost(_) => "connection_lost",
        }
    }

    /// The final status and `info` a stream gets for this reason.
    pub fn final_status(&self, published: bool) -> (Status, String) {
        match self {
            StopReason::ClientLeft if published => {
                (Status::Unpublished, "Unpublished by client".into())
            }
            StopReason::ClientLeft => (Status::Stopped, "Stopped by client".into()),
            StopReason::Server(why) if why.is_empty() => {
                (Status::Failed, "Stopped by server".into())
            }
            StopReason::Server(why) => (Status::Failed, format!("Stopped by server: {why}")),
            StopReason::PublisherStopped => (Status::Failed, "Stopped by publisher stop".into()),
            StopReason::ConnectionLost(why) => (Status::Failed, format!("Failed: {why}")),
        }
    }
}

/// The kinds of media a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// A bearer token a client presented. Kept for policies; never printed or serialized.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bearer(Option<String>);

impl Bearer {
    pub fn new(token: Option<String>) -> Self {
        Bearer(token)
    }

    /// The token itself, for a policy that must check it.
    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Bearer(***)"),
            None => f.write_str("Bearer(none)"),
        }
    }
}

/// What a session tells the registry when it registers a stream.
#[derive(Debug, Clone)]
pub struct NewStream {
    pub name: String,
    pub app_key: String,
    pub published: bool,
    pub session_id: String,
    pub remote_address: String,
    pub media_kinds: Vec<MediaKind>,
    pub custom: BTreeMap<String, String>,
    pub bearer: Bearer,
    /// Set when the caller has already chosen the id (e.g. to name the resource).
    pub media_session_id: Option<Uuid>,
    /// For a player: the publisher it was wired to. It is registered only while that very
    /// publisher is, not a later one that took the name.
    pub publisher_id: Option<Uuid>,
    /// The codecs agreed on, by name (`opus`, `VP8`, …).
    pub audio_codec: Option<String>,
    pub video_codec: Option<String>,
    /// For an edge relay: the node that publishes the stream (see [`StreamRecord::origin_node`]).
    pub origin_node: Option<String>,
}

impl NewStream {
    pub fn publisher(name: &str, app_key: &str) -> Self {
        Self::new(name, app_key, true)
    }

    pub fn player(name: &str, app_key: &str) -> Self {
        Self::new(name, app_key, false)
    }

    fn new(name: &str, app_key: &str, published: bool) -> Self {
        NewStream {
            name: name.to_string(),
            app_key: app_key.to_string(),
            published,
            session_id: String::new(),
            remote_address: String::new(),
            media_kinds: Vec::new(),
            custom: BTreeMap::new(),
            bearer: Bearer::default(),
            media_session_id: None,
            publisher_id: None,
            audio_codec: None,
            video_codec: None,
            origin_node: None,
        }
    }
}

/// One stream as the registry keeps it. It is shown (REST answers, hook bodies) as the
/// model's stream object: see [`StreamRecord::serialize`].
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub node_id: String,
    pub app_key: String,
    pub session_id: String,
    pub media_session_id: Uuid,
    pub name: String,
    pub published: bool,
    pub status: Status,
    pub info: String,
    pub created_date: u64,
    pub remote_address: String,
    pub media_kinds: Vec<MediaKind>,
    pub custom: BTreeMap<String, String>,
    pub bearer: Bearer,
    pub audio_codec: Option<String>,
    pub video_codec: Option<String>,
    /// Set on an edge relay: this node's copy of a stream another node of the cluster
    /// publishes, pulled for local players. It is plumbing, not a stream of its own: no
    /// keep-alive verdicts, no status hook, no `on_stop`; those run for the origin's stream.
    pub origin_node: Option<String>,
}

/// The model's stream object, with WCS's field names (so back-office scripts written for
/// WCS read it as they are), plus Sluice's own (`createdDate`, `remoteAddress`,
/// `mediaKinds`). Never the token.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelStream<'a> {
    node_id: &'a str,
    app_key: &'a str,
    session_id: &'a str,
    media_session_id: Uuid,
    name: &'a str,
    published: bool,
    has_video: bool,
    has_audio: bool,
    status: Status,
    info: &'a str,
    audio_codec: &'a str,
    video_codec: &'a str,
    record: bool,
    width: u32,
    height: u32,
    bitrate: u32,
    min_bitrate: u32,
    max_bitrate: u32,
    quality: u32,
    create_date: u64,
    media_type: &'static str,
    audio_state: Muted,
    video_state: Muted,
    media_provider: &'static str,
    transport: &'static str,
    cvo_extension: bool,
    created_date: u64,
    remote_address: &'a str,
    media_kinds: &'a [MediaKind],
    custom: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_node_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Muted {
    muted: bool,
}

impl Serialize for StreamRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ModelStream {
            node_id: &self.node_id,
            app_key: &self.app_key,
            session_id: &self.session_id,
            media_session_id: self.media_session_id,
            name: &self.name,
            published: self.published,
            has_video: self.media_kinds.contains(&MediaKind::Video),
            has_audio: self.media_kinds.contains(&MediaKind::Audio),
            status: self.status,
            info: &self.info,
            audio_codec: self.audio_codec.as_deref().unwrap_or(""),
            video_codec: self.video_codec.as_deref().unwrap_or(""),
            record: false,
            width: 0,
            height: 0,
            bitrate: 0,
            min_bitrate: 0,
            max_bitrate: 0,
            quality: 0,
            create_date: self.created_date,
            media_type: if self.published { "publish" } else { "play" },
            audio_state: Muted { muted: false },
            video_state: Muted { muted: false },
            media_provider: "WebRTC",
            transport: "UDP",
            cvo_extension: false,
            created_date: self.created_date,
            remote_address: &self.remote_address,
            media_kinds: &self.media_kinds,
            custom: &self.custom,
            origin_node_id: self.origin_node.as_deref(),
        }
        .serialize(serializer)
    }
}

impl StreamRecord {
    /// The record a stream would have, before it is registered (status `NEW`): what
    /// admission hooks and policies see.
    pub fn preview(new: NewStream, node_id: &str) -> Self {
        let mut record = Self::new(new, node_id, super::now_ms());
        record.status = Status::New;
        record
    }

    pub(super) fn new(new: NewStream, node_id: &str, now_ms: u64) -> Self {
        let id = new.media_session_id.unwrap_or_else(Uuid::new_v4);
        let session_id = if new.session_id.is_empty() {
            id.to_string()
        } else {
            new.session_id
        };
        StreamRecord {
            node_id: node_id.to_string(),
            app_key: new.app_key,
            session_id,
            media_session_id: id,
            name: new.name,
            published: new.published,
            status: Status::Pending,
            info: String::new(),
            created_date: now_ms,
            remote_address: new.remote_address,
            media_kinds: new.media_kinds,
            custom: new.custom,
            bearer: new.bearer,
            audio_codec: new.audio_codec,
            video_codec: new.video_codec,
            origin_node: new.origin_node,
        }
    }
}

/// What a client should do after its stream ended: carried by the final status event and
/// by a `403` refusal, and followed by the example pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Hint {
    /// Try again, not before this many milliseconds.
    #[serde(rename_all = "camelCase")]
    Retry { retry_after_ms: u64 },
    /// Do not reconnect on your own: someone decided this stream should end.
    DoNotReconnect,
}

/// One status change of one stream, as the event bus and the status streams carry it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    /// Server-wide, strictly increasing.
    pub event_id: u64,
    /// Per stream: 1 for its first event, then +1 for each change, with no gaps.
    pub seq: u64,
    pub media_session_id: Uuid,
    /// The stream's signalling session (WCS connection or WHIP/WHEP resource).
    pub session_id: String,
    pub name: String,
    pub app_key: String,
    pub published: bool,
    pub status: Status,
    pub info: String,
    /// The stream's `custom`, for the status hook's body (not in the status streams).
    #[serde(skip)]
    pub custom: BTreeMap<String, String>,
    /// Only on a final event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<Hint>,
    /// On a final event: the stop's own reason, as the server or the failure gave it
    /// (without the `info` wording), for protocols that show it as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The event is an edge relay's (see [`StreamRecord::origin_node`]): the status hook
    /// and `on_stop` leave it to the origin's own events.
    #[serde(skip)]
    pub edge: bool,
}

impl StatusEvent {
    pub(super) fn of(record: &StreamRecord, event_id: u64, seq: u64) -> Self {
        StatusEvent {
            event_id,
            seq,
            hint: None,
            reason: None,
            edge: record.origin_node.is_some(),
            media_session_id: record.media_session_id,
            session_id: record.session_id.clone(),
            name: record.name.clone(),
            app_key: record.app_key.clone(),
            published: record.published,
            status: record.status,
            info: record.info.clone(),
            custom: record.custom.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_never_shows() {
        let mut new = NewStream::publisher("cam", "defaultApp");
        new.bearer = Bearer::new(Some("s3cret".into()));
        let record = StreamRecord::new(new, "n", 1);
        assert!(!format!("{record:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&record).unwrap().contains("s3cret"));
        assert_eq!(record.bearer.expose(), Some("s3cret"));
    }

    #[test]
    fn final_status_follows_the_model() {
        assert_eq!(
            StopReason::ClientLeft.final_status(true).0,
            Status::Unpublished
        );
        assert_eq!(
            StopReason::ClientLeft.final_status(false).0,
            Status::Stopped
        );
        assert_eq!(
            StopReason::server("x").final_status(false),
            (Status::Failed, "Stopped by server: x".to_string())
        );
    }

    #[test]
    fn status_names_match_serde() {
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
