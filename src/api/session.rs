//! The session resources a WHIP/WHEP `201` points to: `DELETE /session/{id}` (the client
//! ends its session) and `GET /session/{id}/events` (its status as Server-Sent Events, the
//! `Link` of the answer).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use uuid::Uuid;

use super::{AppState, TextError};
use crate::registry::follow;

fn parse_session_id(raw: &str) -> Result<Uuid, TextError> {
    Uuid::parse_str(raw)
        .map_err(|_| TextError::new(StatusCode::NOT_FOUND, format!("no session '{raw}'")))
}

/// `DELETE /session/{id}`: the client ends its own session.
pub(super) async fn delete_session(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Response {
    let id = match parse_session_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if state.sessions.close(id) {
        StatusCode::OK.into_response()
    } else {
        TextError::new(StatusCode::NOT_FOUND, format!("no session '{id}'")).into_response()
    }
}

/// `GET /session/{id}/events`: Server-Sent Events of the session's status, every change in
/// order, ending after the final one. A client that sends `Last-Event-ID` gets only what
/// came after it; the events of a stream that ended in the last minutes can still be read.
pub(super) async fn session_events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let id = match parse_session_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let Some((timeline, changes)) = state.registry.timeline(id) else {
        return TextError::new(StatusCode::NOT_FOUND, format!("no session '{id}'")).into_response();
    };
    let after = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => 0,
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(id) => id,
            Err(_) => {
                return TextError::new(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID '{text}' is not an event id (a whole number)"),
                )
                .into_response();
            }
        },
        Some(Err(_)) => {
            return TextError::new(StatusCode::BAD_REQUEST, "Last-Event-ID is not text")
                .into_response();
        }
    };
    let events = follow(timeline, changes, after).map(|event| {
        Event::default()
            .event("status")
            .id(event.event_id.to_string())
            .json_data(&event)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
