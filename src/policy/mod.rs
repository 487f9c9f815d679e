//! The Lua host: one sandboxed plugin state per app, each on a worker thread of its own that
//! runs its calls in order (so no lock is held around a Lua call and a slow plugin never
//! blocks the async runtime), and the calls the server makes — keep-alive verdicts, named
//! terminate filters, admission, stop notifications — with their counters and stuck-worker
//! replacement. Loading and hot swap are in `reconcile.rs`; the offline CLI in `offline.rs`.

mod budget;
mod host_api;
mod offline;
mod reconcile;
mod sandbox;
mod shared;
mod view;
mod worker;

pub use offline::{OfflineCall, test_offline};
pub use sandbox::{Code, Host, LOAD_TIMEOUT, Limits, Sandbox};
pub use shared::SharedStore;
pub use view::{AdmissionRequest, StreamView};
pub use worker::JOB_QUEUE;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConfigStore;
use crate::registry::{Registry, StatusEvent, StreamRecord, now_ms};
use view::record_of_event;
use worker::{Job, Worker, WorkerSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("does not load: {0}")]
    Load(String),
    #[error("{0}")]
    Call(String),
    #[error("wrong type: {0}")]
    WrongType(String),
    #[error("the plugin was unloaded")]
    Gone,
    #[error("the plugin is busy: {0} calls already queued")]
    Busy(usize),
    #[error("the plugin did not answer within {0:?}")]
    Timeout(Duration),
}

/// A plugin's keep-alive verdict on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginVerdict {
    Keep,
    /// Stop, with the reason and a hold in milliseconds if the plugin asked for one.
    Stop(String, Option<u64>),
    /// `nil`: the app's REST hook decides, if it has one.
    Abstain,
    Failed(String),
}

/// What a loaded plugin offers.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPoints {
    pub on_keepalive: bool,
    pub on_publish: bool,
    pub on_play: bool,
    pub on_stop: bool,
    pub on_connect: bool,
    pub filters: Vec<String>,
}

/// A loaded plugin: its worker (replaced when it gets stuck) and what it was loaded from.
struct Plugin {
    worker: ArcSwap<Worker>,
    spec: WorkerSpec,
    entries: EntryPoints,
    version: u64,
    hash: String,
    /// Set while a replacement worker is being started.
    replacing: AtomicBool,
}

/// One app's plugin as `GET /rest-api/plugins` shows it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub app_key: String,
    pub file: String,
    pub loaded: bool,
    pub version: u64,
    pub loaded_at: Option<u64>,
    pub hash: String,
    pub entry_points: EntryPoints,
    pub calls: u64,
    pub errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Calls refused because the worker's queue was full.
    pub rejected: u64,
    /// Calls whose answer did not come in time.
    pub timeouts: u64,
    /// Workers replaced because they stayed stuck past their deadline.
    pub workers_replaced: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// The plugins of every app.
pub struct PolicyHost {
    plugins: ArcSwap<HashMap<String, Arc<Plugin>>>,
    status: Arc<Mutex<BTreeMap<String, PluginStatus>>>,
    stores: Mutex<HashMap<String, Arc<SharedStore>>>,
    /// (app, version, error) already logged: each error is logged once per plugin version.
    /// Bounded: a plugin can make up endless error texts.
    logged: Mutex<HashSet<(String, u64, String)>>,
    /// Serialises reconciles (file watcher, start-up), never calls: no call waits on it.
    reconciling: Mutex<()>,
    registry: Arc<Registry>,
    config: Arc<ConfigStore>,
    tasks: TaskTracker,
}

/// Distinct error texts remembered for "log once"; past this the set starts afresh.
const LOGGED_ERRORS: usize = 1000;

impl PolicyHost {
    pub fn new(registry: Arc<Registry>, config: Arc<ConfigStore>, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(PolicyHost {
            plugins: ArcSwap::default(),
            status: Arc::default(),
            stores: Mutex::default(),
            logged: Mutex::default(),
            reconciling: Mutex::default(),
            registry,
            config,
            tasks,
        })
    }

    fn plugin(&self, app: &str) -> Option<Arc<Plugin>> {
        self.plugins.load().get(app).cloned()
    }

    /// Whether `app` has a loaded plugin with `on_keepalive`.
    pub fn decides_keepalive(&self, app: &str) -> bool {
        self.plugin(app).is_some_and(|p| p.entries.on_keepalive)
    }

