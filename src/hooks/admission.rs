//! The admission hooks a web back end uses to let a publisher or player in: `publishStream`
//! and `playStream` (and, for a WCS signalling connection, `connect`). A non-2xx answer rejects the WHIP/WHEP request with `403` and the web
//! server's reason; its JSON answer, minus `clientExclude`, is what the client gets. A hook
//! that gives no answer rejects under `restOnError = FAIL` (`503`) and admits under `LOG`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{HookClient, exclude, overwritten_custom, stream_body};
use crate::config::Config;
use crate::registry::StreamRecord;

/// What the web server decided about a new stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// In; with a new `custom` map under `restPolicy = OVERWRITE`.
    Admit {
        custom: Option<BTreeMap<String, String>>,
    },
    /// Out: the HTTP status for the client, the reason, and the answer the client may see.
    Reject {
        status: u16,
        reason: String,
        answer: Option<Value>,
    },
}

/// The admission hook method of a publisher (`publishStream`) or a player (`playStream`).
pub fn method(publish: bool) -> &'static str {
    if publish {
        "publishStream"
    } else {
        "playStream"
    }
}

/// Asks the app's `publishStream` (publishers) or `playStream` (players) hook, if the app
/// lists that method; admits when it does not.
pub async fn admit(client: &HookClient, config: &Config, record: &StreamRecord) -> Admission {
    let method_name = method(record.published);
    let Some(method) = config
        .apps
        .get(&record.app_key)
        .and_then(|app| app.methods.get(method_name))
    else {
        return Admission::Admit { custom: None };
    };
    let body = stream_body(record, method);
    ask(client, config, &record.app_key, method_name, body).await
}

/// Asks the app's `method_name` hook about `body`, if the app lists that method; admits
/// when it does not. A `4xx` (or any non-2xx) answer refuses, with the answer's reason.
pub async fn ask(
    client: &HookClient,
    config: &Config,
    app_key: &str,
    method_name: &str,
    body: Value,
) -> Admission {
    let Some((url, method)) = super::hook_of(config, app_key, method_name) else {
        return Admission::Admit { custom: None };
    };
    let settings = &config.settings;
    let permit = match client.try_slot(app_key, settings.rest_hook_max_in_flight) {
        Ok(permit) => permit,
        Err(e) => {
            client.stats.skipped(app_key, method_name, &e);
            return failed(method.fails_on_error(), method_name, &e.to_string());
        }
    };
    let answer = client
        .call(
            app_key,
            url,
            method_name,
            &body,
            super::CallLimits::from(settings),
        )
        .await;
    drop(permit);
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => Admission::Admit {
            custom: overwritten_custom(method, &answer),
        },
        Ok(answer) => {
            let reason = answer.reason().unwrap_or_else(|| {
                format!(
                    "refused by the web server ({method_name} answered {})",
                    answer.status
                )
            });
            let shown = match answer.body {
                Value::Object(mut object) => {
                    exclude(&mut object, &method.client_exclude);
                    Some(Value::Object(object))
                }
                _ => None,
            };
            Admission::Reject {
                status: 403,
                reason,
                answer: shown,
            }
        }
        Err(e) => failed(method.fails_on_error(), method_name, &e.to_string()),
    }
}

fn failed(fail: bool, method: &str, why: &str) -> Admission {
    if fail {
        Admission::Reject {
            status: 503,
            reason: format!("{method} hook failed: {why}"),
            answer: None,
        }
    } else {
        Admission::Admit { custom: None }
    }
}
