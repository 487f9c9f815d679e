//! WCS's WebSocket signalling as data, with no sockets: the client messages read into typed
//! values, the server messages written as the Flashphoner Web SDK reads them, and the state
//! of one connection (its app, its streams, its unanswered pings). Every rule of the
//! protocol that can be decided without I/O is decided here, so it is tested here.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::registry::{Hint, Status, StatusEvent};

/// What the SDK's `stream.stop()` may leave behind: at most this many streams per
/// connection at once (a page has one or two).
pub const MAX_STREAMS_PER_CONNECTION: usize = 32;

use crate::registry::stream_id;

/// A stream the client asks for (`publishStream` or `playStream`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRequest {
    /// The id as the client spelled it; every message about the stream carries it back.
    pub client_id: String,
    pub name: String,
    pub sdp: String,
    /// The client's `custom` object, flattened to text for policies and hooks.
    pub custom: BTreeMap<String, String>,
    /// The client's stream object as sent (without `sdp`), echoed in status events.
    pub fields: Map<String, Value>,
}

/// One client message, read.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Connection {
        app_key: Option<String>,
        custom: BTreeMap<String, String>,
        fields: Map<String, Value>,
    },
    Publish(StreamRequest),
    Play(StreamRequest),
    /// `unPublishStream` or `stopStream`: the client's id of the stream to end.
    Stop {
        client_id: String,
        message: &'static str,
    },
    Pong,
    Ping,
    /// A message name this server does not act on.
    Unknown(String),
}

/// Why a client message could not be read; the text goes back in a `fail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn text_field(object: &Map<String, Value>, key: &str) -> Result<String, Malformed> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(Malformed(format!("'{key}' is required"))),
        Some(other) => Err(Malformed(format!("'{key}' must be a string, not {other}"))),
    }
}

/// `custom` as text: string values as they are, anything else as its JSON.
fn custom_of(object: &Map<String, Value>) -> Result<BTreeMap<String, String>, Malformed> {
    match object.get("custom") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(custom)) => Ok(custom
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()),
        Some(other) => Err(Malformed(format!(
            "'custom' must be an object, not {other}"
        ))),
    }
}

fn stream_request(object: Map<String, Value>) -> Result<StreamRequest, Malformed> {
    let client_id = text_field(&object, "mediaSessionId")?;
    let name = text_field(&object, "name")?;
    let sdp = text_field(&object, "sdp")?;
    let custom = custom_of(&object)?;
    let mut fields = object;
    fields.remove("sdp");
    fields.remove("localMediaInfo");
    Ok(StreamRequest {
        client_id,
        name,
        sdp,
        custom,
        fields,
    })
}

/// Reads one text frame: `{"message": name, "data": [payload]}`.
pub fn parse(text: &str) -> Result<ClientMessage, Malformed> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Malformed(format!("malformed JSON: {e}")))?;
    let Value::Object(mut frame) = value else {
        return Err(Malformed("a message is a JSON object".into()));
    };
    let name = match frame.remove("message") {
        Some(Value::String(name)) => name,
        _ => return Err(Malformed("'message' (a string) is required".into())),
    };
    let payload = match frame.remove("data") {
        Some(Value::Array(mut items)) if !items.is_empty() => items.swap_remove(0),
        Some(Value::Array(_)) | None => Value::Null,
        Some(other) => return Err(Malformed(format!("'data' must be an array, not {other}"))),
    };
    let object = |payload: Value| match payload {
        Value::Object(o) => Ok(o),
        other => Err(Malformed(format!("'{name}' needs an object, not {other}"))),
    };
    Ok(match name.as_str() {
        "connection" => {
            let fields = object(payload)?;
            let app_key = match fields.get("appKey") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(Malformed(format!("'appKey' must be a string, not {other}")));
                }
            };
            let custom = custom_of(&fields)?;
            ClientMessage::Connection {
                app_key,
                custom,
                fields,
            }
        }
        "publishStream" => ClientMessage::Publish(stream_request(object(payload)?)?),
        "playStream" => ClientMessage::Play(stream_request(object(payload)?)?),
        "unPublishStream" | "stopStream" => ClientMessage::Stop {
            client_id: text_field(&object(payload)?, "mediaSessionId")?,
            message: if name == "stopStream" {
                "stopStream"
            } else {
                "unPublishStream"
            },
        },
        "pong" => ClientMessage::Pong,
        "ping" => ClientMessage::Ping,
        _ => ClientMessage::Unknown(name),
    })
}

fn frame(message: &str, data: Value) -> String {
    json!({ "message": message, "data": data }).to_string()
}

