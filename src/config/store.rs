//! The configuration in force: one immutable snapshot that readers load without locks, the
//! reload that replaces it only with a config that parsed and validated in full, and the
//! record of what happened (which file versions are in force, the last error, counts, keys
//! waiting for a restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{Config, ConfigError, Settings};
use crate::clock::now_ms;

/// One configuration file as it was when its version was put in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileVersion {
    /// Whether the file exists (an absent file at start means defaults).
    pub present: bool,
    pub bytes: u64,
    /// The SHA-256 of the content (as `sha256sum` prints it).
    pub hash: String,
}

/// A key changed on disk that only a restart applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRestart {
    pub key: String,
    pub running: String,
    pub on_disk: String,
}

/// The last reload that failed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadError {
    pub time: u64,
    pub message: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    /// Increases with every configuration put in force; 1 is the one read at start.
    pub version: u64,
    pub files: BTreeMap<String, FileVersion>,
    pub last_error: Option<ReloadError>,
    pub pending_restart: Vec<PendingRestart>,
}

/// Holds the configuration in force and reloads it from its directory.
pub struct ConfigStore {
    current: ArcSwap<Config>,
    /// What was read at start: restart-only keys keep these values until restart.
    started_with: Arc<Config>,
    status: Mutex<ReloadStatus>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

const FILES: [&str; 2] = ["server.properties", "apps.toml"];

impl ConfigStore {
    /// Reads the directory (or takes defaults when there is none).
    pub fn open(dir: Option<&Path>) -> Result<Arc<Self>, ConfigError> {
        let config = match dir {
            Some(dir) => Config::load(dir)?,
            None => Config::defaults(),
        };
        let files = dir.map(file_versions).unwrap_or_default();
        let config = Arc::new(config);
        Ok(Arc::new(ConfigStore {
            current: ArcSwap::new(config.clone()),
            started_with: config,
            status: Mutex::new(ReloadStatus {
                version: 1,
                files,
                ..ReloadStatus::default()
            }),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// The configuration in force. Lock-free; cheap enough for every request.
    pub fn load(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn dir(&self) -> Option<&Path> {
        self.started_with.dir.as_deref()
    }

    pub fn status(&self) -> ReloadStatus {
        self.lock().clone()
    }

    /// Successful and failed reloads so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Acquire),
        )
    }

    /// Re-reads the directory. A config that does not parse and validate in full, a file
    /// that was there and is now missing or empty, or a missing directory leaves the config
    /// in force untouched and is recorded as the last error.
    pub fn reload(&self) -> Result<bool, ConfigError> {
        let Some(dir) = self.dir() else {
            return Ok(false);
        };
        let dir = dir.to_path_buf();
        let result = self.try_reload(&dir);
        match &result {
            Ok(true) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the last good one stays in force");
                self.lock().last_error = Some(ReloadError {
                    time: now_ms(),
                    message: e.to_string(),
                });
                // Counted after the error is recorded: whoever sees the count sees the error.
                self.failures.fetch_add(1, Ordering::Release);
            }
        }
        result
    }

    fn try_reload(&self, dir: &Path) -> Result<bool, ConfigError> {
        if !dir.is_dir() {
            return Err(ConfigError::Read {
                file: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the configuration directory is missing",
                ),
            });
        }
        let files = file_versions(dir);
        let in_force = self.lock().files.clone();
        if files == in_force {
            return Ok(false);
        }
        for (name, version) in &files {
            let was_present = in_force.get(name).is_some_and(|v| v.present);
            let file = dir.join(name);
            if was_present && !version.present {
                return Err(broken(&file, "the file is missing"));
            }
            if version.present && version.bytes == 0 {
                return Err(broken(&file, "the file is empty"));
            }
        }
        let mut config = Config::load(dir)?;
        let pending = self.keep_restart_keys(&mut config);
        let previous = self.current.load();
        let restart_keys = Settings::restart_keys();
        let changed: Vec<_> = diff(
            &previous.settings.as_properties(),
            &config.settings.as_properties(),
        )
        .into_iter()
        .filter(|k| !restart_keys.contains(k))
        .collect();
        self.current.store(Arc::new(config));
        let mut status = self.lock();
        status.version += 1;
        status.files = files;
        status.pending_restart = pending;
        tracing::info!(version = status.version, changed = ?changed, "configuration reloaded");
        Ok(true)
    }

    /// Restart-only keys keep the values the server started with; differences are reported.
    fn keep_restart_keys(&self, config: &mut Config) -> Vec<PendingRestart> {
        let running = &self.started_with.settings;
        let on_disk = config.settings.as_properties();
        let was = running.as_properties();
        let pending: Vec<_> = Settings::restart_keys()
            .into_iter()
            .filter(|k| was.get(k) != on_disk.get(k))
            .map(|k| PendingRestart {
                key: k.to_string(),
                running: was.get(k).cloned().unwrap_or_default(),
                on_disk: on_disk.get(k).cloned().unwrap_or_default(),
            })
            .collect();
        config.settings.keep_restart_values(running);
        if !pending.is_empty() {
            tracing::warn!(keys = ?pending.iter().map(|p| &p.key).collect::<Vec<_>>(), "changed keys take effect at the next restart");
        }
        pending
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn broken(file: &Path, message: &str) -> ConfigError {
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line: 0,
        message: format!("{message}; the last good version stays in force"),
    }
}

fn diff<'a>(a: &BTreeMap<&'a str, String>, b: &BTreeMap<&'a str, String>) -> Vec<&'a str> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| *k)
        .collect()
}

fn file_versions(dir: &Path) -> BTreeMap<String, FileVersion> {
    FILES
        .iter()
        .map(|name| {
            let path: PathBuf = dir.join(name);
            let version = match std::fs::read(&path) {
                Ok(bytes) => FileVersion {
                    present: true,
                    bytes: bytes.len() as u64,
                    hash: super::content_hash(&bytes),
                },
                Err(_) => FileVersion {
                    present: false,
                    bytes: 0,
                    hash: String::new(),
                },
            };
            (name.to_string(), version)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(properties: &str) -> (tempfile::TempDir, Arc<ConfigStore>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.properties"), properties).unwrap();
        let store = ConfigStore::open(Some(dir.path())).unwrap();
        (dir, store)
    }

    #[test]
    fn a_good_edit_is_put_in_force_and_a_bad_one_is_not() {
        let (dir, store) = store("streaming_sessions_keep_alive_interval=5000\n");
        let file = dir.path().join("server.properties");
        std::fs::write(&file, "streaming_sessions_keep_alive_interval=2000\n").unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(
            store
                .load()
                .settings
                .streaming_sessions_keep_alive_interval
                .as_millis(),
            2000
        );
        for broken in ["streaming_sessions_keep_alive_interval=soon\n", ""] {
            std::fs::write(&file, broken).unwrap();
            assert!(store.reload().is_err());
            assert_eq!(
                store
                    .load()
                    .settings
                    .streaming_sessions_keep_alive_interval
                    .as_millis(),
                2000
            );
        }
        std::fs::remove_file(&file).unwrap();
        assert!(
            store.reload().is_err(),
            "a file that disappears is not 'all defaults'"
        );
        assert!(
            store
                .status()
                .last_error
                .unwrap()
                .message
                .contains("missing")
        );
        assert_eq!(store.counts(), (1, 3));
        assert_eq!(store.status().version, 2);
    }

    #[test]
    fn restart_keys_keep_their_running_value_and_are_reported() {
        let (dir, store) = store("rest_api_port=9000\n");
        std::fs::write(
            dir.path().join("server.properties"),
            "rest_api_port=9100\nkeep_alive_streaming_sessions_enabled=true\n",
        )
        .unwrap();
        assert!(store.reload().unwrap());
        let config = store.load();
        assert_eq!(config.settings.rest_api_port, Some(9000));
        assert!(config.settings.keep_alive_streaming_sessions_enabled);
        let pending = store.status().pending_restart;
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].running.as_str(), pending[0].on_disk.as_str()),
            ("9000", "9100")
        );
    }

    #[test]
    fn an_unchanged_directory_is_not_a_new_version() {
        let (_dir, store) = store("node_id=a\n");
        assert!(!store.reload().unwrap());
        assert_eq!(store.status().version, 1);
    }
}
