//! `/rest-api/stream/…`: find, find_all and terminate with filters, the way the system we
//! model answers them (same paths, fields and codes), plus reasons, dry runs and the audit
//! trail. Every error is JSON `{"error": …, "field": …}` and changes nothing.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::requests::{ReleaseRequest, RequestKind, StreamRequest};
use crate::registry::{Hold, HoldFilter, HoldSpec, StreamRecord, TerminationSource};

/// Request bodies larger than this get `413`.
pub const MAX_BODY: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/rest-api/stream/find",
            post(find).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/stream/find_all",
            post(find_all).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/stream/terminate",
            post(terminate).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/stream/holds",
            get(holds).post(holds).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/stream/release",
            post(release).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/stream/terminations",
            get(terminations)
                .post(terminations)
                .fallback(method_not_allowed),
        )
}

/// A JSON error of the REST API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        (self.status, Json(body)).into_response()
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use POST",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such REST endpoint")
}

/// Reads a JSON body: `415` for another content type, `413` over [`MAX_BODY`], `400` for
/// malformed JSON. An empty body is `{}`.
pub(super) async fn json_body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes"),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not '{content_type}'"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

/// The streams a parsed request selects: the built-in filters through the registry's
/// indexes, then a plugin's named filter, if any, on those copies (outside every lock).
async fn select(state: &AppState, request: &StreamRequest) -> Result<Vec<StreamRecord>, ApiError> {
    if let Some(plugin) = &request.filter.plugin
        && !state.policy.has_filter(&plugin.name)
    {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "unknown filter '{}': no loaded plugin defines it",
                plugin.name
            ),
            field: Some("filter".into()),
        });
    }
    let mut streams = state.registry.select(&request.filter);
    if let Some(plugin) = &request.filter.plugin {
        streams = state
            .policy
            .filter(&plugin.name, &plugin.args, streams)
            .await;
    }
    streams.sort_by_key(|s| (s.created_date, s.media_session_id));
    Ok(streams)
}

fn streams_or_404(streams: Vec<StreamRecord>) -> Response {
    if streams.is_empty() {
        ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response()
    } else {
        Json(streams).into_response()
    }
}

async fn find(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body).await?;
    // Refused here, once, rather than by every node.
    let request = StreamRequest::parse(&body, RequestKind::Find)?;
    if let Some(cluster) = &state.cluster {
        return Ok(super::cluster::find(cluster, body).await);
    }
    Ok(streams_or_404(select(&state, &request).await?))
}

async fn find_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body).await?;
    if body.as_object().is_none_or(|o| !o.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "find_all takes no filters; use find",
        ));
    }
    if let Some(cluster) = &state.cluster {
        return Ok(super::cluster::find(cluster, json!({})).await);
    }
    Ok(streams_or_404(
        select(&state, &StreamRequest::default()).await?,
    ))
}

/// This node's part of a cluster terminate: its streams the body selects, stopped unless
/// it is a dry run (the asking node records the termination).
pub(super) async fn terminate_here(state: &AppState, body: &Value, asked_by: &str) -> (u16, Value) {
    let request = match StreamRequest::parse(body, RequestKind::Terminate) {
        Ok(request) => request,
        Err(e) => {
            return (
                e.status.as_u16(),
                json!({ "error": e.message, "field": e.field }),
            );
        }
    };
    let streams = match select(state, &request).await {
        Ok(streams) => streams,
        Err(e) => return (e.status.as_u16(), json!({ "error": e.message })),
    };
    if streams.is_empty() {
        return (404, json!({ "error": "no stream matches" }));
    }
    if !request.dry_run {
        let reason = request.reason.clone().unwrap_or_default();
        state.registry.stop_for_cluster(&streams, &reason, asked_by);
    }
    (200, json!({ "streams": streams }))
}

/// This node's part of a cluster release: the holds it lifted.
pub(super) fn release_here(state: &AppState, body: &Value) -> (u16, Value) {
    let pick = match ReleaseRequest::parse(body) {
        Ok(pick) => pick,
        Err(e) => {
            return (
                e.status.as_u16(),
                json!({ "error": e.message, "field": e.field }),
            );
        }
    };
    let released: Vec<Hold> = state.registry.release(|hold| pick.matches(hold));
    if released.is_empty() {
        return (404, json!({ "error": "no hold matches" }));
    }
    (200, json!({ "released": released }))
}

