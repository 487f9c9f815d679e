//! The Lua host: one sandboxed plugin state per app, each on a worker thread of its own that
//! runs its calls in order (so no lock is held around a Lua call and a slow plugin never
//! blocks the async runtime); loading, hot swap and unloading as the files change; and the
//! calls the server makes — keep-alive verdicts, named terminate filters, admission, stop
//! notifications. A plugin that fails to load keeps the previous version in force.

mod sandbox;
mod shared;

pub use sandbox::{Code, Host, Limits, Sandbox};
pub use shared::SharedStore;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::ConfigStore;
use crate::registry::{MediaKind, Registry, StatusEvent, StreamRecord, now_ms};

/// How long loading a plugin may take (compiling and running its top level).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

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

enum Job {
    KeepAlive(
        Vec<StreamRecord>,
        oneshot::Sender<Vec<Result<Code, PolicyError>>>,
    ),
    Filter(
        String,
        serde_json::Value,
        Vec<StreamRecord>,
        oneshot::Sender<Vec<Result<bool, PolicyError>>>,
    ),
    Admit(
        StreamRecord,
        AdmissionRequest,
        oneshot::Sender<Result<Code, PolicyError>>,
    ),
    Stopped(StreamRecord, String),
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

struct Plugin {
    jobs: std::sync::mpsc::Sender<Job>,
    entries: EntryPoints,
    version: u64,
    hash: u64,
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
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

struct RegistryHost(Weak<Registry>, std::path::PathBuf);

impl Host for RegistryHost {
    fn read_lines(&self, file: &str) -> Result<Vec<String>, String> {
        sandbox::read_plugin_file(&self.1, file)
    }

    fn count_streams(&self, name: &str, published: Option<bool>) -> usize {
        self.0.upgrade().map_or(0, |r| {
            r.find_by_name(name)
                .iter()
                .filter(|s| published.is_none_or(|p| p == s.published))
                .count()
        })
    }
}

/// The plugins of every app.
pub struct PolicyHost {
    plugins: ArcSwap<HashMap<String, Arc<Plugin>>>,
    status: Mutex<BTreeMap<String, PluginStatus>>,
    stores: Mutex<HashMap<String, Arc<SharedStore>>>,
    /// (app, version, error) already logged: each error is logged once per plugin version.
    logged: Mutex<HashSet<(String, u64, String)>>,
    registry: Arc<Registry>,
    config: Arc<ConfigStore>,
}

impl PolicyHost {
    pub fn new(registry: Arc<Registry>, config: Arc<ConfigStore>) -> Arc<Self> {
        Arc::new(PolicyHost {
            plugins: ArcSwap::default(),
            status: Mutex::default(),
            stores: Mutex::default(),
            logged: Mutex::default(),
            registry,
            config,
        })
    }

