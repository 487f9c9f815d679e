//! Filters of find and terminate requests: the conditions on a stream record, ANDed, and
//! the parsing of a request body into them with an error that names the field to fix.
//! Pure functions over records, so they can be fuzzed and benchmarked without a server.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Status, StreamRecord};

/// A named filter provided by a Lua plugin, with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginFilter {
    pub name: String,
    pub args: Value,
}

/// Conditions on a stream; every one that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_session_ids: Option<BTreeSet<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginFilter>,
}

impl StreamFilter {
    /// True when no condition is set: such a filter matches every stream.
    pub fn is_empty(&self) -> bool {
        *self == StreamFilter::default()
    }

    /// Whether `record` meets the built-in conditions. The plugin filter, if any, is
    /// evaluated by the caller that owns the plugins.
    pub fn matches(&self, record: &StreamRecord) -> bool {
        self.media_session_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&record.media_session_id))
            && self.name.as_ref().is_none_or(|n| *n == record.name)
            && self.published.is_none_or(|p| p == record.published)
            && self.status.is_none_or(|s| s == record.status)
            && self.app_key.as_ref().is_none_or(|a| *a == record.app_key)
    }
}

/// A request body that cannot be used: what is wrong and which field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
    pub field: Option<String>,
}

impl FilterError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        FilterError {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        FilterError {
            message: message.into(),
            field: None,
        }
    }
}

/// Which request a body is for: terminate takes more fields than find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Find,
    Terminate,
}

/// A parsed find or terminate request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRequest {
    pub filter: StreamFilter,
    /// Terminate: becomes the `info` the stopped clients see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Answer what would be affected, change nothing.
    pub dry_run: bool,
    /// Terminate: the body asks for every stream on purpose.
    pub all: bool,
    /// Terminate: refuse new streams the filter matches for this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
    /// Terminate: the hold ends early when the app's admission policy admits a request.
    pub hold_until_admitted: bool,
}

const MAX_REASON_LEN: usize = 512;

const FIND_FIELDS: &[&str] = &[
    "mediaSessionId",
    "mediaSessionIds",
    "name",
    "published",
    "status",
    "appKey",
    "filter",
    "args",
    "dryRun",
];
const TERMINATE_ONLY_FIELDS: &[&str] = &["reason", "all", "holdMs", "holdUntilAdmitted"];

impl StreamRequest {
    /// Parses a JSON body. Every field is checked: an unknown one (a typo like `nmae`) is an
    /// error, never a silently wider filter.
    pub fn parse(body: &Value, kind: RequestKind) -> Result<StreamRequest, FilterError> {
        let Some(object) = body.as_object() else {
            return Err(FilterError::body(
                "the body must be a JSON object of filters",
            ));
        };
        for key in object.keys() {
            let known = FIND_FIELDS.contains(&key.as_str())
                || (kind == RequestKind::Terminate
                    && TERMINATE_ONLY_FIELDS.contains(&key.as_str()));
            if !known {
                let mut allowed: Vec<&str> = FIND_FIELDS.to_vec();
                if kind == RequestKind::Terminate {
                    allowed.extend(TERMINATE_ONLY_FIELDS);
                }
                return Err(FilterError::field(
                    key,
                    format!("unknown field '{key}'; allowed: {}", allowed.join(", ")),
                ));
            }
        }
        let mut request = StreamRequest::default();
        let filter = &mut request.filter;
        if let Some(value) = object.get("mediaSessionId") {
            filter.media_session_ids = Some(BTreeSet::from([uuid_field("mediaSessionId", value)?]));
        }
        if let Some(value) = object.get("mediaSessionIds") {
            let Some(items) = value.as_array() else {
                return Err(FilterError::field(
                    "mediaSessionIds",
                    "must be an array of mediaSessionId strings",
                ));
            };
            let ids = items
                .iter()
                .map(|v| uuid_field("mediaSessionIds", v))
                .collect::<Result<BTreeSet<_>, _>>()?;
            // Both given: a stream must be in both (AND), like every other pair of filters.
            filter.media_session_ids = Some(match filter.media_session_ids.take() {
                Some(one) => one.intersection(&ids).copied().collect(),
                None => ids,
            });
        }
        filter.name = string_field(object, "name")?;
        filter.app_key = string_field(object, "appKey")?;
        if let Some(value) = object.get("published") {
            filter.published = Some(
                value
                    .as_bool()
                    .ok_or_else(|| FilterError::field("published", "must be true or false"))?,
            );
        }
        if let Some(value) = string_field(object, "status")? {
            let status = Status::ALL
                .into_iter()
                .find(|s| s.as_str() == value)
                .ok_or_else(|| {
                    let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
                    FilterError::field(
                        "status",
                        format!("'{value}' is not a status; one of {}", names.join(", ")),
                    )
                })?;
            filter.status = Some(status);
        }
        match (string_field(object, "filter")?, object.get("args")) {
            (Some(name), args) => {
                let args = args.cloned().unwrap_or(Value::Object(Map::new()));
                if !args.is_object() {
                    return Err(FilterError::field("args", "must be a JSON object"));
                }
                filter.plugin = Some(PluginFilter { name, args });
            }
            (None, Some(_)) => {
                return Err(FilterError::field("args", "'args' needs a 'filter' name"));
            }
            (None, None) => {}
        }
        request.dry_run = bool_field(object, "dryRun")?;
        request.all = bool_field(object, "all")?;
        if let Some(reason) = string_field(object, "reason")? {
            if reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
                return Err(FilterError::field(
                    "reason",
                    format!("at most {MAX_REASON_LEN} bytes of printable text"),
                ));
            }
            request.reason = Some(reason);
        }
        if let Some(value) = object.get("holdMs") {
            let max = super::MAX_HOLD_MS;
            request.hold_ms = Some(
                value
                    .as_u64()
                    .filter(|ms| (1..=max).contains(ms))
                    .ok_or_else(|| {
                        FilterError::field(
                            "holdMs",
                            format!("must be a whole number of milliseconds from 1 to {max}"),
                        )
                    })?,
            );
        }
        request.hold_until_admitted = bool_field(object, "holdUntilAdmitted")?;
        if request.hold_until_admitted && request.hold_ms.is_none() {
            return Err(FilterError::field(
                "holdUntilAdmitted",
                "needs holdMs: the longest the hold may last",
            ));
        }
        if kind == RequestKind::Terminate {
            if request.filter.is_empty() && !request.all {
                return Err(FilterError::body(
                    "no filter: this would stop every stream; add a filter, or \"all\": true to mean it",
                ));
            }
            if request.all && !request.filter.is_empty() {
                return Err(FilterError::field(
                    "all",
                    "\"all\": true cannot be combined with filters",
                ));
            }
        }
        Ok(request)
    }
}

