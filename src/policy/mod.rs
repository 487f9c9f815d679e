//! The Lua host: one sandboxed plugin state per app, each on a worker thread of its own that
//! runs its calls in order (so no lock is held around a Lua call and a slow plugin never
//! blocks the async runtime); loading, hot swap and unloading as the files change; and the
//! calls the server makes — keep-alive verdicts, named terminate filters, admission, stop
//! notifications. A plugin that fails to load keeps the previous version in force.

mod budget;
mod offline;
mod sandbox;
mod shared;
mod worker;

pub use offline::{OfflineCall, test_offline};
pub use sandbox::{Code, Host, LOAD_TIMEOUT, Limits, Sandbox};
pub use shared::SharedStore;
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
use crate::registry::{MediaKind, Registry, StatusEvent, StreamRecord, now_ms};
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

/// The stream as a plugin sees it (read-only in Lua): the model's fields, `age_ms`,
/// `custom`, media kinds and, for players, the publisher's name.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StreamView {
    #[serde(rename = "mediaSessionId")]
    pub media_session_id: String,
    pub name: String,
    #[serde(rename = "appKey")]
    pub app_key: String,
    pub published: bool,
    pub status: String,
    pub info: String,
    #[serde(rename = "sessionId")]
    pub session_id: String,
    #[serde(rename = "nodeId")]
    pub node_id: String,
    #[serde(rename = "createdDate")]
    pub created_date: u64,
    pub age_ms: u64,
    #[serde(rename = "remoteAddress")]
    pub remote_address: String,
    pub custom: BTreeMap<String, String>,
    pub media: Vec<MediaKind>,
    pub has_audio: bool,
    pub has_video: bool,
    /// For a player: the name of the stream its publisher publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

impl StreamView {
    /// The record a plugin is called with, for offline tests (`sluice plugin test`).
    pub fn into_record(self) -> StreamRecord {
        StreamRecord {
            node_id: self.node_id,
            app_key: self.app_key,
            session_id: self.session_id,
            media_session_id: self.media_session_id.parse().unwrap_or_default(),
            name: self.name,
            published: self.published,
            status: crate::registry::Status::ALL
                .into_iter()
                .find(|s| s.as_str() == self.status)
                .unwrap_or(crate::registry::Status::New),
            info: self.info,
            created_date: now_ms().saturating_sub(self.age_ms),
            remote_address: self.remote_address,
            media_kinds: self.media,
            custom: self.custom,
            bearer: crate::registry::Bearer::default(),
        }
    }
}

/// The record of a stream that just ended, from its final status event.
fn record_of_event(event: &StatusEvent, node_id: &str) -> StreamRecord {
    StreamRecord {
        node_id: node_id.to_string(),
        app_key: event.app_key.clone(),
        session_id: String::new(),
        media_session_id: event.media_session_id,
        name: event.name.clone(),
        published: event.published,
        status: event.status,
        info: event.info.clone(),
        created_date: now_ms(),
        remote_address: String::new(),
        media_kinds: Vec::new(),
        custom: BTreeMap::new(),
        bearer: crate::registry::Bearer::default(),
    }
}

/// What a WHIP/WHEP request tells an admission policy.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdmissionRequest {
    /// The `Authorization: Bearer` token, if any.
    pub token: Option<String>,
    /// The query parameters (other than `app`).
    pub query: BTreeMap<String, String>,
    pub remote_address: String,
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
    pub filters: Vec<String>,
}

/// A loaded plugin: its worker (replaced when it gets stuck) and what it was loaded from.
struct Plugin {
    worker: ArcSwap<Worker>,
    spec: WorkerSpec,
    entries: EntryPoints,
    version: u64,
    hash: u64,
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

/// What reconcile decided for one app before loading anything.
enum Step {
    Keep(Arc<Plugin>),
    /// Load this, as this version, of this hash.
    Load(WorkerSpec, u64, u64),
    Missing(String),
}

/// What came of a step.
enum Outcome {
    Keep(Arc<Plugin>),
    Loaded(Plugin),
    Failed(PolicyError),
    Missing(String),
}

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

