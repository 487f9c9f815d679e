//! `POST /whip/{name}` (RFC 9725 ingest) and `POST /whep/{name}` (playback): the HTTP
//! adapter of the session service. It reads the HTTP request into an
//! [`Offer`](crate::sessions::Offer), and turns the answer into a `201` with `Location` and
//! the status stream's `Link`, or a refusal into its HTTP status.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AppState, TextError};
use crate::media::{MediaError, SessionAnswer, resource_path};
use crate::registry::{Hint, Hold, RegistryError};
use crate::sessions::{Offer, Refusal, Role};

/// The `rel` of the status stream link, as the WHEP server-sent-events extension names it.
const SSE_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";

pub fn routes() -> Router<AppState> {
    Router::new()
        // `OPTIONS` (RFC 9725 §4.2), preflight or not, is answered by the CORS layer.
        .route("/whip/{name}", post(publish))
        .route("/whep/{name}", post(play))
}

async fn publish(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    name: Path<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, peer, name, query, headers, body, Role::Publish).await
}

async fn play(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    name: Path<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, peer, name, query, headers, body, Role::Play).await
}

async fn offer(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    let offer = match read_offer(role, peer, name, query.as_deref(), &headers, &body) {
        Ok(offer) => offer,
        Err(e) => return e.into_response(),
    };
    match state.sessions.open(offer).await {
        Ok(answer) => created(&state, answer),
        Err(refusal) => refused(refusal),
    }
}

/// `201` with the SDP answer, the session's `Location`, its ICE session's `ETag`, what
/// `PATCH` takes, the `Link` to its events (the WHEP server-sent-events extension; `GET`
/// of it is Sluice's status stream) and a `Link` per configured STUN/TURN server.
fn created(state: &AppState, answer: SessionAnswer) -> Response {
    let location = resource_path(answer.id);
    let mut links = vec![format!(
        "<{location}/events>; rel=\"{SSE_REL}\"; events=\"{}\"",
        super::whep_events::OFFERED
    )];
    links.extend(
        state
            .config
            .load()
            .settings
            .ice_servers
            .iter()
            .map(|server| server.link()),
    );
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    h.insert(
        axum::http::HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(super::session::SDPFRAG),
    );
    for (key, value) in [(header::LOCATION, location), (header::ETAG, answer.etag)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(key, value);
        }
    }
    for link in links {
        match HeaderValue::from_str(&link) {
            Ok(value) => {
                h.append(header::LINK, value);
            }
            Err(_) => tracing::warn!(%link, "a Link header value is not valid; not sent"),
        }
    }
    response
}

/// A refusal of the session service, as WHIP/WHEP clients expect it.
fn refused(why: Refusal) -> Response {
    match why {
        Refusal::TooManyOffers {
            rate,
            retry_after,
            from,
        } => {
            let hint = Hint::Retry {
                retry_after_ms: retry_after.as_millis() as u64,
            };
            let body = serde_json::json!({
                "error": format!("too many offers from {from}: at most {rate} per second"),
                "hint": hint,
            });
            with_retry_after(
                (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response(),
                hint,
            )
        }
        Refusal::BadName(message) => {
            TextError::new(StatusCode::BAD_REQUEST, message).into_response()
        }
        Refusal::UnknownApp(app) => {
            TextError::new(StatusCode::BAD_REQUEST, format!("unknown app '{app}'")).into_response()
        }
        Refusal::Held(hold) => held(&hold),
        Refusal::Rejected {
            status,
            reason,
            answer,
        } => refusal(status, reason, answer),
        Refusal::Media(e) => media_error(e),
    }
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
        MediaError::Registry(RegistryError::AlreadyPublishing(_) | RegistryError::IdInUse(_)) => {
            StatusCode::CONFLICT
        }
        MediaError::Registry(RegistryError::NotPublishing(_)) => StatusCode::NOT_FOUND,
        MediaError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
        MediaError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        // The stream exists, in no form this player accepts.
        MediaError::CodecMismatch(_) => StatusCode::NOT_ACCEPTABLE,
        MediaError::Origin(_) => StatusCode::BAD_GATEWAY,
        MediaError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "WHIP/WHEP request failed");
    }
    TextError::new(status, e.to_string()).retrying()
}

/// Reads the HTTP side of an offer. `Err` is the response.
fn read_offer(
    role: Role,
    peer: SocketAddr,
    name: String,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Offer, TextError> {
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
    let Ok(sdp) = std::str::from_utf8(body) else {
        return Err(TextError::new(
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8 text",
        ));
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| TextError::new(StatusCode::BAD_REQUEST, format!("bad query string: {e}")))?;
    let mut app_key = None;
    let mut custom = BTreeMap::new();
    for (key, value) in pairs {
        if key == "app" {
            app_key = Some(value);
        } else {
            custom.insert(key, value);
        }
    }
    Ok(Offer {
        role,
        name,
        app_key,
        sdp: sdp.to_string(),
        query: custom,
        token: super::auth::bearer_token(headers),
        remote_ip: peer.ip(),
        remote_address: peer.to_string(),
        media_session_id: None,
        session_id: None,
    })
}
