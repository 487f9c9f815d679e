//! The WHEP server-sent-events extension as clients implement it (draft-ietf-wish-whep,
//! "Server Sent Events extension"): the `Link` of a WHEP `201` names `/session/{id}/events`
//! with the events it offers; a `POST` of the wanted list there answers `201` with the
//! `Location` of a new event stream; a `GET` of that location is the stream (`active`,
//! `inactive`, `viewercount`, and Sluice's own `status`); `DELETE` ends it. A stop of the
//! session — by the server or its publisher — reaches the client as `inactive` with the
//! stop's reason before the stream ends. `GET /session/{id}/events` itself stays Sluice's
//! status stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{AppState, TextError};
use crate::registry::{Registry, StatusEvent, follow};

/// The events a session's event streams can carry, as the `Link`'s `events=` lists them.
pub const OFFERED: &str = "active,inactive,viewercount,status";
/// Event streams one session may have open at once.
const PER_SESSION: usize = 8;

/// Which events a client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub active: bool,
    pub inactive: bool,
    pub viewercount: bool,
    pub status: bool,
}

impl Wanted {
    const ALL: Wanted = Wanted {
        active: true,
        inactive: true,
        viewercount: true,
        status: true,
    };

    /// Reads a `POST` body: a JSON array of event names; an empty body asks for them all.
    pub fn parse(body: &[u8]) -> Result<Wanted, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Wanted::ALL);
        }
        let names: Vec<String> = serde_json::from_slice(body)
            .map_err(|e| format!("the body must be a JSON array of event names: {e}"))?;
        let mut wanted = Wanted::default();
        for name in &names {
            match name.as_str() {
                "active" => wanted.active = true,
                "inactive" => wanted.inactive = true,
                "viewercount" => wanted.viewercount = true,
                "status" => wanted.status = true,
                other => {
                    return Err(format!(
                        "unknown event '{other}': this session offers {OFFERED}"
                    ));
                }
            }
        }
        Ok(wanted)
    }
}

struct Subscription {
    session: Uuid,
    wanted: Wanted,
    /// Cancelled by `DELETE`: a stream being read ends at once.
    deleted: CancellationToken,
}

/// The event streams clients created, by their id.
#[derive(Default)]
pub struct EventStreams {
    table: Mutex<HashMap<Uuid, Subscription>>,
}

impl EventStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Subscription>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the streams of sessions that have ended.
    fn prune(&self, registry: &Registry) {
        self.lock().retain(|_, s| {
            let live = registry.get(s.session).is_some();
            if !live {
                s.deleted.cancel();
            }
            live
        });
    }

    /// How many event streams exist (for the leak checks of tests and `/rest-api/server/runtime`).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn session_id(raw: &str) -> Result<Uuid, TextError> {
    Uuid::parse_str(raw)
        .map_err(|_| TextError::new(StatusCode::NOT_FOUND, format!("no session '{raw}'")))
}

