//! `sluice app …`: edits `apps.toml` in place the way the model's CLI manages applications,
//! keeping the operator's comments and layout (toml_edit). Every edit is validated as a whole
//! before it is written, and written atomically (temporary file, then rename), so the running
//! server's watcher sees one complete change.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::apps::{HOOK_METHODS, REST_ON_ERROR, REST_POLICY};
use super::{Apps, ConfigError};

/// One edit of `apps.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEdit {
    Add {
        name: String,
        url: Option<String>,
    },
    Remove {
        name: String,
    },
    Update {
        name: String,
        url: String,
    },
    SetPlugin {
        name: String,
        plugin: Option<String>,
    },
    AddRestMethod {
        name: String,
        method: String,
    },
    RemoveRestMethod {
        name: String,
        method: String,
    },
    SetRestConfig {
        name: String,
        method: String,
        key: String,
        value: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not TOML: {message}")]
    Parse { file: PathBuf, message: String },
}

const LIST_KEYS: &[&str] = &["clientExclude", "restExclude", "restOverwrite"];

/// Applies `edit` to the text of an `apps.toml` and returns the new text, validated.
pub fn apply(file: &Path, text: &str, edit: &AppEdit) -> Result<String, EditError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Parse {
                file: file.to_path_buf(),
                message: e.message().to_string(),
            })?;
    if !doc.contains_key("apps") {
        let mut apps = Table::new();
        apps.set_implicit(true);
        doc.insert("apps", Item::Table(apps));
    }
    let apps = doc["apps"]
        .as_table_mut()
        .ok_or_else(|| EditError::Refused("'apps' is not a table".into()))?;
    let refuse = |m: String| Err(EditError::Refused(m));
    match edit {
        AppEdit::Add { name, url } => {
            if apps.contains_key(name) {
                return refuse(format!("app '{name}' exists already"));
            }
            let mut table = Table::new();
            if let Some(url) = url {
                table.insert("url", value(url.as_str()));
            }
            apps.insert(name, Item::Table(table));
        }
        AppEdit::Remove { name } => {
            if apps.remove(name).is_none() {
                return refuse(format!("no app '{name}'"));
            }
        }
        AppEdit::Update { name, url } => set(app(apps, name)?, "url", url.as_str().into()),
        AppEdit::SetPlugin { name, plugin } => {
            let table = app(apps, name)?;
            match plugin {
                Some(plugin) => set(table, "plugin", plugin.as_str().into()),
                None => {
                    table.remove("plugin");
                }
            }
        }
        AppEdit::AddRestMethod { name, method } => {
            if !HOOK_METHODS.contains(&method.as_str()) {
                return refuse(format!(
                    "unknown method '{method}'; one of {}",
                    HOOK_METHODS.join(", ")
                ));
            }
            let methods = methods(app(apps, name)?)?;
            if methods.contains_key(method) {
                return refuse(format!("app '{name}' has method '{method}' already"));
            }
            methods.insert(method, Item::Table(Table::new()));
        }
        AppEdit::RemoveRestMethod { name, method } => {
            if methods(app(apps, name)?)?.remove(method).is_none() {
                return refuse(format!("app '{name}' has no method '{method}'"));
            }
        }
        AppEdit::SetRestConfig {
            name,
            method,
            key,
            value: raw,
        } => {
            let methods = methods(app(apps, name)?)?;
            let Some(table) = methods.get_mut(method).and_then(Item::as_table_mut) else {
                return refuse(format!(
                    "app '{name}' has no method '{method}' (add-rest-method first)"
                ));
            };
            if LIST_KEYS.contains(&key.as_str()) {
                let list: Array = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                set(table, key, list.into());
            } else if key == "restOnError" || key == "restPolicy" {
                let allowed = if key == "restOnError" {
                    REST_ON_ERROR
                } else {
                    REST_POLICY
                };
                if !allowed.contains(&raw.as_str()) {
                    return refuse(format!("{key} '{raw}': one of {}", allowed.join(", ")));
                }
                set(table, key, raw.as_str().into());
            } else {
                return refuse(format!(
                    "unknown restClientConfig key '{key}'; one of {}, restOnError, restPolicy",
                    LIST_KEYS.join(", ")
                ));
            }
        }
    }
    let text = doc.to_string();
    Apps::parse(file, &text)?;
    Ok(text)
}

/// Sets a key, keeping the comment and spacing around the value it replaces.
fn set(table: &mut Table, key: &str, mut new: toml_edit::Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *new.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(new));
}

