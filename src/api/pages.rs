//! The example pages: a publisher (camera → WHIP), a player (WHEP → video) and the
//! operator's view (live streams, holds, terminations), plain HTML and JS compiled into the
//! binary so that `sluice serve` shows them with no set-up.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("../../static/index.html");
const PUBLISH: &str = include_str!("../../static/publish.html");
const PLAY: &str = include_str!("../../static/play.html");
const SCRIPT: &str = include_str!("../../static/sluice.js");
const STYLE: &str = include_str!("../../static/sluice.css");
const OPERATOR: &str = include_str!("../../static/operator.html");
const OPERATOR_SCRIPT: &str = include_str!("../../static/operator.js");
/// uPlot, the console's charts (`static/vendor/uplot/README.md` says which release).
const UPLOT_SCRIPT: &str = include_str!("../../static/vendor/uplot/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("../../static/vendor/uplot/uPlot.min.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/publish.html",
            get(|| async { page(PUBLISH, "text/html; charset=utf-8") }),
        )
        .route(
            "/play.html",
            get(|| async { page(PLAY, "text/html; charset=utf-8") }),
        )
        .route(
            "/sluice.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async { page(UPLOT_SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async { page(UPLOT_STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/operator.html",
            get(|| async { page(OPERATOR, "text/html; charset=utf-8") }),
        )
        .route(
            "/operator.js",
            get(|| async { page(OPERATOR_SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/sluice.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