/// `getUserData`: completes the connection. Sent once.
pub fn user_data(session_id: &str, app_key: &str, connection: &Map<String, Value>) -> String {
    let mut data = Map::new();
    for key in [
        "mediaProviders",
        "clientVersion",
        "clientOSVersion",
        "clientBrowserVersion",
    ] {
        if let Some(v) = connection.get(key) {
            data.insert(key.into(), v.clone());
        }
    }
    data.insert("status".into(), json!("ESTABLISHED"));
    data.insert("sessionId".into(), json!(session_id));
    data.insert("authToken".into(), json!(session_id));
    data.insert("appKey".into(), json!(app_key));
    data.insert("useWsTunnel".into(), json!(false));
    data.insert("useWsTunnelPacketization2".into(), json!(false));
    data.insert("useBase64BinaryEncoding".into(), json!(false));
    frame("getUserData", json!([data]))
}

/// `setRemoteSDP`: the answer, positional. Sent once per stream.
pub fn remote_sdp(client_id: &str, sdp: &str) -> String {
    frame("setRemoteSDP", json!([client_id, sdp]))
}

pub fn ping() -> String {
    frame("ping", json!([]))
}

pub fn pong() -> String {
    frame("pong", json!([]))
}

/// `fail` about the connection or a message that could not be taken.
pub fn fail(api_method: &str, info: &str) -> String {
    frame(
        "fail",
        json!([{ "status": "FAILED", "info": info, "apiMethod": api_method }]),
    )
}

/// `fail` for a stream that was refused: the SDK treats it as that stream's status event
/// (it routes by `id`), so the page shows `FAILED` with the reason.
pub fn stream_refused(client_id: &str, request: &Map<String, Value>, info: &str) -> String {
    let mut data = request.clone();
    data.insert("id".into(), json!(client_id));
    data.insert("mediaSessionId".into(), json!(client_id));
    data.insert("status".into(), json!("FAILED"));
    data.insert("info".into(), json!(info));
    data.insert("apiMethod".into(), json!("StreamStatusEvent"));
    frame("fail", json!([data]))
}

/// How keep-alive stops are worded in the registry and the audit trail.
const KEEP_ALIVE_PREFIX: &str = "keep-alive: ";

/// The `info` the model shows for a stream's status. A stop by the server shows its reason
/// as it was given (a terminate without one shows the model's default text), with the
/// retry hint of a hold; every other status keeps the registry's wording.
pub fn info_of(event: &StatusEvent) -> String {
    match (&event.status, &event.reason) {
        (Status::Failed, Some(reason)) => {
            // A keep-alive stop shows the web server's (or plugin's) own words: the
            // `keep-alive: ` the audit trail puts before them is for operators.
            let reason = reason.strip_prefix(KEEP_ALIVE_PREFIX).unwrap_or(reason);
            let mut info = if reason.is_empty() {
                "Stopped by rest /terminate".to_string()
            } else {
                reason.to_string()
            };
            if let Some(Hint::Retry { retry_after_ms }) = event.hint {
                info.push_str(&format!(
                    "; retry in {} s",
                    retry_after_ms.div_ceil(1000).max(1)
                ));
            }
            info
        }
        _ => event.info.clone(),
    }
}

/// `notifyStreamStatusEvent`: the client's stream object with the new status and `info`.
pub fn status_event(
    client_id: &str,
    request: &Map<String, Value>,
    stream: &Map<String, Value>,
    event: &StatusEvent,
) -> String {
    let mut data = request.clone();
    for (k, v) in stream {
        data.insert(k.clone(), v.clone());
    }
    data.insert("mediaSessionId".into(), json!(client_id));
    data.insert("status".into(), json!(event.status.as_str()));
    data.insert("info".into(), json!(info_of(event)));
    frame("notifyStreamStatusEvent", json!([data]))
}

/// What to do when the ping timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingTick {
    Send,
    /// `probes` pings in a row went unanswered: close the connection.
    Close,
}

/// The state of one signalling connection.
#[derive(Debug)]
pub struct Connection {
    pub session_id: String,
    /// Set by `connection`; until then no stream can be asked for.
    pub app_key: Option<String>,
    pub custom: BTreeMap<String, String>,
    /// The streams it opened (or is opening), by the registry's id.
    streams: HashSet<Uuid>,
    unanswered_pings: u32,
    unknown_seen: HashSet<String>,
}

/// Why a stream request is refused before it reaches the session path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NotConnected,
    IdInUse,
    TooManyStreams,
}

impl Refused {
    pub fn info(&self) -> &'static str {
        match self {
            Refused::NotConnected => "send 'connection' first",
            Refused::IdInUse => "MediaSessionId is already in use",
            Refused::TooManyStreams => "too many streams on this connection",
        }
    }
}

