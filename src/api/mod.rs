//! The HTTP face of the server: the router and its middleware (body read in time). The
//! rooms: WHIP/WHEP (`whip`), session resources and their status events (`session`), REST
//! find/terminate/holds (`rest`, bodies in `requests`), views of the server (`status`),
//! auth, metrics and the example pages. One router, served on HTTP and HTTPS.

pub mod auth;
pub mod metrics;
mod pages;
pub mod requests;
pub mod rest;
mod session;
mod status;
mod whip;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::config::ConfigStore;
use crate::media::Media;
use crate::registry::Registry;

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
        .route(
            "/rest-api/server/runtime",
            post(status::runtime).get(status::runtime),
        )
        .route(
            "/rest-api/config",
            get(status::config_status).post(status::config_status),
        )
        .route(
            "/rest-api/keepalive",
            get(status::keepalive_status).post(status::keepalive_status),
        )
        .route(
            "/rest-api/plugins",
            get(status::plugins_status).post(status::plugins_status),
        )
        .route("/rest-api/{*rest}", axum::routing::any(rest::not_found))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(whip::routes(max_sdp))
        .route(
            "/session/{id}",
            axum::routing::delete(session::delete_session),
        )
        .route("/session/{id}/events", get(session::session_events))
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
