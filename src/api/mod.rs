//! The HTTP face of the server: the router and its middleware (body limits, body read in
//! time). The
//! rooms: WHIP/WHEP (`whip`), session resources and their status events (`session`), REST
//! find/terminate/holds (`rest`, bodies in `requests`), views of the server (`status`),
//! auth, metrics and the example pages. One router, served on HTTP and HTTPS.

pub mod auth;
pub mod cluster;
mod connections;
pub mod console;
mod cors;
pub mod metrics;
mod pages;
pub mod requests;
pub mod rest;
mod session;
mod status;
pub mod whep_events;
mod whip;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;

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
    /// Live WCS signalling connections.
    pub connections: Arc<crate::signalling::wcs::Connections>,
    /// Event streams of the WHEP server-sent-events extension.
    pub event_streams: Arc<whep_events::EventStreams>,
    /// The operator console's shared feed.
    pub console: Arc<console::ConsoleFeed>,
    /// This node's cluster membership, when `cluster_redis_url` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub fn router(state: AppState) -> Router {
    let max_sdp = state.config.load().settings.max_sdp_size;
    let rest_api = rest::routes()
        .merge(connections::routes())
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
        .route("/rest-api/console/feed", get(console::feed))
        .route("/rest-api/cluster", get(cluster::cluster_view))
        .route("/rest-api/{*rest}", axum::routing::any(rest::not_found))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let rest_api = cors::layer(
        with_body_rules(rest_api, &state, rest::MAX_BODY),
        &state,
        cors::Origins::RestApi,
    )
    // tower-http answers a declared length over the limit itself, in plain text; the
    // REST API answers every error in JSON.
    .layer(axum::middleware::map_response(rest_error_as_json));
    Router::new()
        .merge(
            cors::layer(
                with_body_rules(whip::routes(), &state, max_sdp),
                &state,
                cors::Origins::Media,
            )
            // RFC 9725: the endpoint says what it accepts, on OPTIONS and preflights too.
            .layer(
                tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                    axum::http::HeaderName::from_static("accept-post"),
                    HeaderValue::from_static("application/sdp"),
                ),
            ),
        )
        .merge(cors::layer(
            with_body_rules(
                Router::new()
                    .route(
                        "/session/{id}",
                        axum::routing::delete(session::delete_session)
                            .patch(session::patch_session),
                    )
                    .route(
                        "/session/{id}/events",
                        get(session::session_events).post(whep_events::create),
                    )
                    .route(
                        "/session/{id}/events/{stream}",
                        get(whep_events::read).delete(whep_events::delete),
                    ),
                &state,
                // An SDP fragment is at most as large as an offer.
                max_sdp,
            ),
            &state,
            cors::Origins::Media,
        ))
        .merge(with_body_rules(pages::routes(), &state, 0))
        .merge(rest_api)
        .with_state(state)
}

/// Every route's body rules: at most `limit` bytes (`tower-http`'s limit: a declared
/// `Content-Length` over it is refused before a byte is read, a body that grows past it is
/// cut off), read in full within `http_request_timeout` before the handler runs.
fn with_body_rules(routes: Router<AppState>, state: &AppState, limit: usize) -> Router<AppState> {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(RequestBodyLimitLayer::new(limit))
        // The limit above is the one in force; axum's own default would cap it at 2 MiB.
        .layer(DefaultBodyLimit::disable())
}

async fn rest_error_as_json(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && plain {
        return rest::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {} bytes", rest::MAX_BODY),
        )
        .into_response();
    }
    response
}

/// Reads each request's body within `http_request_timeout` before any handler runs, so a
/// client that trickles its body (slow-loris) gets `408` and holds nothing, and no handler
/// is ever cancelled half-way. `tower-http`'s own body timeout restarts with every chunk, so
/// a byte every so often would hold a request open for ever; this deadline is for the
/// whole body.
async fn read_body_in_time(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let deadline = state.config.load().settings.http_request_timeout;
    let (parts, body) = request.into_parts();
    let (status, message) =
        match tokio::time::timeout(deadline, axum::body::to_bytes(body, usize::MAX)).await {
            Ok(Ok(bytes)) => {
                let request =
                    axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
                return next.run(request).await;
            }
            Ok(Err(e)) if over_the_limit(&e) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is over this resource's limit".to_string(),
            ),
            Ok(Err(e)) => (
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            ),
            Err(_) => (
                StatusCode::REQUEST_TIMEOUT,
                format!("the request was not received within {deadline:?}"),
            ),
        };
    // Each part of the API answers errors in its own format.
    if parts.uri.path().starts_with("/rest-api/") {
        rest::ApiError::new(status, message).into_response()
    } else {
        TextError::new(status, message).into_response()
    }
}

/// Whether reading failed because the body grew past the limit layer's bound.
fn over_the_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
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

impl TextError {
    /// The error as a response; a `503` also says when to try again (`Retry-After: 1`).
    pub fn retrying(self) -> Response {
        let unavailable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = self.into_response();
        if unavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
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
