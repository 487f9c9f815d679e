//! The HTTP face of the server: WHIP and WHEP endpoints, session resources and their status
//! event streams, the example pages, and `/rest-api/`. One router, served on HTTP and HTTPS.

pub mod auth;
pub mod metrics;
mod pages;
pub mod requests;
pub mod rest;
mod whip;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::config::ConfigStore;
use crate::media::Media;
use crate::registry::{Registry, StatusEvent, Timeline};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub media: Arc<Media>,
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigStore>,
    pub tokens: Arc<auth::Tokens>,
    pub hooks: crate::hooks::HookClient,
    pub keepalive: Arc<crate::keepalive::KeepAlive>,
    pub policy: Arc<crate::policy::PolicyHost>,
    /// The one path from an offer to a stream (WHIP and WHEP go through it).
    pub sessions: Arc<crate::sessions::Sessions>,
}

pub fn router(state: AppState) -> Router {
    let max_sdp = state.config.load().settings.max_sdp_size;
    let rest_api = rest::routes()
        .route("/rest-api/server/runtime", post(runtime).get(runtime))
        .route("/rest-api/config", get(config_status).post(config_status))
        .route(
            "/rest-api/keepalive",
            get(keepalive_status).post(keepalive_status),
        )
        .route(
            "/rest-api/plugins",
            get(plugins_status).post(plugins_status),
        )
        .route("/rest-api/{*rest}", axum::routing::any(rest::not_found))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(whip::routes(max_sdp))
        .route("/session/{id}", axum::routing::delete(delete_session))
        .route("/session/{id}/events", get(session_events))
        .merge(rest_api)
        .merge(pages::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .with_state(state)
}

/// Reads each request's body within `http_request_timeout` before any handler runs, so a
/// client that trickles its body (slow-loris) gets `408` and holds nothing, and no handler
/// is ever cancelled half-way. Bodies over the largest limit of any route get `413`.
async fn read_body_in_time(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (limit, largest) = {
        let settings = &state.config.load().settings;
        (
            settings.http_request_timeout,
            settings.max_sdp_size.max(rest::MAX_BODY),
        )
    };
    let (parts, body) = request.into_parts();
    let (status, message) = match tokio::time::timeout(limit, axum::body::to_bytes(body, largest))
        .await
    {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(request).await;
        }
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {largest} bytes"),
        ),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request was not received within {limit:?}"),
        ),
    };
    // Each part of the API answers errors in its own format.
    if parts.uri.path().starts_with("/rest-api/") {
        rest::ApiError::new(status, message).into_response()
    } else {
        TextError::new(status, message).into_response()
    }
}

/// A short plain-text error, as WHIP/WHEP clients expect.
#[derive(Debug)]
pub(crate) struct TextError {
    pub status: StatusCode,
    pub message: String,
}

impl TextError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        TextError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for TextError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            self.message + "\n",
        )
            .into_response()
    }
}

fn parse_session_id(raw: &str) -> Result<Uuid, TextError> {
    Uuid::parse_str(raw)
        .map_err(|_| TextError::new(StatusCode::NOT_FOUND, format!("no session '{raw}'")))
}

/// `DELETE /session/{id}`: the client ends its own session.
async fn delete_session(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
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
async fn session_events(
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
    let events = status_events(timeline, changes, after).map(|event| {
        Event::default()
            .event("status")
            .id(event.event_id.to_string())
            .json_data(&event)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The events of `timeline` after `after`, then each new one as `changes` signals it,
/// ending with the final event.
fn status_events(
    timeline: Arc<Timeline>,
    changes: Option<tokio::sync::watch::Receiver<StatusEvent>>,
    after: u64,
) -> impl futures::Stream<Item = StatusEvent> {
    struct Cursor {
        timeline: Arc<Timeline>,
        changes: Option<tokio::sync::watch::Receiver<StatusEvent>>,
        after: u64,
        ended: bool,
    }
    let cursor = Cursor {
        timeline,
        changes,
        after,
        ended: false,
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if cursor.ended {
                return None;
            }
            let events = cursor.timeline.since(cursor.after);
            if let Some(last) = events.last() {
                cursor.after = last.event_id;
                cursor.ended = last.status.is_final();
                return Some((futures::stream::iter(events), cursor));
            }
            // Nothing new: wait for the next change. The timeline is appended before the
            // change is signalled, and a closed channel means the final event is in.
            match cursor.changes.as_mut() {
                Some(changes) => {
                    if changes.changed().await.is_err() {
                        cursor.changes = None;
                    }
                }
                None => return None,
            }
        }
    })
    .flatten()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigView {
    dir: Option<String>,
    #[serde(flatten)]
    status: crate::config::ReloadStatus,
    reloads: u64,
    failures: u64,
    settings: std::collections::BTreeMap<&'static str, String>,
    apps: crate::config::Apps,
    /// Each app's web server circuit breaker (apps whose hooks were called).
    breakers: std::collections::BTreeMap<String, crate::hooks::BreakerView>,
}

/// `/rest-api/config`: the values in force, which file versions they come from, the last
/// reload error and the keys waiting for a restart.
async fn config_status(State(state): State<AppState>) -> axum::Json<ConfigView> {
    let config = state.config.load();
    let (reloads, failures) = state.config.counts();
    axum::Json(ConfigView {
        dir: state.config.dir().map(|d| d.display().to_string()),
        status: state.config.status(),
        reloads,
        failures,
        settings: config.settings.as_properties(),
        apps: config.apps.clone(),
        breakers: state.hooks.breakers.snapshot(
            crate::hooks::CallLimits::from(&config.settings).breaker,
            std::time::Instant::now(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeepAliveView {
    enabled: bool,
    interval_ms: u64,
    app_keys: Vec<String>,
    verdicts: std::collections::BTreeMap<&'static str, crate::keepalive::VerdictCounts>,
    hooks: Vec<HookView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HookView {
    app_key: String,
    method: String,
    #[serde(flatten)]
    counts: crate::hooks::OutcomeCounts,
}

/// `/rest-api/keepalive`: the scheduler's settings in force, verdicts by source and result,
/// and every REST hook's outcomes by app and method.
async fn keepalive_status(State(state): State<AppState>) -> axum::Json<KeepAliveView> {
    let settings = &state.config.load().settings;
    axum::Json(KeepAliveView {
        enabled: settings.keep_alive_streaming_sessions_enabled,
        interval_ms: settings.streaming_sessions_keep_alive_interval.as_millis() as u64,
        app_keys: settings.streaming_sessions_keep_alive_app_keys.clone(),
        verdicts: state.keepalive.stats.snapshot(),
        hooks: state
            .hooks
            .stats
            .snapshot()
            .into_iter()
            .map(|((app_key, method), counts)| HookView {
                app_key,
                method,
                counts,
            })
            .collect(),
    })
}

/// `/rest-api/plugins`: each app's plugin — file, version, when loaded, entry points, calls,
/// errors, the last error.
async fn plugins_status(
    State(state): State<AppState>,
) -> axum::Json<Vec<crate::policy::PluginStatus>> {
    axum::Json(state.policy.status())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Runtime {
    streams: usize,
    alive_tasks: usize,
    open_fds: usize,
}

/// `/rest-api/server/runtime`: what the process holds, to prove stops leave nothing behind.
async fn runtime(State(state): State<AppState>) -> axum::Json<Runtime> {
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    axum::Json(Runtime {
        streams: state.registry.len(),
        alive_tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        open_fds,
    })
}
