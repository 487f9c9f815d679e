//! `POST /whip/{name}` (RFC 9725 ingest) and `POST /whep/{name}` (playback): request
//! checks, then the media layer, then a `201` with the answer, `Location` and the status
//! stream's `Link`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AppState, TextError};
use crate::hooks::admission::{self, Admission};
use crate::media::{MediaError, OfferRequest, resource_path};
use crate::policy::{AdmissionRequest, Code};
use crate::registry::{Bearer, Hint, Hold, NewStream, RegistryError, StreamRecord};

/// The `rel` of the status stream link, as the WHEP server-sent-events extension names it.
const SSE_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";
const MAX_NAME_LEN: usize = 256;

pub fn routes(max_sdp: usize) -> Router<AppState> {
    Router::new()
        .route("/whip/{name}", post(publish))
        .route("/whep/{name}", post(play))
        .layer(DefaultBodyLimit::max(max_sdp))
}

#[derive(Clone, Copy)]
enum Direction {
    Publish,
    Play,
}

async fn publish(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    name: Path<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, peer, name, query, headers, body, Direction::Publish).await
}

async fn play(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    name: Path<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, peer, name, query, headers, body, Direction::Play).await
}

async fn offer(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
    direction: Direction,
) -> Response {
    let rate = state.config.load().settings.offer_rate_per_address;
    if let Err(wait) = state.offers.check(peer.ip(), rate) {
        tracing::info!(remote = %peer, "offer refused: over offer_rate_per_address");
        let hint = Hint::Retry {
            retry_after_ms: wait.as_millis() as u64,
        };
        let body = serde_json::json!({
            "error": format!("too many offers from {}: at most {rate} per second", peer.ip()),
            "hint": hint,
        });
        return with_retry_after(
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response(),
            hint,
        );
    }
    let request = match read_request(&state, peer, name, query.as_deref(), &headers, &body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let publish = matches!(direction, Direction::Publish);
    let hold = state
        .registry
        .held(&request.name, publish, &request.app_key);
    // A hold until admitted defers to the app's admission policy, if it has one.
    let defer_to_policy = hold.as_ref().is_some_and(|h| {
        h.until_admitted && has_admission_policy(&state, &request.app_key, publish)
    });
    if let Some(hold) = hold.as_ref().filter(|_| !defer_to_policy) {
        tracing::info!(name = %request.name, app = %request.app_key, publish, hold = hold.hold_id, "request refused by a hold");
        return held(hold);
    }
    if let Err(e) = state.media.precheck(&request, publish) {
        return media_error(e);
    }
    let mut request = request;
    match admit(&state, &request, publish).await {
        Admission::Admit { custom } => {
            if let Some(custom) = custom {
                request.custom = custom;
            }
            if let Some(hold) = hold.as_ref().filter(|_| defer_to_policy) {
                let id = hold.hold_id;
                state.registry.release(|h| h.hold_id == id);
                tracing::info!(name = %request.name, app = %request.app_key, hold = id, "hold lifted: the admission policy admits again");
            }
        }
        Admission::Reject {
            status,
            reason,
            answer,
        } => {
            tracing::info!(name = %request.name, app = %request.app_key, publish, %reason, "request refused by admission");
            return refusal(status, reason, answer);
        }
    }
    let (name, app) = (request.name.clone(), request.app_key.clone());
    let answer = match direction {
        Direction::Publish => state.media.publish(request).await,
        Direction::Play => state.media.play(request).await,
    };
    match answer {
        Ok(answer) => {
            let location = resource_path(answer.id);
            let link = format!("<{location}/events>; rel=\"{SSE_REL}\"; events=\"status\"");
            tracing::info!(
                stream = %answer.id, %name, app = %app,
                published = matches!(direction, Direction::Publish),
                remote = %peer, "session created"
            );
            let mut response = (StatusCode::CREATED, answer.sdp).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            for (key, value) in [
                (header::LOCATION, location),
                (header::LINK, link),
                (
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    "Location, Link, Retry-After".to_string(),
                ),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(key, value);
                }
            }
            response
        }
        Err(e) => media_error(e),
    }
}

/// Whether a plugin or a REST hook of the app decides on new publishes (or plays).
fn has_admission_policy(state: &AppState, app: &str, publish: bool) -> bool {
    let method = admission::method(publish);
    state.policy.decides_admission(app, publish)
        || state
            .config
            .load()
            .apps
            .get(app)
            .is_some_and(|a| a.url.is_some() && a.methods.contains_key(method))
}