    /// Whether the app's plugin decides on new publishes (or plays).
    pub fn decides_admission(&self, app: &str, publish: bool) -> bool {
        self.plugin(app).is_some_and(|p| {
            if publish {
                p.entries.on_publish
            } else {
                p.entries.on_play
            }
        })
    }

    /// One job on the plugin's worker, `calls` plugin calls long. A queue that is full or an
    /// answer that is late fails the job (counted), and a worker found stuck is replaced.
    async fn call<T>(
        &self,
        app: &str,
        plugin: &Arc<Plugin>,
        calls: usize,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, PolicyError> {
        let worker = plugin.worker.load_full();
        let result = worker.call(calls, job).await;
        if let Err(e) = &result {
            self.note_failure(app, plugin, &worker, e);
        }
        result
    }

    fn note_failure(&self, app: &str, plugin: &Arc<Plugin>, worker: &Arc<Worker>, e: &PolicyError) {
        {
            let mut status = self.lock_status();
            if let Some(s) = status.get_mut(app).filter(|s| s.version == plugin.version) {
                match e {
                    PolicyError::Busy(_) => s.rejected += 1,
                    PolicyError::Timeout(_) => s.timeouts += 1,
                    _ => {}
                }
            }
        }
        if matches!(
            e,
            PolicyError::Busy(_) | PolicyError::Timeout(_) | PolicyError::Gone
        ) && worker.is_stuck()
        {
            self.replace_worker(app, plugin);
        }
    }

    /// Starts a fresh worker for a plugin whose worker is stuck, off the async runtime; the
    /// stuck thread ends when its call does (its queue is gone), and no call waits for it.
    fn replace_worker(&self, app: &str, plugin: &Arc<Plugin>) {
        if plugin.replacing.swap(true, Ordering::AcqRel) || self.tasks.is_closed() {
            return;
        }
        tracing::error!(
            app,
            version = plugin.version,
            "plugin worker stuck past its deadline; starting a fresh one"
        );
        let plugin = plugin.clone();
        let app = app.to_string();
        let status = self.status.clone();
        self.tasks.spawn_blocking(move || {
            match Worker::start(&plugin.spec) {
                Ok((worker, _)) => {
                    plugin.worker.store(Arc::new(worker));
                    if let Some(s) = status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&app)
                    {
                        s.workers_replaced += 1;
                    }
                }
                Err(e) => tracing::error!(app, error = %e, "plugin worker not replaced"),
            }
            plugin.replacing.store(false, Ordering::Release);
        });
    }

