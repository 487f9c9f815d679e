//! Bearer-token auth of `/rest-api/`: tokens from `rest_api_tokens` and from the file named
//! by `rest_api_tokens_file`, compared in constant time. The file is re-read when it changes
//! (checked by its metadata on each call), so tokens change live; an unreadable file keeps
//! the last good tokens.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::extract::{Request, State};
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

/// Middleware: `401` unless the request carries an accepted `Authorization: Bearer` token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let config = state.config.load();
    if Tokens::is_open(&config.settings) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if state.tokens.accepts(&config.settings, token) => next.run(request).await,
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
    fn no_tokens_means_open() {
        assert!(Tokens::is_open(&Settings::default()));
    }
}
