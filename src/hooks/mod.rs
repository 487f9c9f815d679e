//! The outbound REST hook client: `POST {app url}/{method}` with the stream's fields as the
//! model sends them, `restClientConfig` semantics (`restExclude`, `restOnError`, `restPolicy`
//! / `restOverwrite`, `clientExclude`), a timeout per call, a cap on calls in flight per app
//! that never makes a caller wait, bounded answers, counters by outcome, and rate-limited logs.

pub mod admission;
pub mod breaker;
pub mod notify;
mod stats;

pub use breaker::{BreakerLimits, BreakerState, BreakerView, Breakers};
pub use stats::{HookStats, LATENCY_BUCKETS, Latency, OutcomeCounts};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::MethodConfig;
use crate::registry::StreamRecord;

/// The largest hook answer read; a larger one is a failed call.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why a hook call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("not an HTTP answer: {0}")]
    Garbage(String),
    #[error("answer is over {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("{0} calls already in flight for this app")]
    Saturated(usize),
    #[error("the web server failed repeatedly; not called for another {0:?} (circuit open)")]
    CircuitOpen(Duration),
}

impl HookError {
    /// A short label for counters and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::Connect(_) => "connect",
            HookError::Timeout(_) => "timeout",
            HookError::Status(_) => "status",
            HookError::Garbage(_) => "garbage",
            HookError::TooLarge => "too_large",
            HookError::Saturated(_) => "saturated",
            HookError::CircuitOpen(_) => "circuit_open",
        }
    }
}

/// A hook's answer: its HTTP status and JSON body (`Null` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct HookAnswer {
    pub status: u16,
    pub body: Value,
}

impl HookAnswer {
    /// A reason the web server gave: `reason`, else `info`, else a plain-text body.
    pub fn reason(&self) -> Option<String> {
        match &self.body {
            Value::Object(o) => o
                .get("reason")
                .or_else(|| o.get("info"))
                .and_then(Value::as_str)
                .map(String::from),
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().chars().take(200).collect()),
            _ => None,
        }
        .filter(|r| !r.is_empty())
    }
}

/// The app's web server URL and the method's config, when the app lists that method.
pub fn hook_of<'a>(
    config: &'a crate::config::Config,
    app_key: &str,
    method_name: &str,
) -> Option<(&'a str, &'a MethodConfig)> {
    let app = config.apps.get(app_key)?;
    Some((app.url.as_deref()?, app.methods.get(method_name)?))
}

/// Sends an event hook (`ConnectionStatusEvent`, …) if the app lists the method: the body
/// minus `restExclude`; the answer is only counted, as the model only logs it.
pub async fn event(
    client: &HookClient,
    config: &crate::config::Config,
    app_key: &str,
    method_name: &str,
    mut body: Map<String, Value>,
) {
    let Some((url, method)) = hook_of(config, app_key, method_name) else {
        return;
    };
    let _permit = match client.try_slot(app_key, config.settings.rest_hook_max_in_flight) {
        Ok(permit) => permit,
        Err(e) => return client.stats.skipped(app_key, method_name, &e),
    };
    exclude(&mut body, &method.rest_exclude);
    let _ = client
        .call(
            app_key,
            url,
            method_name,
            &Value::Object(body),
            CallLimits::from(&config.settings),
        )
        .await;
}

/// The JSON body of a hook about one stream, as the model sends it, minus `restExclude`.
pub fn stream_body(record: &StreamRecord, method: &MethodConfig) -> Value {
    let mut body = match serde_json::to_value(record) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    exclude(&mut body, &method.rest_exclude);
    Value::Object(body)
}

/// Removes the named fields (the model's `restExclude` / `clientExclude`).
pub fn exclude(object: &mut Map<String, Value>, fields: &[String]) {
    for field in fields {
        object.remove(field);
    }
}

/// Under `restPolicy = OVERWRITE`, the `custom` map the web server's answer gives, if
/// `restOverwrite` lists `custom` and the answer has one of strings.
pub fn overwritten_custom(
    method: &MethodConfig,
    answer: &HookAnswer,
) -> Option<std::collections::BTreeMap<String, String>> {
    if !method.overwrites() || !method.rest_overwrite.iter().any(|f| f == "custom") {
        return None;
    }
    let custom = answer.body.get("custom")?.as_object()?;
    Some(
        custom
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
    )
}

/// Per app: the configured cap on calls in flight and the semaphore that enforces it.
type InFlightCap = (usize, Arc<Semaphore>);

/// The limits of one call: its timeout and the breaker's thresholds, from the settings
/// in force when it starts.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub timeout: Duration,
    pub breaker: BreakerLimits,
}

impl CallLimits {
    /// A timeout and no breaker (benchmarks, one-off calls).
    pub fn timeout(timeout: Duration) -> Self {
        CallLimits {
            timeout,
            breaker: BreakerLimits {
                failures: 0,
                cooldown: Duration::ZERO,
            },
        }
    }
}

impl From<&crate::config::Settings> for CallLimits {
    fn from(settings: &crate::config::Settings) -> Self {
        CallLimits {
            timeout: settings.rest_hook_timeout,
            breaker: BreakerLimits {
                failures: settings.rest_hook_breaker_failures,
                cooldown: settings.rest_hook_breaker_cooldown,
            },
        }
    }
}

/// Calls REST hooks. Cheap to clone; connections are pooled and kept alive.
#[derive(Clone)]
pub struct HookClient {
    http: reqwest::Client,
    in_flight: Arc<Mutex<HashMap<String, InFlightCap>>>,
    pub stats: Arc<HookStats>,
    pub breakers: Arc<Breakers>,
}

