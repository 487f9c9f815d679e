//! Bearer-token auth of `/rest-api/`: tokens from `rest_api_tokens` and from the file named
//! by `rest_api_tokens_file`, compared in constant time. The file is re-read when it changes
//! (checked by its metadata on each call), so tokens change live; an unreadable file keeps
//! the last good tokens.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::AppState;
use super::rest::ApiError;
use crate::config::Settings;

/// The tokens file as last read, re-read when its path or metadata changes.
#[derive(Default)]
pub struct Tokens {
    file: Mutex<FileTokens>,
}

#[derive(Default)]
struct FileTokens {
    path: Option<PathBuf>,
    stamp: Option<(SystemTime, u64)>,
    tokens: Vec<String>,
}

impl Tokens {
    /// Reads the tokens file now: one that cannot be read at start is an error.
    pub fn new(settings: &Settings) -> std::io::Result<Self> {
        let tokens = Tokens::default();
        if let Some(path) = &settings.rest_api_tokens_file {
            *tokens.lock() = read_file(path)?;
        }
        Ok(tokens)
    }

    /// True when no token is configured: the REST API is open.
    pub fn is_open(settings: &Settings) -> bool {
        settings.rest_api_tokens.is_empty() && settings.rest_api_tokens_file.is_none()
    }

    pub fn accepts(&self, settings: &Settings, presented: &str) -> bool {
        if let Some(path) = &settings.rest_api_tokens_file {
            self.refresh(path);
        }
        let from_file = self.lock();
        let file_tokens = match &settings.rest_api_tokens_file {
            Some(path) if from_file.path.as_ref() == Some(path) => from_file.tokens.as_slice(),
            _ => &[],
        };
        let mut accepted = 0u8;
        // Every token is compared, so the time taken does not tell which one came close.
        for token in settings.rest_api_tokens.iter().chain(file_tokens) {
            accepted |= token.as_bytes().ct_eq(presented.as_bytes()).unwrap_u8();
        }
        accepted == 1
    }

    fn refresh(&self, path: &PathBuf) {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        {
            let current = self.lock();
            if current.path.as_ref() == Some(path) && stamp.is_some() && stamp == current.stamp {
                return;
            }
        }
        match read_file(path) {
            Ok(loaded) => *self.lock() = loaded,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "tokens file unreadable; keeping the last good tokens")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileTokens> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_file(path: &PathBuf) -> std::io::Result<FileTokens> {
    let metadata = std::fs::metadata(path)?;
    let text = std::fs::read_to_string(path)?;
    let tokens = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    Ok(FileTokens {
        path: Some(path.clone()),
        stamp: metadata.modified().ok().map(|m| (m, metadata.len())),
        tokens,
    })
}

/// Query parameters that look like a credential. A token in a URL ends up in logs and
/// browser history, so such a request is refused even when the token is right.
const TOKEN_QUERY_KEYS: &[&str] = &["token", "access_token", "auth", "authorization", "bearer"];

/// Whether a REST call from `peer` may be served while no token is configured: only from
/// this host.
pub fn open_api_allows(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Middleware: with tokens configured, `401` unless the request carries an accepted
/// `Authorization: Bearer` token; with none, `403` unless the caller is on loopback.
/// A credential in the query string is refused either way.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let query_token = request.uri().query().is_some_and(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .unwrap_or_default()
            .iter()
            .any(|(key, _)| TOKEN_QUERY_KEYS.contains(&key.to_ascii_lowercase().as_str()))
    });
    if query_token {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "a token in the query string is refused: send it as Authorization: Bearer",
        )
        .into_response();
    }
    let config = state.config.load();
    if Tokens::is_open(&config.settings) {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if peer.is_some_and(open_api_allows) {
            return next.run(request).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the REST API answers only on loopback while no rest_api_tokens are set",
        )
        .into_response();
    }
    let presented = bearer_token(request.headers());
    match presented {
        Some(token) if state.tokens.accepts(&config.settings, &token) => next.run(request).await,
        _ => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
                    .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The token of an `Authorization: Bearer …` header (the scheme in any case), read by the
/// `headers` crate's typed header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    use axum_extra::headers::{Authorization, HeaderMapExt, authorization::Bearer};
    headers
        .typed_get::<Authorization<Bearer>>()
        .map(|auth| auth.token().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_file_tokens_and_live_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# operators\nalpha\n\n").unwrap();
        let settings = Settings {
            rest_api_tokens: vec!["inline".into()],
            rest_api_tokens_file: Some(file.clone()),
            ..Settings::default()
        };
        let tokens = Tokens::new(&settings).unwrap();
        assert!(tokens.accepts(&settings, "inline"));
        assert!(tokens.accepts(&settings, "alpha"));
        assert!(!tokens.accepts(&settings, "alph"));
        assert!(!tokens.accepts(&settings, ""));
        std::fs::write(&file, "beta-token-longer\n").unwrap();
        assert!(tokens.accepts(&settings, "beta-token-longer"));
        assert!(!tokens.accepts(&settings, "alpha"));
        std::fs::remove_file(&file).unwrap();
        assert!(
            tokens.accepts(&settings, "beta-token-longer"),
            "an unreadable file keeps the last good tokens"
        );
        let without_file = Settings {
            rest_api_tokens_file: None,
            ..settings
        };
        assert!(
            !tokens.accepts(&without_file, "beta-token-longer"),
            "a file no longer named gives no tokens"
        );
    }

    #[test]
    fn no_tokens_means_open_to_loopback_only() {
        assert!(Tokens::is_open(&Settings::default()));
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(open_api_allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.0.2.7",
            "0.0.0.0",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!open_api_allows(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut headers = axum::http::HeaderMap::new();
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&headers).as_deref(), token, "{value}");
        }
    }
}