fn uuid_field(field: &str, value: &Value) -> Result<Uuid, FilterError> {
    value
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            FilterError::field(
                field,
                format!("{value} is not a mediaSessionId (a UUID string)"),
            )
        })
}

fn string_field(object: &Map<String, Value>, field: &str) -> Result<Option<String>, FilterError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(FilterError::field(
            field,
            format!("must be a string, not {other}"),
        )),
    }
}

fn bool_field(object: &Map<String, Value>, field: &str) -> Result<bool, FilterError> {
    match object.get(field) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(FilterError::field(
            field,
            format!("must be true or false, not {other}"),
        )),
    }
}

/// The ids a filter names, if it names any: lets the registry look them up instead of scanning.
pub(super) fn named_ids(filter: &StreamFilter) -> Option<&BTreeSet<Uuid>> {
    filter.media_session_ids.as_ref()
}

/// Deduplicates while keeping order; used when merging index lookups.
pub(super) fn dedup(ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value, kind: RequestKind) -> Result<StreamRequest, FilterError> {
        StreamRequest::parse(&body, kind)
    }

    #[test]
    fn the_model_examples_parse() {
        let r = parse(json!({"published": false}), RequestKind::Terminate).unwrap();
        assert_eq!(r.filter.published, Some(false));
        let r = parse(
            json!({"name": "s", "status": "PUBLISHING"}),
            RequestKind::Terminate,
        )
        .unwrap();
        assert_eq!(r.filter.status, Some(Status::Publishing));
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let r = parse(json!({"mediaSessionIds": [a, b]}), RequestKind::Terminate).unwrap();
        assert_eq!(r.filter.media_session_ids.unwrap().len(), 2);
        let r = parse(
            json!({"mediaSessionId": a, "mediaSessionIds": [a, b]}),
            RequestKind::Find,
        )
        .unwrap();
        assert_eq!(r.filter.media_session_ids.unwrap(), BTreeSet::from([a]));
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (json!({"nmae": "s"}), Some("nmae")),
            (json!({"published": "yes"}), Some("published")),
            (json!({"status": "LIVE"}), Some("status")),
            (json!({"mediaSessionId": "abc"}), Some("mediaSessionId")),
            (json!({"mediaSessionIds": "abc"}), Some("mediaSessionIds")),
            (json!({"args": {}}), Some("args")),
            (json!({"filter": "f", "args": 3}), Some("args")),
            (json!({"name": 5}), Some("name")),
            (json!({"name": "s", "reason": "a\nb"}), Some("reason")),
            (json!([1, 2]), None),
            (json!({}), None),
            (json!({"reason": "only a reason"}), None),
            (json!({"all": true, "name": "s"}), Some("all")),
            (json!({"name": "s", "holdMs": 0}), Some("holdMs")),
            (json!({"name": "s", "holdMs": -5}), Some("holdMs")),
            (json!({"name": "s", "holdMs": 1.5}), Some("holdMs")),
            (json!({"name": "s", "holdMs": "10s"}), Some("holdMs")),
            (
                json!({"name": "s", "holdMs": 86_400_001u64}),
                Some("holdMs"),
            ),
        ];
        for (body, field) in cases {
            let err = parse(body.clone(), RequestKind::Terminate).unwrap_err();
            assert_eq!(err.field.as_deref(), field, "{body}: {err}");
        }
        assert_eq!(
            parse(json!({"reason": "x"}), RequestKind::Find)
                .unwrap_err()
                .field
                .as_deref(),
            Some("reason"),
            "find takes no reason"
        );
    }

    #[test]
    fn empty_find_matches_all_but_terminate_needs_all_true() {
        assert!(
            parse(json!({}), RequestKind::Find)
                .unwrap()
                .filter
                .is_empty()
        );
        assert!(
            parse(json!({"all": true}), RequestKind::Terminate)
                .unwrap()
                .all
        );
    }

    #[test]
    fn matching_is_an_and() {
        let mut new = super::super::NewStream::player("cam", "liveApp");
        new.media_session_id = Some(Uuid::new_v4());
        let record = StreamRecord::new(new, "n", 0);
        let filter = |v: Value| parse(v, RequestKind::Find).unwrap().filter;
        assert!(filter(json!({"name": "cam", "published": false})).matches(&record));
        assert!(!filter(json!({"name": "cam", "published": true})).matches(&record));
        assert!(filter(json!({"appKey": "liveApp", "status": "PENDING"})).matches(&record));
        assert!(!filter(json!({"mediaSessionIds": []})).matches(&record));
    }
}
