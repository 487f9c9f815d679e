//! `/rest-api/connection/…`: WCS signalling connections, listed and stopped as the model
//! does: `find_all`, `find` and `terminate` by `sessionId` and/or `appKey`. Terminating a
//! connection closes its socket; its streams end with it.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::AppState;
use super::rest::{ApiError, json_body, method_not_allowed};
use crate::signalling::wcs::ConnectionView;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/rest-api/connection/find_all",
            post(find_all).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/connection/find",
            post(find).fallback(method_not_allowed),
        )
        .route(
            "/rest-api/connection/terminate",
            post(terminate).fallback(method_not_allowed),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConnectionFilter {
    session_id: Option<String>,
    app_key: Option<String>,
}

/// Reads a filter; at least one of `sessionId` and `appKey` is required.
async fn filter(headers: &HeaderMap, body: Body) -> Result<ConnectionFilter, ApiError> {
    let body = json_body(headers, body).await?;
    let filter: ConnectionFilter = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{e}; the filters are sessionId and appKey (strings)"),
        )
    })?;
    if filter.session_id.is_none() && filter.app_key.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give sessionId and/or appKey (find_all lists every connection)",
        ));
    }
    Ok(filter)
}

fn connections_or_404(connections: Vec<ConnectionView>) -> Response {
    if connections.is_empty() {
        ApiError::new(StatusCode::NOT_FOUND, "no connection matches").into_response()
    } else {
        Json(connections).into_response()
    }
}

async fn find_all(State(state): State<AppState>) -> Response {
    connections_or_404(state.connections.find(None, None))
}

async fn find(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let f = filter(&headers, body).await?;
    Ok(connections_or_404(
        state
            .connections
            .find(f.session_id.as_deref(), f.app_key.as_deref()),
    ))
}

async fn terminate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let f = filter(&headers, body).await?;
    let stopped = state
        .connections
        .terminate(f.session_id.as_deref(), f.app_key.as_deref());
    tracing::info!(connections = stopped.len(), session = ?f.session_id, app = ?f.app_key, "terminating WebSocket signalling connections");
    Ok(connections_or_404(stopped))
}
