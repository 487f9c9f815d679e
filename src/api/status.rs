//! The server's views of itself under `/rest-api/`: the configuration in force, keep-alive
//! and hook outcomes, plugins, and what the process holds.

use axum::extract::State;
use serde::Serialize;

use super::AppState;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfigView {
    dir: Option<String>,
    #[serde(flatten)]
    status: crate::config::ReloadStatus,
    reloads: u64,
    failures: u64,
    settings: std::collections::BTreeMap<&'static str, String>,
    /// Keys of WCS's documented settings in the file that Sluice does not implement.
    ignored_keys: Vec<String>,
    apps: crate::config::Apps,
    /// Each app's web server circuit breaker (apps whose hooks were called).
    breakers: std::collections::BTreeMap<String, crate::hooks::BreakerView>,
}

/// `/rest-api/config`: the values in force, which file versions they come from, the last
/// reload error and the keys waiting for a restart.
pub(super) async fn config_status(State(state): State<AppState>) -> axum::Json<ConfigView> {
    let config = state.config.load();
    let (reloads, failures) = state.config.counts();
    axum::Json(ConfigView {
        dir: state.config.dir().map(|d| d.display().to_string()),
        status: state.config.status(),
        reloads,
        failures,
        settings: config.settings.as_properties(),
        ignored_keys: config.ignored_keys.clone(),
        apps: config.apps.clone(),
        breakers: state.hooks.breakers.snapshot(
            crate::hooks::CallLimits::from(&config.settings).breaker,
            std::time::Instant::now(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeepAliveView {
    enabled: bool,
    interval_ms: u64,
    app_keys: Vec<String>,
    verdicts: std::collections::BTreeMap<&'static str, crate::keepalive::VerdictCounts>,
    hooks: Vec<HookView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HookView {
    app_key: String,
    method: String,
    #[serde(flatten)]
    counts: crate::hooks::OutcomeCounts,
}

/// `/rest-api/keepalive`: the scheduler's settings in force, verdicts by source and result,
/// and every REST hook's outcomes by app and method.
pub(super) async fn keepalive_status(State(state): State<AppState>) -> axum::Json<KeepAliveView> {
    let settings = &state.config.load().settings;
    axum::Json(KeepAliveView {
        enabled: settings.keep_alive_streaming_sessions_enabled,
        interval_ms: settings.streaming_sessions_keep_alive_interval.as_millis() as u64,
        app_keys: settings.streaming_sessions_keep_alive_app_keys.clone(),
        verdicts: state.keepalive.stats.snapshot(),
        hooks: state
            .hooks
            .stats
            .snapshot()
            .into_iter()
            .map(|((app_key, method), counts)| HookView {
                app_key,
                method,
                counts,
            })
            .collect(),
    })
}

/// `/rest-api/plugins`: each app's plugin — file, version, when loaded, entry points, calls,
/// errors, the last error.
pub(super) async fn plugins_status(
    State(state): State<AppState>,
) -> axum::Json<Vec<crate::policy::PluginStatus>> {
    axum::Json(state.policy.status())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Runtime {
    streams: usize,
    alive_tasks: usize,
    open_fds: usize,
    peer_connections: usize,
    event_streams: usize,
}

/// `/rest-api/server/runtime`: what the process holds, to prove stops leave nothing behind.
pub(super) async fn runtime(State(state): State<AppState>) -> axum::Json<Runtime> {
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    axum::Json(Runtime {
        streams: state.registry.len(),
        alive_tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        open_fds,
        peer_connections: state.media.peer_count(),
        event_streams: state.event_streams.len(),
    })
}