/// The web server's word on a new stream (its `publishStream` / `playStream` hook).
async fn admit(state: &AppState, request: &OfferRequest, publish: bool) -> Admission {
    let mut new = if publish {
        NewStream::publisher(&request.name, &request.app_key)
    } else {
        NewStream::player(&request.name, &request.app_key)
    };
    new.media_session_id = Some(request.media_session_id);
    new.session_id = resource_path(request.media_session_id);
    new.remote_address = request.remote_address.clone();
    new.custom = request.custom.clone();
    new.bearer = request.bearer.clone();
    let record = StreamRecord::preview(new, state.registry.node_id());
    let config = state.config.load();
    let policy_request = AdmissionRequest {
        token: request.bearer.expose().map(String::from),
        query: request.custom.clone(),
        remote_address: request.remote_address.clone(),
    };
    // The app's plugin first; if it admits or has no opinion, the web server's hook.
    match state.policy.admit(&record, policy_request).await {
        Some(Ok(Code::Held(reason, _))) => {
            return Admission::Reject {
                status: 403,
                reason: reason.unwrap_or_else(|| "refused by policy (403)".into()),
                answer: None,
            };
        }
        Some(Ok(Code::Code(code, reason))) if !(200..300).contains(&code) => {
            return Admission::Reject {
                status: if (400..500).contains(&code) {
                    code
                } else {
                    403
                },
                reason: reason.unwrap_or_else(|| format!("refused by policy ({code})")),
                answer: None,
            };
        }
        Some(Err(e)) => {
            let method = admission::method(publish);
            let fails = config
                .apps
                .get(&record.app_key)
                .and_then(|a| a.methods.get(method))
                .is_none_or(|m| m.fails_on_error());
            if fails {
                return Admission::Reject {
                    status: 503,
                    reason: format!("admission policy failed: {e}"),
                    answer: None,
                };
            }
        }
        _ => {}
    }
    admission::admit(&state.hooks, &config, &record).await
}

/// How long a client refused because a policy could not be asked should wait.
const UNAVAILABLE_RETRY_MS: u64 = 1_000;

/// A refused WHIP/WHEP request, as JSON: the web server's answer (minus `clientExclude`)
/// when it gave an object, with `error`, `reason` and the client's `hint` added. A `503`
/// (the policy could not be asked) says retry, with `Retry-After`; a refusal says do not.
fn refusal(status: u16, reason: String, answer: Option<serde_json::Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let hint = if status == StatusCode::SERVICE_UNAVAILABLE {
        Hint::Retry {
            retry_after_ms: UNAVAILABLE_RETRY_MS,
        }
    } else {
        Hint::DoNotReconnect
    };
    let mut body = match answer {
        Some(serde_json::Value::Object(object)) => object,
        _ => serde_json::Map::new(),
    };
    body.entry("reason")
        .or_insert_with(|| reason.clone().into());
    body.insert("error".into(), reason.into());
    body.insert(
        "hint".into(),
        serde_json::to_value(hint).unwrap_or_default(),
    );
    with_retry_after(
        (status, axum::Json(serde_json::Value::Object(body))).into_response(),
        hint,
    )
}

/// `403` for a request a hold refuses: why, until when, and `Retry-After`.
fn held(hold: &Hold) -> Response {
    let now = crate::registry::now_ms();
    let retry_after_ms = hold.remaining_ms(now);
    let hint = Hint::Retry { retry_after_ms };
    let reason = if hold.reason.is_empty() {
        "stopped by the server".to_string()
    } else {
        hold.reason.clone()
    };
    let body = serde_json::json!({
        "error": format!("held: {reason}; try again in {} s", retry_after_ms.div_ceil(1000)),
        "reason": reason,
        "holdId": hold.hold_id,
        "heldUntil": hold.until,
        "hint": hint,
    });
    with_retry_after(
        (StatusCode::FORBIDDEN, axum::Json(body)).into_response(),
        hint,
    )
}

fn with_retry_after(mut response: Response, hint: Hint) -> Response {
    if let Hint::Retry { retry_after_ms } = hint {
        let seconds = retry_after_ms.div_ceil(1000).max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn media_error(e: MediaError) -> Response {
    match &e {
        MediaError::Registry(RegistryError::Held(hold)) => {
            tracing::info!(
                hold = hold.hold_id,
                "request refused by a hold at registration"
            );
            return held(hold);
        }
        MediaError::Registry(RegistryError::Draining | RegistryError::Full(_)) => {
            return refusal(503, e.to_string(), None);
        }
        _ => {}
    }
    let status = match &e {
        MediaError::BadOffer(_) | MediaError::NoMedia(_) => StatusCode::BAD_REQUEST,
        MediaError::Registry(RegistryError::AlreadyPublishing(_)) => StatusCode::CONFLICT,
        MediaError::Registry(RegistryError::NotPublishing(_)) => StatusCode::NOT_FOUND,
        MediaError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
        MediaError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        MediaError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "WHIP/WHEP request failed");
    }
    let mut response = TextError::new(status, e.to_string()).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Checks everything about the request that does not need media. `Err` is the response.
fn read_request(
    state: &AppState,
    peer: SocketAddr,
    name: String,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OfferRequest, TextError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(TextError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/sdp, not '{content_type}'"),
        ));
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(TextError::new(
            StatusCode::BAD_REQUEST,
            format!("a stream name is 1 to {MAX_NAME_LEN} printable characters"),
        ));
    }
    let Ok(sdp) = std::str::from_utf8(body) else {
        return Err(TextError::new(
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8 text",
        ));
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| TextError::new(StatusCode::BAD_REQUEST, format!("bad query string: {e}")))?;
    let mut app_key = "defaultApp".to_string();
    let mut custom = BTreeMap::new();
    for (key, value) in pairs {
        if key == "app" {
            app_key = value;
        } else {
            custom.insert(key, value);
        }
    }
    if state.config.load().apps.get(&app_key).is_none() {
        return Err(TextError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown app '{app_key}'"),
        ));
    }
    let bearer = super::auth::bearer_token(headers);
    Ok(OfferRequest {
        media_session_id: uuid::Uuid::new_v4(),
        name,
        app_key,
        sdp: sdp.to_string(),
        custom,
        bearer: Bearer::new(bearer),
        remote_address: peer.to_string(),
    })
}