    /// Brings the loaded plugins in line with `apps.toml` and the plugin files: loads new
    /// and changed ones, unloads those no longer named or whose file is gone. Blocking (it
    /// waits for compiles): call it from a blocking context. Loads run with no lock that a
    /// call or a status read takes.
    pub fn reconcile(&self) {
        let _one_at_a_time = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config.load();
        let current = self.plugins.load_full();
        let versions: HashMap<String, u64> = self
            .lock_status()
            .iter()
            .map(|(app, s)| (app.clone(), s.version))
            .collect();
        // Plan with no lock held: which apps keep their plugin, which load, which lost it.
        let mut steps: Vec<(String, String, Step)> = Vec::new();
        for (app, app_config) in &config.apps.apps {
            let Some(file) = &app_config.plugin else {
                continue;
            };
            let path = config.settings.plugin_dir.join(file);
            let step = match std::fs::read_to_string(&path) {
                Err(e) => Step::Missing(format!("{}: {e}", path.display())),
                Ok(source) => {
                    let hash = hash_of(&source);
                    match current.get(app).filter(|p| p.hash == hash) {
                        Some(plugin) => Step::Keep(plugin.clone()),
                        None => {
                            let version = current
                                .get(app)
                                .map_or(0, |p| p.version)
                                .max(versions.get(app).copied().unwrap_or(0))
                                + 1;
                            let spec = self.spec(app, file, source, version, &config.settings);
                            Step::Load(spec, version, hash)
                        }
                    }
                }
            };
            steps.push((app.clone(), file.clone(), step));
        }
        // Load, still with no lock held.
        let outcomes: Vec<(String, String, Outcome)> = steps
            .into_iter()
            .map(|(app, file, step)| {
                let outcome = match step {
                    Step::Keep(plugin) => Outcome::Keep(plugin),
                    Step::Missing(error) => Outcome::Missing(error),
                    Step::Load(spec, version, hash) => match Worker::start(&spec) {
                        Ok((worker, entries)) => Outcome::Loaded(Plugin {
                            worker: ArcSwap::from_pointee(worker),
                            spec,
                            entries,
                            version,
                            hash,
                            replacing: AtomicBool::new(false),
                        }),
                        Err(e) => Outcome::Failed(e),
                    },
                };
                (app, file, outcome)
            })
            .collect();
        // Apply.
        let mut next: HashMap<String, Arc<Plugin>> = HashMap::new();
        let mut status = self.lock_status();
        status.retain(|app, _| config.apps.get(app).is_some_and(|a| a.plugin.is_some()));
        for (app, file, outcome) in outcomes {
            let entry = status.entry(app.clone()).or_insert_with(|| PluginStatus {
                app_key: app.clone(),
                ..PluginStatus::default()
            });
            entry.file = file.clone();
            match outcome {
                Outcome::Keep(plugin) => {
                    next.insert(app, plugin);
                }
                Outcome::Missing(error) => {
                    // A deleted plugin is unloaded: the app falls back to its REST hook.
                    if current.contains_key(&app) || entry.loaded {
                        tracing::warn!(app, error, "plugin file gone; plugin unloaded");
                    }
                    entry.loaded = false;
                    entry.entry_points = EntryPoints::default();
                    entry.last_error = Some(error);
                    entry.last_error_at = Some(now_ms());
                }
                Outcome::Loaded(plugin) => {
                    tracing::info!(app, file, version = plugin.version, "plugin loaded");
                    entry.loaded = true;
                    entry.version = plugin.version;
                    entry.loaded_at = Some(now_ms());
                    entry.hash = format!("{:016x}", plugin.hash);
                    entry.entry_points = plugin.entries.clone();
                    entry.reloads += 1;
                    entry.last_error = None;
                    next.insert(app, Arc::new(plugin));
                }
                Outcome::Failed(e) => {
                    tracing::error!(app, file, error = %e, "plugin not loaded; the previous version stays in force");
                    entry.reload_failures += 1;
                    entry.last_error = Some(e.to_string());
                    entry.last_error_at = Some(now_ms());
                    if let Some(plugin) = current.get(&app) {
                        next.insert(app, plugin.clone());
                    }
                }
            }
        }
        drop(status);
        // Calls in flight keep their Arc to the old version and finish on it; its worker
        // thread ends when the last of them is done.
        self.plugins.store(Arc::new(next));
    }

    fn spec(
        &self,
        app: &str,
        file: &str,
        source: String,
        version: u64,
        settings: &crate::config::Settings,
    ) -> WorkerSpec {
        let store = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone();
        WorkerSpec {
            app: app.to_string(),
            label: format!("{file} ({app} v{version})"),
            source,
            limits: Limits {
                memory_bytes: settings.plugin_memory_limit,
                instructions_per_call: settings.plugin_instruction_budget,
                call_timeout: settings.plugin_call_timeout,
            },
            store,
            registry: Arc::downgrade(&self.registry),
            plugin_dir: settings.plugin_dir.clone(),
        }
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
                    Ok(event) if event.status.is_final() => this.stopped(&event),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }
}

