//! Hot swap: bringing the loaded plugins in line with `apps.toml` and the plugin files.
//! Plans with no lock held, loads (compiles, runs the top level within its budget) with no
//! lock held, then applies the outcome under the status lock for a moment. A plugin that
//! fails to load keeps the previous version in force.

use super::*;

/// What reconcile decided for one app before loading anything.
enum Step {
    Keep(Arc<Plugin>),
    /// Load this, as this version, of this hash.
    Load(WorkerSpec, u64, String),
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
                    entry.hash = plugin.hash.clone();
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
}

fn hash_of(text: &str) -> String {
    crate::config::content_hash(text.as_bytes())
}