/// This node's part of a cluster find: its HTTP status and body.
pub(super) async fn find_here(state: &AppState, body: &Value) -> (u16, Value) {
    let request = match StreamRequest::parse(body, RequestKind::Find) {
        Ok(request) => request,
        Err(e) => {
            return (
                e.status.as_u16(),
                json!({ "error": e.message, "field": e.field }),
            );
        }
    };
    match select(state, &request).await {
        Ok(streams) if streams.is_empty() => (404, json!({ "error": "no stream matches" })),
        Ok(streams) => (200, serde_json::to_value(streams).unwrap_or_default()),
        Err(e) => (e.status.as_u16(), json!({ "error": e.message })),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TerminateAnswer {
    /// The audit trail's id of this termination; absent on a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    termination_id: Option<u64>,
    /// The hold put in place, when the request asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<u64>,
    /// When the hold expires (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    held_until: Option<u64>,
    dry_run: bool,
    reason: String,
    media_session_ids: Vec<Uuid>,
    streams: Vec<StreamRecord>,
}

async fn terminate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body).await?;
    let request = StreamRequest::parse(&body, RequestKind::Terminate)?;
    if let Some(cluster) = &state.cluster {
        return Ok(super::cluster::terminate(&state, cluster, &request, body, peer).await);
    }
    let streams = select(&state, &request).await?;
    if streams.is_empty() {
        return Ok(ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response());
    }
    let reason = request.reason.clone().unwrap_or_default();
    let (mut hold_id, mut held_until) = (None, None);
    let termination_id = if request.dry_run {
        None
    } else {
        let source = TerminationSource::Rest {
            remote_address: peer.to_string(),
        };
        let hold = request.hold_ms.map(|ms| HoldSpec {
            filter: HoldFilter::of(&request.filter, &streams),
            ms,
            until_admitted: request.hold_until_admitted,
        });
        let termination = state
            .registry
            .terminate(&streams, &reason, source, request.filter.clone(), hold)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        held_until = termination.held_until;
        hold_id = termination.hold_id;
        Some(termination.id)
    };
    Ok(Json(TerminateAnswer {
        termination_id,
        hold_id,
        held_until,
        dry_run: request.dry_run,
        reason,
        media_session_ids: streams.iter().map(|s| s.media_session_id).collect(),
        streams,
    })
    .into_response())
}

async fn terminations(State(state): State<AppState>) -> Response {
    Json(state.registry.terminations()).into_response()
}

/// `/rest-api/stream/holds`: the holds in force, with the milliseconds each has left.
async fn holds(State(state): State<AppState>) -> Response {
    let now = crate::registry::now_ms();
    let holds: Vec<Value> = state
        .registry
        .holds()
        .into_iter()
        .map(|hold| {
            let remaining = hold.remaining_ms(now);
            let mut view = serde_json::to_value(hold).unwrap_or_default();
            view["remainingMs"] = remaining.into();
            view
        })
        .collect();
    Json(holds).into_response()
}

/// `POST /rest-api/stream/release`: lifts holds by id (`holdId`, `holdIds`), by the stream
/// they refuse (`name` with optional `published` and `appKey`), or every one (`"all": true`).
async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body).await?;
    let pick = ReleaseRequest::parse(&body)?;
    if let Some(cluster) = &state.cluster {
        return Ok(super::cluster::release(cluster, body).await);
    }
    let released: Vec<Hold> = state.registry.release(|hold| pick.matches(hold));
    if released.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no hold matches"));
    }
    Ok(Json(json!({ "released": released })).into_response())
}

impl ReleaseRequest {
    fn matches(&self, hold: &Hold) -> bool {
        if self.all {
            return true;
        }
        let by_id = self
            .ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&hold.hold_id));
        let by_stream = (self.name.is_none() && self.published.is_none() && self.app_key.is_none())
            || hold_covers(
                hold,
                self.name.as_deref(),
                self.published,
                self.app_key.as_deref(),
            );
        by_id && by_stream
    }
}

/// Whether a hold refuses some stream with the given name, direction and app (a field not
/// given matches any value).
fn hold_covers(
    hold: &Hold,
    name: Option<&str>,
    published: Option<bool>,
    app: Option<&str>,
) -> bool {
    let f = &hold.filter;
    let agrees = |given: Option<&str>, held: Option<&str>| match (given, held) {
        (Some(g), Some(h)) => g == h,
        _ => true,
    };
    let fields = agrees(name, f.name.as_deref())
        && agrees(app, f.app_key.as_deref())
        && match (published, f.published) {
            (Some(g), Some(h)) => g == h,
            _ => true,
        };
    fields
        && f.streams.as_ref().is_none_or(|streams| {
            streams.iter().any(|s| {
                name.is_none_or(|n| n == s.name)
                    && published.is_none_or(|p| p == s.published)
                    && app.is_none_or(|a| a == s.app_key)
            })
        })
}
