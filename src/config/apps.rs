//! `apps.toml`: the applications a stream can belong to, each with its REST hook URL, its
//! hook methods and their `restClientConfig`, and its Lua plugin.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One REST hook method of an app and its `restClientConfig`. The list fields take a TOML
/// array or, as the model writes them, one comma-separated string (`restExclude = "sdp,info"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MethodConfig {
    #[serde(default, deserialize_with = "string_or_list")]
    pub client_exclude: Vec<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub rest_exclude: Vec<String>,
    pub rest_on_error: Option<String>,
    pub rest_policy: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub rest_overwrite: Vec<String>,
}

impl MethodConfig {
    /// `restOnError`: `FAIL` unless the method says `LOG`.
    pub fn fails_on_error(&self) -> bool {
        self.rest_on_error.as_deref() != Some("LOG")
    }

    /// `restPolicy = OVERWRITE`: the web server's answer may change the `restOverwrite` fields.
    pub fn overwrites(&self) -> bool {
        self.rest_policy.as_deref() == Some("OVERWRITE")
    }
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::trim).map(String::from).collect(),
        Raw::Many(v) => v,
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// One application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Apps {
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
}

/// The app every server has, as in the model, and the one a client that names none uses.
pub const DEFAULT_APP: &str = "defaultApp";

impl Default for Apps {
    /// A fresh install has `defaultApp`, with no hook and no plugin.
    fn default() -> Self {
        Apps {
            apps: BTreeMap::from([(DEFAULT_APP.to_string(), AppConfig::default())]),
        }
    }
}

/// The REST hook methods Sluice sends, by their names in the system it models.
pub const HOOK_METHODS: &[&str] = &[
    "StreamKeepAliveEvent",
    "StreamKeepAliveBatchEvent",
    "publishStream",
    "playStream",
    "StreamStatusEvent",
    "connect",
    "ConnectionStatusEvent",
];
pub const REST_ON_ERROR: &[&str] = &["FAIL", "LOG"];
pub const REST_POLICY: &[&str] = &["NOTIFY", "OVERWRITE"];
/// Fields a web server's answer may change under `restPolicy = OVERWRITE`.
pub const OVERWRITABLE: &[&str] = &["custom"];

impl Apps {
    /// Parses `apps.toml`. `defaultApp` always exists, as in the model: a file that does not
    /// define it (or defines nothing) still publishes and plays with it.
    pub fn parse(file: &Path, text: &str) -> Result<Apps, ConfigError> {
        let mut apps: Apps = Self::parse_toml(file, text)?;
        apps.validate()
            .map_err(|(path, message)| ConfigError::Syntax {
                file: file.to_path_buf(),
                line: line_of_key(text, &path),
                message,
            })?;
        apps.apps.entry(DEFAULT_APP.to_string()).or_default();
        Ok(apps)
    }

