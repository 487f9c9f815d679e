//! The keep-alive scheduler: every `streaming_sessions_keep_alive_interval` each live stream
//! of an app in `streaming_sessions_keep_alive_app_keys` gets one verdict — from the app's
//! `StreamKeepAliveEvent` REST hook, or for a whole app at once from its
//! `StreamKeepAliveBatchEvent` — and a `403` stops it with a termination record.
//!
//! Streams are spread over the interval by a slot derived from their id, so verdicts go out
//! evenly rather than in a burst per tick. Each verdict runs in its own task under the app's
//! cap on calls in flight (a full cap skips the verdict, never waits), so no verdict waits on
//! another stream's slow answer and a slow app cannot delay another app.

mod apply;
mod stats;
mod verdict;
mod window;

pub use stats::{KeepAliveStats, VerdictCounts};
pub use verdict::{Verdict, batch_stops, verdict_of};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use window::{Window, app_slot};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{AppConfig, ConfigStore, MethodConfig};
use crate::hooks::{self, HookClient};
use crate::policy::{PluginVerdict, PolicyHost};
use crate::registry::{
    HoldFilter, HoldSpec, Registry, StreamFilter, StreamRecord, TerminationSource,
};

pub const KEEPALIVE_METHOD: &str = "StreamKeepAliveEvent";
pub const BATCH_METHOD: &str = "StreamKeepAliveBatchEvent";

/// How often the scheduler looks for due streams: the bound on how late a verdict goes out.
const TICK: Duration = Duration::from_millis(25);

/// Where a verdict came from, for counters and termination records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Plugin,
    Hook,
    Batch,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Plugin => "plugin",
            Source::Hook => "hook",
            Source::Batch => "batch",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Source::Plugin => "on_keepalive",
            Source::Hook => KEEPALIVE_METHOD,
            Source::Batch => BATCH_METHOD,
        }
    }
}

pub struct KeepAlive {
    registry: Arc<Registry>,
    config: Arc<ConfigStore>,
    hooks: HookClient,
    policy: Arc<PolicyHost>,
    /// Consecutive failed verdicts per stream, for `restOnError = FAIL`.
    failures: Mutex<HashMap<Uuid, u32>>,
    /// Plugin batches in flight per app: a slow plugin gets no more than
    /// [`PLUGIN_BATCHES_IN_FLIGHT`] at once, later windows' streams are skipped (counted).
    plugin_batches: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    tasks: TaskTracker,
    pub stats: KeepAliveStats,
    /// The last verdict of each live stream, for the operator console.
    last: Mutex<HashMap<Uuid, LastVerdict>>,
    /// Verdicts given so far, per app.
    given: Mutex<HashMap<String, u64>>,
}

/// A stream's last keep-alive verdict: who gave it, what it said, when.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastVerdict {
    /// `on_keepalive`, `StreamKeepAliveEvent` or the batch method.
    pub source: &'static str,
    /// `keep`, `stop` or `failed`.
    pub outcome: &'static str,
    /// `200` to keep, the refusal's status to stop, `0` when it could not be asked.
    pub code: u16,
    pub reason: String,
    pub at: u64,
}

/// Keep-alive batches one app's plugin may have in flight at once.
pub const PLUGIN_BATCHES_IN_FLIGHT: usize = 2;

impl KeepAlive {
    pub fn new(
        registry: Arc<Registry>,
        config: Arc<ConfigStore>,
        hooks: HookClient,
        policy: Arc<PolicyHost>,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(KeepAlive {
            registry,
            config,
            hooks,
            policy,
            tasks,
            plugin_batches: Mutex::default(),
            failures: Mutex::default(),
            stats: KeepAliveStats::default(),
            last: Mutex::default(),
            given: Mutex::default(),
        })
    }