/// `POST /session/{id}/events`: creates an event stream with the events the body lists.
pub(super) async fn create(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let id = match session_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let wanted = match Wanted::parse(&body) {
        Ok(wanted) => wanted,
        Err(e) => return TextError::new(StatusCode::BAD_REQUEST, e).into_response(),
    };
    state.event_streams.prune(&state.registry);
    if state.registry.get(id).is_none() {
        return TextError::new(StatusCode::NOT_FOUND, format!("no session '{id}'")).into_response();
    }
    let stream = Uuid::new_v4();
    {
        let mut table = state.event_streams.lock();
        if table.values().filter(|s| s.session == id).count() >= PER_SESSION {
            return TextError::new(
                StatusCode::CONFLICT,
                format!("session '{id}' already has {PER_SESSION} event streams"),
            )
            .into_response();
        }
        table.insert(
            stream,
            Subscription {
                session: id,
                wanted,
                deleted: CancellationToken::new(),
            },
        );
    }
    let location = format!("/session/{id}/events/{stream}");
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `DELETE /session/{id}/events/{stream}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    Path((raw, stream)): Path<(String, String)>,
) -> Response {
    let removed = match (Uuid::parse_str(&raw), Uuid::parse_str(&stream)) {
        (Ok(id), Ok(stream)) => {
            let mut table = state.event_streams.lock();
            match table.get(&stream) {
                Some(s) if s.session == id => table.remove(&stream),
                _ => None,
            }
        }
        _ => None,
    };
    match removed {
        Some(subscription) => {
            subscription.deleted.cancel();
            StatusCode::OK.into_response()
        }
        None => TextError::new(StatusCode::NOT_FOUND, format!("no event stream '{stream}'"))
            .into_response(),
    }
}

/// `GET /session/{id}/events/{stream}`: the events, as the draft writes them (one `data`
/// line of JSON each).
pub(super) async fn read(
    State(state): State<AppState>,
    Path((raw, stream)): Path<(String, String)>,
) -> Response {
    let not_found = || {
        TextError::new(StatusCode::NOT_FOUND, format!("no event stream '{stream}'")).into_response()
    };
    let (Ok(id), Ok(stream_id)) = (Uuid::parse_str(&raw), Uuid::parse_str(&stream)) else {
        return not_found();
    };
    let found = state
        .event_streams
        .lock()
        .get(&stream_id)
        .filter(|s| s.session == id)
        .map(|s| (s.wanted, s.deleted.clone()));
    let Some((wanted, deleted)) = found else {
        return not_found();
    };
    // Subscribed before the record is read, so that no change falls between the two.
    let others = state.registry.events();
    let (Some(record), Some((timeline, Some(changes)))) =
        (state.registry.get(id), state.registry.timeline(id))
    else {
        state.event_streams.prune(&state.registry);
        return not_found();
    };
    let feed = Feed {
        wanted,
        name: record.name.clone(),
        registry: state.registry.clone(),
        own: Box::pin(follow(timeline, Some(changes), 0)),
        others,
        viewers: None,
        queue: Vec::new(),
        ended: false,
        deleted,
    };
    let mut first = feed;
    if wanted.active && first.registry.publisher_of(&record.name).is_some() {
        first
            .queue
            .push(draft_event("active", serde_json::json!({})));
    }
    first.count_viewers();
    Sse::new(first.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn draft_event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// One event stream's state between events.
struct Feed {
    wanted: Wanted,
    name: String,
    registry: Arc<Registry>,
    /// The session's own status events, ending after the final one.
    own: Pin<Box<dyn Stream<Item = StatusEvent> + Send>>,
    /// Every stream's status events, for the viewer count.
    others: broadcast::Receiver<StatusEvent>,
    viewers: Option<usize>,
    /// Events ready to go, in order (popped from the front).
    queue: Vec<Event>,
    ended: bool,
    deleted: CancellationToken,
}

impl Feed {
    fn count_viewers(&mut self) {
        let count = self.registry.viewer_count(&self.name);
        if self.wanted.viewercount && self.viewers != Some(count) {
            self.queue.push(draft_event(
                "viewercount",
                serde_json::json!({ "viewercount": count }),
            ));
        }
        self.viewers = Some(count);
    }

    fn own_event(&mut self, event: StatusEvent) {
        let last = event.status.is_final();
        if self.wanted.status {
            let data = serde_json::to_string(&event).unwrap_or_default();
            self.queue.push(
                Event::default()
                    .event("status")
                    .id(event.event_id.to_string())
                    .data(data),
            );
        }
        if last {
            if self.wanted.inactive {
                let reason = event.reason.clone().unwrap_or_else(|| event.info.clone());
                self.queue.push(draft_event(
                    "inactive",
                    serde_json::json!({ "reason": reason, "status": event.status }),
                ));
            }
            self.ended = true;
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        futures::stream::unfold(self, |mut feed| async move {
            loop {
                if !feed.queue.is_empty() {
                    let event = feed.queue.remove(0);
                    return Some((Ok(event), feed));
                }
                if feed.ended {
                    return None;
                }
                tokio::select! {
                    _ = feed.deleted.cancelled() => return None,
                    own = feed.own.next() => match own {
                        Some(event) => feed.own_event(event),
                        None => feed.ended = true,
                    },
                    other = feed.others.recv() => match other {
                        Ok(event) if event.name == feed.name => feed.count_viewers(),
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => feed.count_viewers(),
                        Err(broadcast::error::RecvError::Closed) => feed.ended = true,
                    },
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_list_is_read_as_the_draft_sends_it() {
        let wanted = Wanted::parse(br#"["active","viewercount"]"#).unwrap();
        assert!(wanted.active && wanted.viewercount && !wanted.inactive && !wanted.status);
        assert_eq!(Wanted::parse(b"").unwrap(), Wanted::ALL);
        let err = Wanted::parse(br#"["layers"]"#).unwrap_err();
        assert!(err.contains("unknown event 'layers'"), "{err}");
        let err = Wanted::parse(b"{}").unwrap_err();
        assert!(err.contains("JSON array"), "{err}");
    }
}
