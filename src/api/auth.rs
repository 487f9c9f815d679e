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

/// Where the accepted tokens come from.
pub struct Tokens {
    inline: Vec<String>,
    file: Option<PathBuf>,
    from_file: Mutex<FileTokens>,
}

#[derive(Default)]
struct FileTokens {
    stamp: Option<(SystemTime, u64)>,
    tokens: Vec<String>,
}

impl Tokens {
    /// Reads the file now: a tokens file that cannot be read at start is an error.
    pub fn new(inline: Vec<String>, file: Option<PathBuf>) -> std::io::Result<Self> {
        let tokens = Tokens {
            inline,
            file,
            from_file: Mutex::new(FileTokens::default()),
        };
        if let Some(path) = &tokens.file {
            let loaded = read_file(path)?;
            *tokens.lock() = loaded;
        }
        Ok(tokens)
    }

    /// True when no token is configured: the REST API is open.
    pub fn is_open(&self) -> bool {
        self.inline.is_empty() && self.file.is_none()
    }

    pub fn accepts(&self, presented: &str) -> bool {
        self.refresh();
        let from_file = self.lock();
        let mut accepted = 0u8;
        // Every token is compared, so the time taken does not tell which one came close.
        for token in self.inline.iter().chain(from_file.tokens.iter()) {
            accepted |= token.as_bytes().ct_eq(presented.as_bytes()).unwrap_u8();
        }
        accepted == 1
    }

    fn refresh(&self) {
        let Some(path) = &self.file else { return };
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp == self.lock().stamp {
            return;
        }
        match read_file(path) {
            Ok(loaded) => *self.lock() = loaded,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "tokens file unreadable; keeping the last good tokens")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileTokens> {
        self.from_file.lock().unwrap_or_else(|e| e.into_inner())
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
    if state.tokens.is_open() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if state.tokens.accepts(token) => next.run(request).await,
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
        let tokens = Tokens::new(vec!["inline".into()], Some(file.clone())).unwrap();
        assert!(tokens.accepts("inline"));
        assert!(tokens.accepts("alpha"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts(""));
        std::fs::write(&file, "beta-token-longer\n").unwrap();
        assert!(tokens.accepts("beta-token-longer"));
        assert!(!tokens.accepts("alpha"));
        std::fs::remove_file(&file).unwrap();
        assert!(
            tokens.accepts("beta-token-longer"),
            "an unreadable file keeps the last good tokens"
        );
    }

    #[test]
    fn no_tokens_means_open() {
        assert!(Tokens::new(Vec::new(), None).unwrap().is_open());
    }
}