fn app<'a>(apps: &'a mut Table, name: &str) -> Result<&'a mut Table, EditError> {
    apps.get_mut(name)
        .and_then(Item::as_table_mut)
        .ok_or_else(|| EditError::Refused(format!("no app '{name}'")))
}

fn methods(app: &mut Table) -> Result<&mut Table, EditError> {
    if !app.contains_key("methods") {
        let mut methods = Table::new();
        methods.set_implicit(true);
        app.insert("methods", Item::Table(methods));
    }
    app["methods"]
        .as_table_mut()
        .ok_or_else(|| EditError::Refused("'methods' is not a table".into()))
}

/// Edits `dir/apps.toml` (created with `defaultApp` when absent), atomically.
pub fn apply_to_dir(dir: &Path, edit: &AppEdit) -> Result<Apps, EditError> {
    let file = dir.join("apps.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "[apps.defaultApp]\n".to_string(),
        Err(source) => return Err(EditError::Io { file, source }),
    };
    let new_text = apply(&file, &text, edit)?;
    let io = |source| EditError::Io {
        file: file.clone(),
        source,
    };
    // Written beside the file, then renamed over it: the watcher sees one complete version.
    let mut temporary = tempfile::Builder::new()
        .prefix(".apps.toml.")
        .suffix(".sluice-edit")
        .tempfile_in(dir)
        .map_err(io)?;
    // A temporary file is private (0600); the edited file keeps the mode it had.
    let mode = std::fs::metadata(&file)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
    temporary.as_file().set_permissions(mode).map_err(io)?;
    std::io::Write::write_all(&mut temporary, new_text.as_bytes()).map_err(io)?;
    temporary.persist(&file).map_err(|e| io(e.error))?;
    Ok(Apps::parse(&file, &new_text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# our apps\n[apps.defaultApp]\nurl = \"http://old/api\" # the PHP box\n";

    fn edit(text: &str, edit: AppEdit) -> Result<String, EditError> {
        apply(Path::new("apps.toml"), text, &edit)
    }

    #[test]
    fn edits_keep_comments_and_layout() {
        let text = edit(
            TEXT,
            AppEdit::Update {
                name: "defaultApp".into(),
                url: "http://new/api".into(),
            },
        )
        .unwrap();
        assert!(
            text.starts_with("# our apps\n[apps.defaultApp]\n"),
            "{text}"
        );
        assert!(text.contains("http://new/api"));
        let text = edit(
            &text,
            AppEdit::AddRestMethod {
                name: "defaultApp".into(),
                method: "StreamKeepAliveEvent".into(),
            },
        )
        .unwrap();
        let text = edit(
            &text,
            AppEdit::SetRestConfig {
                name: "defaultApp".into(),
                method: "StreamKeepAliveEvent".into(),
                key: "restExclude".into(),
                value: "custom, info".into(),
            },
        )
        .unwrap();
        let apps = Apps::parse(Path::new("apps.toml"), &text).unwrap();
        assert_eq!(
            apps.get("defaultApp").unwrap().methods["StreamKeepAliveEvent"].rest_exclude,
            vec!["custom", "info"]
        );
        assert!(text.contains("# our apps"));
    }

    #[test]
    fn bad_edits_are_refused_and_change_nothing() {
        let refusals = [
            AppEdit::Add {
                name: "defaultApp".into(),
                url: None,
            },
            AppEdit::Remove {
                name: "nope".into(),
            },
            AppEdit::Update {
                name: "defaultApp".into(),
                url: "ftp://x".into(),
            },
            AppEdit::AddRestMethod {
                name: "defaultApp".into(),
                method: "keepalive".into(),
            },
            AppEdit::SetRestConfig {
                name: "defaultApp".into(),
                method: "StreamKeepAliveEvent".into(),
                key: "restOnError".into(),
                value: "LOG".into(),
            },
        ];
        for refused in refusals {
            assert!(edit(TEXT, refused.clone()).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn add_and_remove_apps_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        apply_to_dir(
            dir.path(),
            &AppEdit::Add {
                name: "liveApp".into(),
                url: Some("http://127.0.0.1:9/api".into()),
            },
        )
        .unwrap();
        let apps = apply_to_dir(
            dir.path(),
            &AppEdit::Remove {
                name: "defaultApp".into(),
            },
        )
        .unwrap();
        // defaultApp always exists, as in the model: removing it leaves the built-in one,
        // with no hook and no plugin.
        assert_eq!(
            apps.apps.keys().collect::<Vec<_>>(),
            vec!["defaultApp", "liveApp"]
        );
        assert_eq!(apps.apps["defaultApp"], crate::config::AppConfig::default());
    }
}
