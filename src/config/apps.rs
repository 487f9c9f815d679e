//! `apps.toml`: the applications a stream can belong to, each with its REST hook URL, its
//! hook methods and their `restClientConfig`, and its Lua plugin.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// One REST hook method of an app and its `restClientConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MethodConfig {
    #[serde(default)]
    pub client_exclude: Vec<String>,
    #[serde(default)]
    pub rest_exclude: Vec<String>,
    pub rest_on_error: Option<String>,
    pub rest_policy: Option<String>,
    #[serde(default)]
    pub rest_overwrite: Vec<String>,
}

/// One application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The REST hook base URL of the app's web server.
    pub url: Option<String>,
    /// A file under the plugin directory.
    pub plugin: Option<String>,
    #[serde(default)]
    pub methods: BTreeMap<String, MethodConfig>,
}

/// Every application, by `appKey`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apps {
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
}

impl Default for Apps {
    /// A fresh install has `defaultApp`, with no hook and no plugin.
    fn default() -> Self {
        Apps {
            apps: BTreeMap::from([("defaultApp".to_string(), AppConfig::default())]),
        }
    }
}

impl Apps {
    pub fn parse(file: &Path, text: &str) -> Result<Apps, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| {
                    text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(0);
            ConfigError::Syntax {
                file: file.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })
    }

    pub fn get(&self, app_key: &str) -> Option<&AppConfig> {
        self.apps.get(app_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_with_methods() {
        let apps = Apps::parse(
            Path::new("apps.toml"),
            r#"
[apps.defaultApp]
url = "http://127.0.0.1:9000/api"
plugin = "policy.lua"
[apps.defaultApp.methods.StreamKeepAliveEvent]
restOnError = "LOG"
restExclude = ["custom"]
"#,
        )
        .unwrap();
        let app = apps.get("defaultApp").unwrap();
        assert_eq!(app.plugin.as_deref(), Some("policy.lua"));
        assert_eq!(
            app.methods["StreamKeepAliveEvent"].rest_exclude,
            vec!["custom"]
        );
    }

    #[test]
    fn a_typo_is_an_error_with_its_line() {
        let err = Apps::parse(
            Path::new("apps.toml"),
            "[apps.a]\nurl = \"x\"\nplugn = \"p.lua\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("apps.toml:3:"), "{err}");
        assert!(err.contains("plugn"), "{err}");
    }
}