    /// Checks what TOML cannot: names, URLs, plugin paths, method names and policy values.
    /// `Err` holds the path of the bad key (to find its line by) and the message.
    fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let at = |parts: &[&str]| -> Vec<String> { parts.iter().map(|p| p.to_string()).collect() };
        for (name, app) in &self.apps {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err((
                    at(&["apps", name]),
                    format!("app name '{name}': use letters, digits, '-', '_', '.'"),
                ));
            }
            if let Some(url) = &app.url {
                let parsed = url::Url::parse(url);
                let usable = parsed.as_ref().is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some_and(|h| !h.is_empty())
                });
                if !usable {
                    let why = match parsed {
                        Err(e) => format!(" ({e})"),
                        Ok(_) => String::new(),
                    };
                    return Err((
                        at(&["apps", name, "url"]),
                        format!(
                            "apps.{name}.url '{url}' must be an http:// or https:// URL with a host{why}"
                        ),
                    ));
                }
            }
            if let Some(plugin) = &app.plugin {
                let path = Path::new(plugin);
                if plugin.is_empty()
                    || path.is_absolute()
                    || path
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err((
                        at(&["apps", name, "plugin"]),
                        format!(
                            "apps.{name}.plugin '{plugin}' must be a file name under the plugin directory"
                        ),
                    ));
                }
            }
            for (method, config) in &app.methods {
                if !HOOK_METHODS.contains(&method.as_str()) {
                    return Err((
                        at(&["apps", name, "methods", method]),
                        format!(
                            "apps.{name}.methods.{method}: unknown method; one of {}",
                            HOOK_METHODS.join(", ")
                        ),
                    ));
                }
                if let Some(field) = config
                    .rest_overwrite
                    .iter()
                    .find(|f| !OVERWRITABLE.contains(&f.as_str()))
                {
                    return Err((
                        at(&["apps", name, "methods", method, "restOverwrite"]),
                        format!(
                            "apps.{name}.methods.{method}.restOverwrite '{field}': one of {}",
                            OVERWRITABLE.join(", ")
                        ),
                    ));
                }
                for (key, value, allowed) in [
                    ("restOnError", &config.rest_on_error, REST_ON_ERROR),
                    ("restPolicy", &config.rest_policy, REST_POLICY),
                ] {
                    if let Some(value) = value
                        && !allowed.contains(&value.as_str())
                    {
                        return Err((
                            at(&["apps", name, "methods", method, key]),
                            format!(
                                "apps.{name}.methods.{method}.{key} '{value}': one of {}",
                                allowed.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn parse_toml(file: &Path, text: &str) -> Result<Apps, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_at(text, span.start)).unwrap_or(0);
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

/// The line (1-based) of the key at `path`, from `toml_edit`'s spans: the deepest part of the
/// path that has a span (a value, or a table's header). 0 when none has.
fn line_of_key(text: &str, path: &[String]) -> usize {
    let Ok(document) = toml_edit::ImDocument::parse(text) else {
        return 0;
    };
    let mut item = document.as_item();
    let mut span = None;
    for key in path {
        let Some(next) = item.get(key.as_str()) else {
            break;
        };
        item = next;
        span = item.span().or(span);
    }
    span.map(|span| line_at(text, span.start)).unwrap_or(0)
}

/// The line (1-based) of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_app_always_exists() {
        let file = Path::new("apps.toml");
        for text in ["", "# nothing yet\n", "[apps.other]\n"] {
            let apps = Apps::parse(file, text).unwrap();
            assert!(apps.get("defaultApp").is_some(), "{text:?}");
        }
        let apps = Apps::parse(file, "[apps.defaultApp]\nplugin = \"a.lua\"\n").unwrap();
        assert_eq!(
            apps.get("defaultApp").unwrap().plugin.as_deref(),
            Some("a.lua"),
            "a defined defaultApp is kept as it is"
        );
    }

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
[apps.defaultApp.methods.publishStream]
restExclude = "sdp, info"
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

    #[test]
    fn values_are_checked() {
        let cases = [
            ("[apps.a]\nurl = \"ftp://x\"\n", "apps.toml:2:"),
            ("[apps.a]\nurl = \"http://\"\n", "apps.toml:2:"),
            // The line of the key, not the first line that mentions its value.
            (
                "# the old hook was ftp://x\n[apps.a]\nurl = \"ftp://x\"\n",
                "apps.toml:3:",
            ),
            (
                "[apps.b]\nplugin = \"p.lua\"\n[apps.a]\nplugin = \"../p.lua\"\n",
                "apps.toml:4:",
            ),
            ("[apps.a]\nurl = \"https://[::1/api\"\n", "apps.toml:2:"),
            ("[apps.a]\nurl = \"http://host:99999/\"\n", "apps.toml:2:"),
            ("[apps.a]\nplugin = \"../etc/passwd\"\n", "apps.toml:2:"),
            ("[apps.a.methods.keepAlive]\n", "apps.toml:1:"),
            (
                "[apps.a.methods.StreamKeepAliveEvent]\nrestOnError = \"IGNORE\"\n",
                "apps.toml:2:",
            ),
        ];
        for (text, at) in cases {
            let err = Apps::parse(Path::new("apps.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at), "{text}: {err}");
        }
    }
}
