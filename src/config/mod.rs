//! Server configuration: `server.properties` (Flashphoner-compatible key names) parsed into
//! a typed, validated [`Settings`], and `apps.toml` parsed into [`Apps`]. An absent file means
//! defaults, so a fresh clone serves with no set-up. A bad value is an error that names the
//! file, the line, the key and what is allowed.

mod apps;
pub mod edit;
mod settings;
mod store;
pub mod watch;

pub use apps::{AppConfig, Apps, DEFAULT_APP, MethodConfig};
pub use settings::{Apply, Declaration, IceServer, MediaPorts, Settings, markdown};
pub use store::{ConfigStore, FileVersion, PendingRestart, ReloadError, ReloadStatus};

use std::path::{Path, PathBuf};

/// The SHA-256 of a file's content, in hex: stable across runs and versions, so the hash an
/// operator sees in `/rest-api/config` or `/rest-api/plugins` can be compared with
/// `sha256sum` of the file.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A configuration file that could not be used. The last good configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Value {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Everything read from a configuration directory.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: Option<PathBuf>,
    pub settings: Settings,
    pub apps: Apps,
    /// Keys of the model's documented settings in `server.properties` that Sluice does not
    /// implement: ignored, and shown so.
    pub ignored_keys: Vec<String>,
}

impl Config {
    /// Defaults only: what `sluice serve` runs with when no directory is given.
    pub fn defaults() -> Self {
        Config {
            dir: None,
            settings: Settings::default(),
            apps: Apps::default(),
            ignored_keys: Vec::new(),
        }
    }

    /// Reads `dir/server.properties` and `dir/apps.toml`; an absent file means defaults.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let (mut settings, ignored_keys) = read_optional(&dir.join("server.properties"))?
            .map(|(path, text)| Settings::parse_with_ignored(&path, &text))
            .transpose()?
            .unwrap_or_default();
        if settings.plugin_dir.is_relative() {
            settings.plugin_dir = dir.join(&settings.plugin_dir);
        }
        let apps = read_optional(&dir.join("apps.toml"))?
            .map(|(path, text)| Apps::parse(&path, &text))
            .transpose()?
            .unwrap_or_default();
        Ok(Config {
            dir: Some(dir.to_path_buf()),
            settings,
            apps,
            ignored_keys,
        })
    }
}

fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((path.to_path_buf(), text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            file: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(dir.path()).unwrap();
        assert_eq!(config.settings.rest_api_port, Some(8081));
        assert!(config.apps.get("defaultApp").is_some());
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.properties"), "rest_api_port=http\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("server.properties:1: rest_api_port"), "{err}");
    }
}