    /// The last verdict of each stream `live` accepts; the others' are forgotten.
    pub fn last_verdicts(&self, live: impl Fn(&Uuid) -> bool) -> HashMap<Uuid, LastVerdict> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|id, _| live(id));
        last.clone()
    }

    /// Verdicts given so far, per app.
    pub fn verdicts_by_app(&self) -> HashMap<String, u64> {
        self.given.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps given in one batch, remembered under one lock.
    fn remember_kept(&self, app_key: &str, ids: &[Uuid], source: Source) {
        if ids.is_empty() {
            return;
        }
        *self
            .given
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app_key.to_string())
            .or_default() += ids.len() as u64;
        let at = crate::registry::now_ms();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            last.insert(
                *id,
                LastVerdict {
                    source: source.method(),
                    outcome: "keep",
                    code: 200,
                    reason: String::new(),
                    at,
                },
            );
        }
    }

    fn remember(&self, id: Uuid, app_key: &str, verdict: LastVerdict) {
        *self
            .given
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app_key.to_string())
            .or_default() += 1;
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, verdict);
    }

    /// Runs the scheduler until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let epoch = Instant::now();
            let mut last: Option<(u64, u64)> = None; // (interval, elapsed ms) of the previous tick
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_cleanup = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let config = this.config.load();
                let settings = &config.settings;
                if !settings.keep_alive_streaming_sessions_enabled {
                    last = None;
                    continue;
                }
                let interval =
                    (settings.streaming_sessions_keep_alive_interval.as_millis() as u64).max(1);
                let now = epoch.elapsed().as_millis() as u64;
                let window = match last {
                    // A changed interval starts afresh rather than mixing two moduli.
                    Some((was, then)) if was == interval => Window {
                        from: then % interval,
                        to: now % interval,
                        whole: now.saturating_sub(then) >= interval,
                    },
                    _ => {
                        last = Some((interval, now));
                        continue;
                    }
                };
                last = Some((interval, now));
                this.run_window(
                    &config.apps.apps,
                    &settings.streaming_sessions_keep_alive_app_keys,
                    interval,
                    window,
                );
                if last_cleanup.elapsed() >= Duration::from_secs(5) {
                    last_cleanup = Instant::now();
                    let registry = this.registry.clone();
                    this.lock_failures()
                        .retain(|id, _| registry.get(*id).is_some());
                }
            }
        });
    }

    fn run_window(
        self: &Arc<Self>,
        apps: &BTreeMap<String, AppConfig>,
        app_keys: &[String],
        interval: u64,
        window: Window,
    ) {
        // Which apps get verdicts, and how: a plugin first (falling back to the per-stream
        // hook when it abstains), else the batch hook, else the per-stream hook.
        let mut plugin_apps: HashSet<&str> = HashSet::new();
        let mut per_stream: HashMap<&str, (&str, &MethodConfig)> = HashMap::new();
        for key in app_keys {
            let Some(app) = apps.get(key) else { continue };
            let hook = app.url.as_deref().zip(app.methods.get(KEEPALIVE_METHOD));
            if self.policy.decides_keepalive(key) {
                plugin_apps.insert(key.as_str());
                if let Some(hook) = hook {
                    per_stream.insert(key.as_str(), hook);
                }
                continue;
            }
            let Some(url) = app.url.as_deref() else {
                continue;
            };
            if let Some(method) = app.methods.get(BATCH_METHOD) {
                if window.contains(app_slot(key, interval)) {
                    let streams = self.registry.find(|r| r.app_key == *key);
                    if !streams.is_empty() {
                        self.spawn_batch(key.clone(), url.to_string(), method.clone(), streams);
                    }
                }
            } else if let Some(hook) = hook {
                per_stream.insert(key.as_str(), hook);
            }
        }
        if per_stream.is_empty() && plugin_apps.is_empty() {
            return;
        }
        // The due streams come from the phase index: a tick costs what is due, not the table.
        let due = self.registry.due(&window.phase_ranges(interval), |r| {
            let app = r.app_key.as_str();
            // An edge relay is verdicted on its origin, as the stream it copies.
            r.origin_node.is_none() && (plugin_apps.contains(app) || per_stream.contains_key(app))
        });
        let mut for_plugins: BTreeMap<String, Vec<StreamRecord>> = BTreeMap::new();
        for record in due {
            if plugin_apps.contains(record.app_key.as_str()) {
                for_plugins
                    .entry(record.app_key.clone())
                    .or_default()
                    .push(record);
            } else if let Some((url, method)) = per_stream.get(record.app_key.as_str()) {
                self.spawn_verdict(record, url.to_string(), (*method).clone());
            }
        }
        for (app, records) in for_plugins {
            let fallback = per_stream
                .get(app.as_str())
                .map(|(url, method)| (url.to_string(), (*method).clone()));
            // restOnError comes from the app's keep-alive method, hook URL or not.
            let on_error = apps
                .get(&app)
                .and_then(|a| a.methods.get(KEEPALIVE_METHOD))
                .cloned()
                .unwrap_or_default();
            self.spawn_plugin(records, fallback, on_error);
        }
    }

    /// One call into the app's plugin for all its due streams; abstentions go to the app's
    /// per-stream hook, if it has one.
    fn spawn_plugin(
        self: &Arc<Self>,
        records: Vec<StreamRecord>,
        fallback: Option<(String, MethodConfig)>,
        on_error: MethodConfig,
    ) {
        let app = records[0].app_key.clone();
        let semaphore = self
            .plugin_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PLUGIN_BATCHES_IN_FLIGHT)))
            .clone();
        let Ok(permit) = semaphore.try_acquire_owned() else {
            self.stats.count_many(
                Source::Plugin,
                "skipped",
                records.len() as u64,
                Duration::ZERO,
            );
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let ids: Vec<Uuid> = records.iter().map(|r| r.media_session_id).collect();
            let count = records.len().max(1) as u32;
            let verdicts = this.policy.keepalive(&app, records).await;
            let took = started.elapsed() / count;
            // Keeps, the common case, are counted and cleared of failures in one go.
            let mut kept = Vec::new();
            for (id, verdict) in ids.into_iter().zip(verdicts) {
                let verdict = match verdict {
                    PluginVerdict::Keep => {
                        kept.push(id);
                        continue;
                    }
                    PluginVerdict::Stop(reason, hold) => Verdict::Stop(reason, hold),
                    PluginVerdict::Failed(why) => Verdict::Failed(why),
                    PluginVerdict::Abstain => {
                        this.stats.count(Source::Plugin, "abstain", took);
                        if let (Some((url, method)), Some(record)) =
                            (&fallback, this.registry.get(id))
                        {
                            this.spawn_verdict(record, url.clone(), method.clone());
                        }
                        continue;
                    }
                };
                this.apply(id, &app, verdict, Source::Plugin, &on_error, took);
            }
            this.stats
                .count_many(Source::Plugin, "keep", kept.len() as u64, took);
            this.remember_kept(&app, &kept, Source::Plugin);
            let mut failures = this.lock_failures();
            if !failures.is_empty() {
                for id in &kept {
                    failures.remove(id);
                }
            }
        });
    }

    /// A slot among the app's calls in flight and the call timeout, or `None` (counted as a
    /// skipped verdict) when the cap is reached: a verdict never waits for a slot.
    fn slot(
        &self,
        app: &str,
        source: Source,
    ) -> Option<(tokio::sync::OwnedSemaphorePermit, hooks::CallLimits)> {
        let settings = &self.config.load().settings;
        match self.hooks.try_slot(app, settings.rest_hook_max_in_flight) {
            Ok(permit) => Some((permit, hooks::CallLimits::from(settings))),
            Err(e) => {
                self.hooks.stats.skipped(app, source.method(), &e);
                self.stats.count(source, "skipped", Duration::ZERO);
                None
            }
        }
    }

    fn spawn_verdict(self: &Arc<Self>, record: StreamRecord, url: String, method: MethodConfig) {
        let Some((permit, timeout)) = self.slot(&record.app_key, Source::Hook) else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let body = hooks::stream_body(&record, &method);
            let answer = this
                .hooks
                .call(&record.app_key, &url, KEEPALIVE_METHOD, &body, timeout)
                .await;
            drop(permit);
            let verdict = verdict_of(&answer);
            if let (Verdict::Keep, Ok(answer)) = (&verdict, &answer)
                && let Some(custom) = hooks::overwritten_custom(&method, answer)
            {
                this.registry.update_custom(record.media_session_id, custom);
            }
            this.apply(
                record.media_session_id,
                &record.app_key,
                verdict,
                Source::Hook,
                &method,
                started.elapsed(),
            );
        });
    }

    fn spawn_batch(
        self: &Arc<Self>,
        app: String,
        url: String,
        method: MethodConfig,
        streams: Vec<StreamRecord>,
    ) {
        let Some((permit, timeout)) = self.slot(&app, Source::Batch) else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let body = json!({
                "nodeId": this.registry.node_id(),
                "appKey": app,
                "streams": streams.iter().map(|r| hooks::stream_body(r, &method)).collect::<Vec<_>>(),
            });
            let answer = this
                .hooks
                .call(&app, &url, BATCH_METHOD, &body, timeout)
                .await;
            drop(permit);
            let took = started.elapsed();
            match batch_stops(&answer) {
                Ok(stops) => {
                    for record in &streams {
                        let verdict = match stops.get(&record.media_session_id) {
                            Some((reason, hold)) => Verdict::Stop(reason.clone(), *hold),
                            None => Verdict::Keep,
                        };
                        this.apply(
                            record.media_session_id,
                            &record.app_key,
                            verdict,
                            Source::Batch,
                            &method,
                            took,
                        );
                    }
                }
                Err(why) => {
                    for record in &streams {
                        this.apply(
                            record.media_session_id,
                            &record.app_key,
                            Verdict::Failed(why.clone()),
                            Source::Batch,
                            &method,
                            took,
                        );
                    }
                }
            }
        });
    }
}