impl HookClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .build()
            // Building with these options fails only without a TLS backend, which is compiled in.
            .unwrap_or_else(|_| reqwest::Client::new());
        HookClient {
            http,
            in_flight: Arc::default(),
            stats: Arc::default(),
            breakers: Arc::default(),
        }
    }

    /// A slot for one more call of `app`, or `Saturated` at once: callers never wait.
    pub fn try_slot(&self, app: &str, limit: usize) -> Result<OwnedSemaphorePermit, HookError> {
        let semaphore = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(app.to_string())
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            // A changed cap applies to new calls; calls in flight finish on the old semaphore.
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        semaphore
            .try_acquire_owned()
            .map_err(|_| HookError::Saturated(limit))
    }

    /// `POST {base}/{method}` with `body`; the answer within the timeout, or why not. While
    /// the app's breaker is open, fails at once with [`HookError::CircuitOpen`].
    pub async fn call(
        &self,
        app: &str,
        base: &str,
        method: &str,
        body: &Value,
        limits: CallLimits,
    ) -> Result<HookAnswer, HookError> {
        let started = std::time::Instant::now();
        let (pass, transition) = self.breakers.pass(app, limits.breaker, started);
        log_transition(transition);
        let probe = match pass {
            breaker::Pass::Call { probe } => probe,
            breaker::Pass::Refuse { retry_in } => {
                let error = HookError::CircuitOpen(retry_in);
                self.stats.skipped(app, method, &error);
                return Err(error);
            }
        };
        // Dropped with this future (a client that hung up mid-call), the guard hands the
        // probe back rather than leave the breaker waiting for it forever.
        let guard = self.breakers.guard(app, probe, limits.breaker);
        let url = format!("{}/{}", base.trim_end_matches('/'), method);
        let result = tokio::time::timeout(limits.timeout, self.exchange(&url, body))
            .await
            .unwrap_or(Err(HookError::Timeout(limits.timeout)));
        let answered = matches!(&result, Ok(answer) if answer.status < 500);
        log_transition(guard.record(answered, std::time::Instant::now()));
        self.stats.record(app, method, &result, started.elapsed());
        result
    }

    async fn exchange(&self, url: &str, body: &Value) -> Result<HookAnswer, HookError> {
        let response = self.http.post(url).json(body).send().await.map_err(|e| {
            if e.is_connect() {
                HookError::Connect(short(&e))
            } else {
                // Connected, but what came back is not an HTTP answer.
                HookError::Garbage(short(&e))
            }
        })?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| HookError::Connect(short(&e)))?;
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(HookError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes);
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                // A plain-text body is fine on a refusal (it is the reason); on a 2xx with
                // nothing to overwrite it is ignored; only the caller knows which.
                Err(_) => Value::String(text.chars().take(1024).collect()),
            }
        };
        Ok(HookAnswer { status, body })
    }
}

impl Default for HookClient {
    fn default() -> Self {
        Self::new()
    }
}

fn log_transition(transition: Option<breaker::Transition>) {
    let Some(t) = transition else {
        return;
    };
    match t.to {
        BreakerState::Open => tracing::warn!(
            app = %t.app, from = t.from.as_str(), failures = t.failures,
            "web server circuit opened: its hooks are not called during the cool-down"
        ),
        BreakerState::HalfOpen => {
            tracing::info!(app = %t.app, "web server circuit half-open: probing")
        }
        BreakerState::Closed => {
            tracing::info!(app = %t.app, "web server circuit closed: it answers again")
        }
    }
}

fn short(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Bearer, NewStream};

    #[test]
    fn body_has_the_model_fields_minus_rest_exclude_and_never_the_token() {
        let mut new = NewStream::publisher("cam", "defaultApp");
        new.bearer = Bearer::new(Some("secret".into()));
        new.custom.insert("room".into(), "7".into());
        let registry = crate::registry::Registry::new("node1");
        let record = registry.register_synthetic(new).unwrap();
        let method = MethodConfig {
            rest_exclude: vec!["custom".into()],
            ..MethodConfig::default()
        };
        let body = stream_body(&record, &method);
        for field in [
            "nodeId",
            "appKey",
            "sessionId",
            "mediaSessionId",
            "name",
            "published",
            "status",
            "info",
            "mediaProvider",
        ] {
            assert!(body.get(field).is_some(), "{field} in {body}");
        }
        assert!(body.get("custom").is_none());
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn reasons_and_overwrites_from_answers() {
        let answer = HookAnswer {
            status: 403,
            body: serde_json::json!({"reason": "no ticket", "custom": {"tier": "gold", "n": 1}}),
        };
        assert_eq!(answer.reason().as_deref(), Some("no ticket"));
        let plain = HookAnswer {
            status: 403,
            body: Value::String("banned\n".into()),
        };
        assert_eq!(plain.reason().as_deref(), Some("banned"));
        let overwrite = MethodConfig {
            rest_policy: Some("OVERWRITE".into()),
            rest_overwrite: vec!["custom".into()],
            ..MethodConfig::default()
        };
        let custom = overwritten_custom(&overwrite, &answer).unwrap();
        assert_eq!(custom.get("tier").map(String::as_str), Some("gold"));
        assert!(!custom.contains_key("n"), "custom values are strings");
        assert!(
            overwritten_custom(&MethodConfig::default(), &answer).is_none(),
            "NOTIFY changes nothing"
        );
    }
}
