//! The session resources a WHIP/WHEP `201` points to: `DELETE /session/{id}` (the client
//! ends its session), `PATCH /session/{id}` (trickle ICE and ICE restart, RFC 9725 §4.3)
//! and `GET /session/{id}/events` (its status as Server-Sent Events, the `Link` of the
//! answer).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use uuid::Uuid;

use super::{AppState, TextError};
use crate::media::{IceError, IcePatch, IfMatch};
use crate::registry::follow;

/// The media type of a `PATCH` body (RFC 8840).
pub(super) const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

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

/// `PATCH /session/{id}`: candidates the client trickles (`204`), or an ICE restart
/// (`200` with the server's new fragment and `ETag`). Refused without a change: a body that
/// is not an SDP fragment, a missing (`428`) or stale (`412`) `If-Match`.
pub(super) async fn patch_session(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = match parse_session_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(SDPFRAG) {
        return TextError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {SDPFRAG}, not '{content_type}'"),
        )
        .into_response();
    }
    let Ok(body) = std::str::from_utf8(&body) else {
        return TextError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8 text")
            .into_response();
    };
    let if_match = IfMatch::parse(
        headers
            .get(header::IF_MATCH)
            .map(|v| v.to_str().unwrap_or("\u{0}")),
    );
    match state.media.patch_ice(id, if_match, body).await {
        Ok(IcePatch::Trickled { .. }) => StatusCode::NO_CONTENT.into_response(),
        Ok(IcePatch::Restarted { etag, fragment }) => {
            let mut response = (StatusCode::OK, fragment).into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            if let Ok(etag) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, etag);
            }
            response
        }
        Err(e) => {
            let status = match &e {
                IceError::NoSession(_) => StatusCode::NOT_FOUND,
                IceError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
                IceError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
                IceError::BadFragment(_) => StatusCode::BAD_REQUEST,
                IceError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                IceError::RestartFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::warn!(stream = %id, error = %e, "ICE restart failed");
            }
            TextError::new(status, e.to_string()).retrying()
        }
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