    /// Brings the loaded plugins in line with `apps.toml` and the plugin files: loads new
    /// and changed ones, unloads those no longer named or whose file is gone. Blocking (it
    /// waits for compiles): call it from a blocking context.
    pub fn reconcile(&self) {
        let config = self.config.load();
        let current = self.plugins.load_full();
        let mut next: HashMap<String, Arc<Plugin>> = HashMap::new();
        let mut status = self.lock_status();
        status.retain(|app, _| config.apps.get(app).is_some_and(|a| a.plugin.is_some()));
        for (app, app_config) in &config.apps.apps {
            let Some(file) = &app_config.plugin else {
                continue;
            };
            let entry = status.entry(app.clone()).or_insert_with(|| PluginStatus {
                app_key: app.clone(),
                ..PluginStatus::default()
            });
            entry.file = file.clone();
            let path = config.settings.plugin_dir.join(file);
            let source = match std::fs::read_to_string(&path) {
                Ok(source) => source,
                Err(e) => {
                    // A deleted plugin is unloaded: the app falls back to its REST hook.
                    if current.contains_key(app) || entry.loaded {
                        tracing::warn!(app, file = %path.display(), "plugin file gone; plugin unloaded");
                    }
                    entry.loaded = false;
                    entry.entry_points = EntryPoints::default();
                    entry.last_error = Some(format!("{}: {e}", path.display()));
                    entry.last_error_at = Some(now_ms());
                    continue;
                }
            };
            let hash = hash_of(&source);
            if let Some(plugin) = current.get(app).filter(|p| p.hash == hash) {
                next.insert(app.clone(), plugin.clone());
                continue;
            }
            let version = current
                .get(app)
                .map_or(entry.version, |p| p.version.max(entry.version))
                + 1;
            match self.start_worker(app, file, &source, version) {
                Ok((jobs, entries)) => {
                    tracing::info!(app, file, version, "plugin loaded");
                    entry.loaded = true;
                    entry.version = version;
                    entry.loaded_at = Some(now_ms());
                    entry.hash = format!("{hash:016x}");
                    entry.entry_points = entries.clone();
                    entry.reloads += 1;
                    entry.last_error = None;
                    next.insert(
                        app.clone(),
                        Arc::new(Plugin {
                            jobs,
                            entries,
                            version,
                            hash,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(app, file, error = %e, "plugin not loaded; the previous version stays in force");
                    entry.reload_failures += 1;
                    entry.last_error = Some(e.to_string());
                    entry.last_error_at = Some(now_ms());
                    if let Some(plugin) = current.get(app) {
                        next.insert(app.clone(), plugin.clone());
                    }
                }
            }
        }
        drop(status);
        // Calls in flight keep their Arc to the old version and finish on it.
        self.plugins.store(Arc::new(next));
    }

    fn start_worker(
        &self,
        app: &str,
        file: &str,
        source: &str,
        version: u64,
    ) -> Result<(std::sync::mpsc::Sender<Job>, EntryPoints), PolicyError> {
        let settings = &self.config.load().settings;
        let limits = Limits {
            memory_bytes: settings.plugin_memory_limit,
            instructions_per_call: settings.plugin_instruction_budget,
        };
        let store = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone();
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let label = format!("{file} ({app} v{version})");
        let source = source.to_string();
        let registry = Arc::downgrade(&self.registry);
        let plugin_dir = settings.plugin_dir.clone();
        std::thread::Builder::new()
            .name(format!("lua-{app}"))
            .spawn(move || {
                let host: Rc<dyn Host> = Rc::new(RegistryHost(registry, plugin_dir));
                let sandbox = match Sandbox::load(&label, &source, limits, store, host) {
                    Ok(sandbox) => sandbox,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let entries = EntryPoints {
                    on_keepalive: sandbox.has("on_keepalive"),
                    on_publish: sandbox.has("on_publish"),
                    on_play: sandbox.has("on_play"),
                    on_stop: sandbox.has("on_stop"),
                    filters: sandbox.filter_names(),
                };
                if ready_tx.send(Ok(entries)).is_err() {
                    return;
                }
                // Runs until every sender (the host's, and calls in flight) is gone.
                while let Ok(job) = inbox.recv() {
                    run_job(&sandbox, job);
                }
            })
            .map_err(|e| PolicyError::Load(format!("cannot start a plugin thread: {e}")))?;
        match ready.recv_timeout(LOAD_TIMEOUT) {
            Ok(Ok(entries)) => Ok((jobs, entries)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PolicyError::Load(format!(
                "loading took over {LOAD_TIMEOUT:?}"
            ))),
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

    /// Keep-alive verdicts for streams of one app, in order. The records move into the
    /// plugin's state as its read-only views: nothing is copied per verdict.
    pub async fn keepalive(&self, app: &str, records: Vec<StreamRecord>) -> Vec<PluginVerdict> {
        let count = records.len();
        let Some(plugin) = self.plugin(app).filter(|p| p.entries.on_keepalive) else {
            return vec![PluginVerdict::Abstain; count];
        };
        let (tx, rx) = oneshot::channel();
        let answers = match plugin.jobs.send(Job::KeepAlive(records, tx)) {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| vec![Err(PolicyError::Gone); count]),
            Err(_) => vec![Err(PolicyError::Gone); count],
        };
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
            let (tx, rx) = oneshot::channel();
            if plugin
                .jobs
                .send(Job::Filter(name.to_string(), args.clone(), views, tx))
                .is_err()
            {
                continue;
            }
            let answers = rx.await.unwrap_or_default();
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
        let (tx, rx) = oneshot::channel();
        plugin
            .jobs
            .send(Job::Admit(record.clone(), request, tx))
            .ok()?;
        let answer = rx.await.unwrap_or(Err(PolicyError::Gone));
        self.count(
            &record.app_key,
            plugin.version,
            std::slice::from_ref(&answer),
        );
        Some(answer)
    }

    /// Tells the app's plugin (`on_stop`) that a stream ended. Does not wait.
    pub fn stopped(&self, event: &StatusEvent) {
        if let Some(plugin) = self.plugin(&event.app_key).filter(|p| p.entries.on_stop) {
            let view = record_of_event(event, self.registry.node_id());
            let _ = plugin.jobs.send(Job::Stopped(view, event.info.clone()));
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
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        for e in errors {
            if logged.insert((app.to_string(), version, e.to_string())) {
                tracing::error!(app, version, error = %e, "plugin call failed (logged once per plugin version)");
            }
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PluginStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the event bus and calls `on_stop` for every stream that ends, until `stop`.
    pub fn spawn_stop_notifier(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut events = self.registry.events();
        tokio::spawn(async move {
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
        })
    }
}

fn run_job(sandbox: &Sandbox, job: Job) {
    match job {
        Job::KeepAlive(views, reply) => {
            let _ = reply.send(sandbox.keepalive_many(views));
        }
        Job::Filter(name, args, views, reply) => {
            let _ = reply.send(sandbox.filter_many(&name, views, &args));
        }
        Job::Admit(view, request, reply) => {
            let _ = reply.send(sandbox.admit(view, &request));
        }
        Job::Stopped(view, reason) => {
            if let Err(e) = sandbox.stopped(view, &reason) {
                tracing::warn!(plugin = sandbox.label(), error = %e, "on_stop failed");
            }
        }
    }
}

fn hash_of(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Runs one entry point of a plugin file offline (`sluice plugin test`).
pub fn test_offline(path: &Path, call: OfflineCall) -> Result<serde_json::Value, PolicyError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::Load(format!("{}: {e}", path.display())))?;
    struct Offline(usize, std::path::PathBuf);
    impl Host for Offline {
        fn count_streams(&self, _: &str, _: Option<bool>) -> usize {
            self.0
        }
        fn read_lines(&self, file: &str) -> Result<Vec<String>, String> {
            sandbox::read_plugin_file(&self.1, file)
        }
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let label = path.display().to_string();
    let players = match &call {
        OfflineCall::Admit { players, .. } => *players,
        _ => 0,
    };
    let sandbox = Sandbox::load(
        &label,
        &source,
        Limits::default(),
        Arc::default(),
        Rc::new(Offline(players, dir)),
    )?;
    let code = |c: Code| match c {
        Code::Abstain => serde_json::json!({"code": null}),
        Code::Code(code, reason) => serde_json::json!({"code": code, "reason": reason}),
        Code::Held(reason, hold_ms) => {
            serde_json::json!({"code": 403, "reason": reason, "holdMs": hold_ms})
        }
    };
    Ok(match call {
        OfflineCall::KeepAlive(view) => code(sandbox.keepalive(view.into_record())?),
        OfflineCall::Admit { view, request, .. } => {
            code(sandbox.admit(view.into_record(), &request)?)
        }
        OfflineCall::Filter { name, args, view } => {
            serde_json::json!({"match": sandbox.filter(&name, view.into_record(), &args)?})
        }
        OfflineCall::Stop { view, reason } => {
            sandbox.stopped(view.into_record(), &reason)?;
            serde_json::json!({"ok": true})
        }
    })
}

/// One offline call of `sluice plugin test`.
pub enum OfflineCall {
    KeepAlive(StreamView),
    Admit {
        view: StreamView,
        request: AdmissionRequest,
        players: usize,
    },
    Filter {
        name: String,
        args: serde_json::Value,
        view: StreamView,
    },
    Stop {
        view: StreamView,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewStream;

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
