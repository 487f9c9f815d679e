//! CORS, so that pages on other origins can publish and play (RFC 9725 §4.x asks WHIP
//! endpoints to answer `OPTIONS`): `tower-http`'s CORS layer with the allowed origins read
//! from the live settings at each request — `cors_allowed_origins` for WHIP, WHEP and the
//! session resources, `rest_api_cors_allowed_origins` for the REST API (empty: same-origin
//! only). A preflight from an origin not allowed gets a clear `403`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{AppState, TextError};
use crate::config::{ConfigStore, Settings};

/// Which list of origins a group of routes follows.
#[derive(Clone, Copy)]
pub enum Origins {
    /// WHIP, WHEP and the session resources.
    Media,
    /// `/rest-api/`.
    RestApi,
}

impl Origins {
    fn list(self, settings: &Settings) -> &[String] {
        match self {
            Origins::Media => &settings.cors_allowed_origins,
            Origins::RestApi => &settings.rest_api_cors_allowed_origins,
        }
    }
}

fn allowed(config: &ConfigStore, origins: Origins, origin: &HeaderValue) -> bool {
    let config = config.load();
    let list = origins.list(&config.settings);
    let origin = origin.to_str().unwrap_or("");
    list.iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The CORS layers for a group of routes.
pub fn layer(routes: Router<AppState>, state: &AppState, origins: Origins) -> Router<AppState> {
    let config: Arc<ConfigStore> = state.config.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            allowed(&config, origins, origin)
        }))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::LINK,
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("accept-post"),
            HeaderName::from_static("accept-patch"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    routes
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            (state.config.clone(), origins),
            refuse_forbidden_preflight,
        ))
}

/// A preflight from an origin that is not allowed gets a `403` saying so (the CORS layer
/// would answer it without the headers, which a browser reports only as a network error).
async fn refuse_forbidden_preflight(
    State((config, origins)): State<(Arc<ConfigStore>, Origins)>,
    request: Request,
    next: Next,
) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, request.headers().get(header::ORIGIN))
        && !allowed(&config, origins, origin)
    {
        let origin = origin.to_str().unwrap_or("?");
        tracing::info!(%origin, path = %request.uri().path(), "CORS preflight refused: origin not allowed");
        return match origins {
            Origins::Media => TextError::new(
                StatusCode::FORBIDDEN,
                format!("origin '{origin}' is not allowed (cors_allowed_origins)"),
            )
            .into_response(),
            Origins::RestApi => super::rest::ApiError::new(
                StatusCode::FORBIDDEN,
                format!("origin '{origin}' is not allowed (rest_api_cors_allowed_origins)"),
            )
            .into_response(),
        };
    }
    next.run(request).await
}