impl Connection {
    pub fn new(session_id: String) -> Self {
        Connection {
            session_id,
            app_key: None,
            custom: BTreeMap::new(),
            streams: HashSet::new(),
            unanswered_pings: 0,
            unknown_seen: HashSet::new(),
        }
    }

    /// Any message from the client shows it is alive, as the SDK counts it too.
    pub fn heard_from(&mut self) {
        self.unanswered_pings = 0;
    }

    pub fn ping_tick(&mut self, probes: u32) -> PingTick {
        if self.unanswered_pings >= probes {
            return PingTick::Close;
        }
        self.unanswered_pings += 1;
        PingTick::Send
    }

    /// Whether an unknown message name is seen for the first time (logged once per kind).
    pub fn first_unknown(&mut self, name: &str) -> bool {
        self.unknown_seen.len() < 64 && self.unknown_seen.insert(name.to_string())
    }

    /// Takes a stream request of this connection, or says why not.
    pub fn begin(&mut self, request: &StreamRequest) -> Result<Uuid, Refused> {
        if self.app_key.is_none() {
            return Err(Refused::NotConnected);
        }
        let id = stream_id(&request.client_id);
        if self.streams.contains(&id) {
            return Err(Refused::IdInUse);
        }
        if self.streams.len() >= MAX_STREAMS_PER_CONNECTION {
            return Err(Refused::TooManyStreams);
        }
        self.streams.insert(id);
        Ok(id)
    }

    /// The stream of this connection the client names, if it is one of its own.
    pub fn own(&self, client_id: &str) -> Option<Uuid> {
        let id = stream_id(client_id);
        self.streams.contains(&id).then_some(id)
    }

    /// The stream has ended (or was refused): it is forgotten.
    pub fn ended(&mut self, id: Uuid) {
        self.streams.remove(&id);
    }