    /// Keep-alive verdicts for streams of one app, in order. The records move into the
    /// plugin's state as its read-only views: nothing is copied per verdict.
    pub async fn keepalive(&self, app: &str, records: Vec<StreamRecord>) -> Vec<PluginVerdict> {
        let count = records.len();
        let Some(plugin) = self.plugin(app).filter(|p| p.entries.on_keepalive) else {
            return vec![PluginVerdict::Abstain; count];
        };
        let answers = self
            .call(app, &plugin, count, |reply| Job::KeepAlive(records, reply))
            .await
            .unwrap_or_else(|e| vec![Err(e); count]);
        self.count(app, plugin.version, &answers);
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Code::Abstain) => PluginVerdict::Abstain,
                Ok(Code::Code(403, reason)) => {
                    PluginVerdict::Stop(reason.unwrap_or_else(|| "stopped by policy".into()), None)
                }
                Ok(Code::Held(reason, hold_ms)) => PluginVerdict::Stop(
                    reason.unwrap_or_else(|| "stopped by policy".into()),
                    Some(hold_ms),
                ),
                Ok(Code::Code(c, _)) if (200..300).contains(&c) => PluginVerdict::Keep,
                Ok(Code::Code(c, _)) => {
                    PluginVerdict::Failed(format!("on_keepalive returned {c}; use 200, 403 or nil"))
                }
                Err(e) => PluginVerdict::Failed(e.to_string()),
            })
            .collect()
    }

    /// Whether any loaded plugin defines the filter `name`.
    pub fn has_filter(&self, name: &str) -> bool {
        self.plugins
            .load()
            .values()
            .any(|p| p.entries.filters.iter().any(|f| f == name))
    }

    /// Applies the named filter to `records`: a stream matches when its app's plugin defines
    /// the filter and it returns true. Errors count as no match (and are counted).
    pub async fn filter(
        &self,
        name: &str,
        args: &serde_json::Value,
        records: Vec<StreamRecord>,
    ) -> Vec<StreamRecord> {
        let mut by_app: BTreeMap<String, Vec<StreamRecord>> = BTreeMap::new();
        for record in records {
            by_app
                .entry(record.app_key.clone())
                .or_default()
                .push(record);
        }
        let mut kept = Vec::new();
        for (app, records) in by_app {
            let Some(plugin) = self
                .plugin(&app)
                .filter(|p| p.entries.filters.iter().any(|f| f == name))
            else {
                continue;
            };
            let views = records.clone();
            let count = views.len();
            let answers = self
                .call(&app, &plugin, count, |reply| {
                    Job::Filter(name.to_string(), args.clone(), views, reply)
                })
                .await
                .unwrap_or_else(|e| vec![Err(e); count]);
            self.count(&app, plugin.version, &answers);
            kept.extend(
                records
                    .into_iter()
                    .zip(answers)
                    .filter(|(_, a)| matches!(a, Ok(true)))
                    .map(|(r, _)| r),
            );
        }
        kept
    }

    /// `on_publish` / `on_play`: `None` when the app's plugin has no opinion (or none is
    /// loaded), else the code and reason, or the error.
    pub async fn admit(
        &self,
        record: &StreamRecord,
        request: AdmissionRequest,
    ) -> Option<Result<Code, PolicyError>> {
        let plugin = self.plugin(&record.app_key)?;
        let has = if record.published {
            plugin.entries.on_publish
        } else {
            plugin.entries.on_play
        };
        if !has {
            return None;
        }
        let view = record.clone();
        let answer = self
            .call(&record.app_key, &plugin, 1, |reply| {
                Job::Admit(view, request, reply)
            })
            .await
            .and_then(|answer| answer);
        self.count(
            &record.app_key,
            plugin.version,
            std::slice::from_ref(&answer),
        );
        Some(answer)
    }

    /// `on_connect(connection)`: `None` when the app's plugin has none (or none is loaded),
    /// else the code and reason, or the error.
    pub async fn connect(
        &self,
        app: &str,
        connection: serde_json::Value,
    ) -> Option<Result<Code, PolicyError>> {
        let plugin = self.plugin(app).filter(|p| p.entries.on_connect)?;
        let answer = self
            .call(app, &plugin, 1, |reply| Job::Connect(connection, reply))
            .await
            .and_then(|answer| answer);
        self.count(app, plugin.version, std::slice::from_ref(&answer));
        Some(answer)
    }

    /// Tells the app's plugin (`on_stop`) that a stream ended. Does not wait; a full queue
    /// drops the notification (counted).
    pub fn stopped(&self, event: &StatusEvent) {
        if let Some(plugin) = self.plugin(&event.app_key).filter(|p| p.entries.on_stop) {
            let view = record_of_event(event, self.registry.node_id());
            let worker = plugin.worker.load_full();
            if let Err(e) = worker.send(Job::Stopped(view, event.info.clone())) {
                self.note_failure(&event.app_key, &plugin, &worker, &e);
            }
        }
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.lock_status().values().cloned().collect()
    }

    fn count<T>(&self, app: &str, version: u64, answers: &[Result<T, PolicyError>]) {
        let errors: Vec<&PolicyError> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        {
            let mut status = self.lock_status();
            if let Some(s) = status.get_mut(app) {
                s.calls += answers.len() as u64;
                s.errors += errors.len() as u64;
                if let Some(e) = errors.first() {
                    s.last_error = Some(e.to_string());
                    s.last_error_at = Some(now_ms());
                }
            }
        }
        if errors.is_empty() {
            return;
        }
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        for e in errors {
            if logged.len() >= LOGGED_ERRORS {
                logged.clear();
            }
            if logged.insert((app.to_string(), version, e.to_string())) {
                tracing::error!(app, version, error = %e, "plugin call failed (logged once per plugin version)");
            }
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PluginStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the event bus and calls `on_stop` for every stream that ends, until `stop`.
    pub fn spawn_stop_notifier(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        let mut events = self.registry.events();
        self.tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) if event.status.is_final() && !event.edge => this.stopped(&event),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