fn hash_of(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewStream;
    use std::rc::Rc;

    struct Count(usize);
    impl Host for Count {
        fn count_streams(&self, _: &str, _: Option<bool>) -> usize {
            self.0
        }
        fn read_lines(&self, _: &str) -> Result<Vec<String>, String> {
            Err("no files in tests".into())
        }
    }

    fn sandbox(source: &str) -> Result<Sandbox, PolicyError> {
        let limits = Limits {
            memory_bytes: 4 * 1024 * 1024,
            instructions_per_call: 200_000,
            call_timeout: Duration::from_secs(2),
        };
        Sandbox::load(
            "test.lua",
            source,
            limits,
            Arc::default(),
            Rc::new(Count(2)),
        )
    }

    fn view(published: bool) -> StreamRecord {
        let registry = Registry::new("n");
        registry
            .register_synthetic(NewStream::publisher("cam", "defaultApp"))
            .unwrap();
        let new = if published {
            NewStream::publisher("cam2", "defaultApp")
        } else {
            NewStream::player("cam", "defaultApp")
        };
        registry.register_synthetic(new).unwrap()
    }

    fn keepalive(source: &str) -> Result<Code, PolicyError> {
        sandbox(source)?.keepalive(view(false))
    }

    #[test]
    fn verdicts_and_fields() {
        let ka = |body: &str| {
            keepalive(&format!(
                "local M = {{}} function M.on_keepalive(s) {body} end return M"
            ))
        };
        assert_eq!(ka("return 200").unwrap(), Code::Code(200, None));
        assert_eq!(
            ka("return 403, 'too long'").unwrap(),
            Code::Code(403, Some("too long".into()))
        );
        assert_eq!(ka("return nil").unwrap(), Code::Abstain);
        assert_eq!(
            ka("if s.published == false and s.publisher == 'cam' and s.age_ms >= 0 and s.status == 'PLAYING' then return 403 end return 200").unwrap(),
            Code::Code(403, None)
        );
        assert_eq!(
            ka("return 403, 'come back later', {hold_ms = 5000}").unwrap(),
            Code::Held(Some("come back later".into()), 5000)
        );
        assert!(
            ka("return 200, nil, {hold_ms = 5000}").is_err(),
            "a hold needs a 403"
        );
        assert!(ka("return 403, 'x', {hold_ms = -1}").is_err());
        assert!(ka("return 403, 'x', {hold_ms = 'soon'}").is_err());
        assert!(ka("return 403, 'x', 5").is_err());
        assert!(matches!(ka("return 'yes'"), Err(PolicyError::WrongType(_))));
        assert!(matches!(ka("return {}"), Err(PolicyError::WrongType(_))));
        assert!(matches!(ka("error('boom')"), Err(PolicyError::Call(m)) if m.contains("boom")));
        assert!(
            matches!(ka("s.name = 'x' return 200"), Err(PolicyError::Call(m)) if m.contains("read-only"))
        );
        assert!(
            matches!(ka("s.custom.x = 'y' return 200"), Err(PolicyError::Call(m)) if m.contains("read-only"))
        );
    }

    #[test]
    fn the_sandbox_holds() {
        for escape in [
            "return io.open('/etc/passwd')",
            "return os.execute('true')",
            "return os.exit(1)",
            "return os.getenv('HOME')",
            "return require('os')",
            "return debug.getinfo(1)",
            "return dofile('/etc/passwd')",
            "return loadfile('/etc/passwd')",
            "return string.dump(function() end)",
            "return load('\\27Lua')()",
            "return package.loadlib('x', 'y')",
            "return collectgarbage('count')",
            "return #string.rep('x', 1e10)",
            "setmetatable(s, {}) return 200",
            "rawset(s, 'name', 'x') return 200",
            "getmetatable(s).__index = function() return 'evil' end return 200",
            "if s.bearer ~= nil or s.token ~= nil then return 200 end error('no token on the view')",
        ] {
            let source = format!("local M = {{}} function M.on_keepalive(s) {escape} end return M");
            let result = keepalive(&source);
            assert!(result.is_err(), "{escape}: {result:?}");
        }
    }

    #[test]
    fn loops_and_bombs_are_cut_off() {
        let looped =
            keepalive("local M = {} function M.on_keepalive(s) while true do end end return M");
        assert!(
            matches!(looped, Err(PolicyError::Call(m)) if m.contains("budget")),
            "infinite loop"
        );
        let bomb = keepalive(
            "local M = {} function M.on_keepalive(s) local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1000) .. i end end return M",
        );
        assert!(bomb.is_err(), "memory bomb: {bomb:?}");
        // The state survives: the next call works again with a fresh budget.
        let s = sandbox("local M = {} local n = 0 function M.on_keepalive(s) n = n + 1 if n == 1 then while true do end end return 200 end return M").unwrap();
        assert!(s.keepalive(view(true)).is_err());
        assert_eq!(s.keepalive(view(true)).unwrap(), Code::Code(200, None));
        assert!(
            sandbox("while true do end").is_err(),
            "a top level that loops does not load"
        );
        assert!(sandbox("return 5").is_err(), "a module must be a table");
        assert!(sandbox("local M = {").is_err(), "syntax error");
    }

    #[test]
    fn budgets_hold_on_every_coroutine_and_cannot_be_caught() {
        let body = |b: &str| format!("local M = {{}} function M.on_keepalive(s) {b} end return M");
        for escape in [
            "coroutine.wrap(function() while true do end end)() return 200",
            "local co = coroutine.create(function() while true do end end) coroutine.resume(co) return 200",
            "coroutine.wrap(function() coroutine.wrap(function() while true do end end)() end)() return 200",
            "while true do pcall(function() while true do end end) end",
            "while true do pcall(error, 'x') end",
            "while true do xpcall(function() while true do end end, function() while true do end end) end",
            "local ok = pcall(coroutine.wrap(function() while true do end end)) return 200",
            "setmetatable({}, {__gc = function() while true do end end}) return 200",
            "local ok = xpcall(error, function() while true do end end) return 200",
            "local co = coroutine.create(function() local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1000) .. i end end) coroutine.resume(co) return 200",
        ] {
            let started = std::time::Instant::now();
            let result = keepalive(&body(escape));
            assert!(
                matches!(&result, Err(PolicyError::Call(m)) if m.contains("budget") || m.contains("memory") || m.contains("__gc")),
                "{escape}: {result:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{escape} took {:?}",
                started.elapsed()
            );
        }
        // A plugin that catches its own errors still works when it stays within budget.
        assert_eq!(
            keepalive(&body(
                "local ok = pcall(error, 'x') if not ok then return 403, 'caught' end"
            ))
            .unwrap(),
            Code::Code(403, Some("caught".into()))
        );
        let co = body(
            "local co = coroutine.wrap(function() coroutine.yield(1) return 2 end) local a, b = co(), co() return 200 + a + b - 3",
        );
        assert_eq!(keepalive(&co).unwrap(), Code::Code(200, None));
    }

    #[test]
    fn the_wall_clock_deadline_cuts_a_call_off() {
        let limits = Limits {
            memory_bytes: 4 * 1024 * 1024,
            instructions_per_call: u64::MAX / 2,
            call_timeout: Duration::from_millis(50),
        };
        let s = Sandbox::load(
            "slow.lua",
            "local M = {} function M.on_keepalive(s) coroutine.wrap(function() while true do end end)() end return M",
            limits,
            Arc::default(),
            Rc::new(Count(0)),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let result = s.keepalive(view(true));
        assert!(
            matches!(&result, Err(PolicyError::Call(m)) if m.contains("deadline of 50 ms")),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn host_api() {
        let s = sandbox(
            r#"
            local M = {}
            function M.on_keepalive(s)
              local n = shared.incr("calls", 1, 60000)
              shared.set("last", {name = s.name})
              local back = json.decode(json.encode({a = 1}))
              log.info("verdict " .. n)
              if n >= 2 and shared.get("last").name == "cam" and back.a == 1 and now_ms() > 0 and streams.count("cam", false) == 2 then
                return 403, "second call"
              end
              return 200
            end
            M.filters = {}
            function M.filters.named(s, args) return s.name == args.name end
            return M
            "#,
        )
        .unwrap();
        assert_eq!(s.keepalive(view(false)).unwrap(), Code::Code(200, None));
        assert_eq!(
            s.keepalive(view(false)).unwrap(),
            Code::Code(403, Some("second call".into()))
        );
        assert_eq!(s.filter_names(), vec!["named"]);
        assert!(
            s.filter("named", view(false), &serde_json::json!({"name": "cam"}))
                .unwrap()
        );
        assert!(
            !s.filter("named", view(false), &serde_json::json!({"name": "x"}))
                .unwrap()
        );
    }
}