    pub fn stream_ids(&self) -> Vec<Uuid> {
        self.streams.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6e6e1a10-7f63-11ef-9f4b-45b1b0f7d3a1";

    fn publish(id: &str) -> String {
        json!({"message": "publishStream", "data": [{
            "mediaSessionId": id, "name": "cam", "published": true, "hasVideo": true,
            "status": "PENDING", "sdp": "v=0", "custom": {"room": "a", "n": 1}
        }]})
        .to_string()
    }

    #[test]
    fn the_sdks_messages_are_read() {
        let connection = json!({"message": "connection", "data": [{
            "appKey": "defaultApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0"
        }]});
        match parse(&connection.to_string()).unwrap() {
            ClientMessage::Connection {
                app_key, fields, ..
            } => {
                assert_eq!(app_key.as_deref(), Some("defaultApp"));
                assert_eq!(fields["clientVersion"], "2.0");
            }
            other => panic!("{other:?}"),
        }
        let ClientMessage::Publish(request) = parse(&publish(ID)).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(request.client_id, ID);
        assert_eq!(request.sdp, "v=0");
        assert!(!request.fields.contains_key("sdp"), "the SDP is not echoed");
        assert_eq!(request.custom["room"], "a");
        assert_eq!(request.custom["n"], "1");
        let stop = json!({"message": "stopStream", "data": [{"mediaSessionId": ID}]});
        assert_eq!(
            parse(&stop.to_string()).unwrap(),
            ClientMessage::Stop {
                client_id: ID.into(),
                message: "stopStream"
            }
        );
        assert_eq!(
            parse(r#"{"message":"pong","data":[null]}"#).unwrap(),
            ClientMessage::Pong
        );
        assert_eq!(
            parse(r#"{"message":"pushLogs","data":[{}]}"#).unwrap(),
            ClientMessage::Unknown("pushLogs".into())
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        for (text, expected) in [
            ("{", "malformed JSON"),
            ("[1]", "a JSON object"),
            (r#"{"data":[]}"#, "'message'"),
            (
                r#"{"message":"playStream","data":{}}"#,
                "'data' must be an array",
            ),
            (r#"{"message":"playStream","data":[7]}"#, "needs an object"),
            (
                r#"{"message":"playStream","data":[{"name":"a","sdp":"v=0"}]}"#,
                "'mediaSessionId' is required",
            ),
            (
                r#"{"message":"playStream","data":[{"mediaSessionId":5,"name":"a","sdp":"v=0"}]}"#,
                "must be a string",
            ),
            (
                r#"{"message":"connection","data":[{"appKey":["x"]}]}"#,
                "'appKey' must be a string",
            ),
            (
                r#"{"message":"connection","data":[{"custom":"x"}]}"#,
                "'custom' must be an object",
            ),
        ] {
            let err = parse(text).unwrap_err().0;
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn server_messages_always_carry_a_data_array() {
        for text in [
            user_data("/a/b", "defaultApp", &Map::new()),
            remote_sdp(ID, "v=0"),
            ping(),
            pong(),
            fail("ConnectionStatusEvent", "no"),
            stream_refused(ID, &Map::new(), "Stream not found"),
        ] {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["data"].is_array(), "{text}");
        }
        let v: Value = serde_json::from_str(&remote_sdp(ID, "v=0")).unwrap();
        assert_eq!(v["data"], json!([ID, "v=0"]), "setRemoteSDP is positional");
        let v: Value = serde_json::from_str(&user_data("/a/b", "x", &Map::new())).unwrap();
        assert!(
            v["data"][0].is_object(),
            "getUserData's data[0] is an object"
        );
        let v: Value =
            serde_json::from_str(&stream_refused(ID, &Map::new(), "Stream not found")).unwrap();
        assert_eq!(v["data"][0]["id"], ID, "the SDK routes a fail by 'id'");
        assert_eq!(v["data"][0]["apiMethod"], "StreamStatusEvent");
    }

    fn event(status: Status, info: &str, reason: Option<&str>, hint: Option<Hint>) -> StatusEvent {
        StatusEvent {
            event_id: 1,
            seq: 1,
            media_session_id: Uuid::nil(),
            session_id: "/c/s".into(),
            custom: BTreeMap::new(),
            name: "cam".into(),
            app_key: "defaultApp".into(),
            published: false,
            status,
            info: info.into(),
            hint,
            reason: reason.map(String::from),
            edge: false,
        }
    }

    #[test]
    fn stops_show_the_models_info() {
        let publisher_gone = event(
            Status::Failed,
            "Stopped by publisher stop",
            None,
            Some(Hint::Retry {
                retry_after_ms: 1000,
            }),
        );
        assert_eq!(info_of(&publisher_gone), "Stopped by publisher stop");
        let terminated = event(
            Status::Failed,
            "Stopped by server: spam",
            Some("spam"),
            None,
        );
        assert_eq!(info_of(&terminated), "spam");
        let plain = event(Status::Failed, "Stopped by server", Some(""), None);
        assert_eq!(info_of(&plain), "Stopped by rest /terminate");
        let held = event(
            Status::Failed,
            "Stopped by server: maintenance",
            Some("maintenance"),
            Some(Hint::Retry {
                retry_after_ms: 1500,
            }),
        );
        assert_eq!(info_of(&held), "maintenance; retry in 2 s");
        let refused = event(
            Status::Failed,
            "Stopped by server: keep-alive: time is up",
            Some("keep-alive: time is up"),
            None,
        );
        assert_eq!(info_of(&refused), "time is up");
        let left = event(Status::Stopped, "Stopped by client", None, None);
        assert_eq!(info_of(&left), "Stopped by client");
    }

    #[test]
    fn a_connection_owns_its_streams() {
        let mut connection = Connection::new("/c/s".into());
        let ClientMessage::Publish(request) = parse(&publish(ID)).unwrap() else {
            panic!();
        };
        assert_eq!(connection.begin(&request), Err(Refused::NotConnected));
        connection.app_key = Some("defaultApp".into());
        let id = connection.begin(&request).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(connection.begin(&request), Err(Refused::IdInUse));
        assert_eq!(connection.own(ID), Some(id));
        assert_eq!(connection.own("another"), None, "not another connection's");
        connection.ended(id);
        assert_eq!(connection.own(ID), None);
        for i in 0..MAX_STREAMS_PER_CONNECTION {
            let ClientMessage::Publish(r) = parse(&publish(&format!("id-{i}"))).unwrap() else {
                panic!();
            };
            connection.begin(&r).unwrap();
        }
        let ClientMessage::Publish(r) = parse(&publish("one-more")).unwrap() else {
            panic!();
        };
        assert_eq!(connection.begin(&r), Err(Refused::TooManyStreams));
        assert_eq!(
            stream_id("id-1"),
            stream_id("id-1"),
            "a string id maps the same"
        );
    }

    #[test]
    fn unanswered_pings_close_the_connection() {
        let mut connection = Connection::new("/c/s".into());
        for _ in 0..3 {
            assert_eq!(connection.ping_tick(3), PingTick::Send);
        }
        assert_eq!(connection.ping_tick(3), PingTick::Close);
        connection.heard_from();
        assert_eq!(connection.ping_tick(3), PingTick::Send);
        assert!(connection.first_unknown("pushLogs"));
        assert!(!connection.first_unknown("pushLogs"));
    }
}
