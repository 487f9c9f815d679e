//! The REST bodies of `/rest-api/stream/…`, read into typed requests: serde with
//! `deny_unknown_fields` does the reading, `serde_path_to_error` names the field to fix, and
//! the rules between fields are checked here. The registry only ever sees typed filters.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::rest::ApiError;
use crate::registry::{MAX_HOLD_MS, PluginFilter, Status, StreamFilter};

/// Which request a body is for: terminate takes more fields than find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Find,
    Terminate,
}

/// A parsed find or terminate request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRequest {
    pub filter: StreamFilter,
    /// Terminate: becomes the `info` the stopped clients see.
    pub reason: Option<String>,
    /// Answer what would be affected, change nothing.
    pub dry_run: bool,
    /// Terminate: the body asks for every stream on purpose.
    pub all: bool,
    /// Terminate: refuse new streams the filter matches for this many milliseconds.
    pub hold_ms: Option<u64>,
    /// Terminate: the hold ends early when the app's admission policy admits a request.
    pub hold_until_admitted: bool,
}

/// The fields of find (and terminate), with what each must be.
const FIND_FIELDS: &[(&str, &str)] = &[
    ("mediaSessionId", "a mediaSessionId (a non-empty string)"),
    ("mediaSessionIds", "an array of mediaSessionId strings"),
    ("name", "a string"),
    ("published", "true or false"),
    (
        "status",
        "a status: NEW, PENDING, PUBLISHING, PLAYING, FAILED",
    ),
    ("appKey", "a string"),
    ("filter", "the name of a plugin filter (a string)"),
    ("args", "a JSON object"),
    ("dryRun", "true or false"),
];
/// The fields only terminate takes.
const TERMINATE_FIELDS: &[(&str, &str)] = &[
    ("reason", "a string"),
    ("all", "true or false"),
    ("holdMs", "a whole number of milliseconds"),
    ("holdUntilAdmitted", "true or false"),
];

const MAX_REASON_LEN: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StreamBody {
    media_session_id: Option<String>,
    media_session_ids: Option<BTreeSet<String>>,
    name: Option<String>,
    published: Option<bool>,
    status: Option<Status>,
    app_key: Option<String>,
    filter: Option<String>,
    args: Option<Map<String, Value>>,
    dry_run: Option<bool>,
    reason: Option<String>,
    all: Option<bool>,
    hold_ms: Option<u64>,
    hold_until_admitted: Option<bool>,
}

fn bad(field: Option<&str>, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
        field: field.map(String::from),
    }
}

/// Reads `body` as `T`. The first error names its top-level field: an unknown one says so
/// and lists the allowed fields; a known one says what it must be.
fn read<T: DeserializeOwned>(
    body: &Value,
    fields: &[&[(&str, &str)]],
    not_an_object: &str,
) -> Result<T, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(bad(None, not_an_object));
    };
    let allowed = || fields.iter().flat_map(|f| f.iter());
    if let Some(unknown) = object
        .keys()
        .find(|key| !allowed().any(|(name, _)| name == key))
    {
        let names: Vec<&str> = allowed().map(|(name, _)| *name).collect();
        return Err(bad(
            Some(unknown),
            format!("unknown field '{unknown}'; allowed: {}", names.join(", ")),
        ));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let field = e.path().iter().find_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        });
        let hint = field
            .as_deref()
            .and_then(|f| allowed().find(|(name, _)| *name == f))
            .map(|(_, hint)| *hint);
        let detail = e.into_inner();
        match hint {
            Some(hint) => bad(field.as_deref(), format!("must be {hint} ({detail})")),
            None => bad(field.as_deref(), detail.to_string()),
        }
    })
}

fn stream_id(id: &str, field: &str) -> Result<Uuid, ApiError> {
    if id.is_empty() {
        return Err(bad(Some(field), "a mediaSessionId is a non-empty string"));
    }
    Ok(crate::registry::stream_id(id))
}

impl StreamRequest {
    /// Parses a find or terminate body. Every field is checked: an unknown one (a typo like
    /// `nmae`) is an error, never a silently wider filter.
    pub fn parse(body: &Value, kind: RequestKind) -> Result<StreamRequest, ApiError> {
        let fields: &[&[(&str, &str)]] = match kind {
            RequestKind::Find => &[FIND_FIELDS],
            RequestKind::Terminate => &[FIND_FIELDS, TERMINATE_FIELDS],
        };
        let body: StreamBody = read(body, fields, "the body must be a JSON object of filters")?;
        let mut filter = StreamFilter {
            name: body.name,
            published: body.published,
            status: body.status,
            app_key: body.app_key,
            ..StreamFilter::default()
        };
        // Ids are opaque strings, as WCS clients choose them: one that names no stream
        // matches nothing (404), it is not malformed.
        let one = body
            .media_session_id
            .map(|id| stream_id(&id, "mediaSessionId"))
            .transpose()?;
        let ids = body
            .media_session_ids
            .map(|ids| {
                ids.iter()
                    .map(|id| stream_id(id, "mediaSessionIds"))
                    .collect::<Result<BTreeSet<Uuid>, ApiError>>()
            })
            .transpose()?;
        // Both given: a stream must be in both (AND), like every other pair of filters.
        filter.media_session_ids = match (one, ids) {
            (Some(one), Some(ids)) => Some(ids.into_iter().filter(|id| *id == one).collect()),
            (Some(one), None) => Some(BTreeSet::from([one])),
            (None, ids) => ids,
        };
        filter.plugin = match (body.filter, body.args) {
            (Some(name), args) => Some(PluginFilter {
                name,
                args: Value::Object(args.unwrap_or_default()),
            }),
            (None, Some(_)) => return Err(bad(Some("args"), "'args' needs a 'filter' name")),
            (None, None) => None,
        };
        if let Some(reason) = &body.reason
            && (reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control))
        {
            return Err(bad(
                Some("reason"),
                format!("at most {MAX_REASON_LEN} bytes of printable text"),
            ));
        }
        if let Some(ms) = body.hold_ms
            && !(1..=MAX_HOLD_MS).contains(&ms)
        {
            return Err(bad(
                Some("holdMs"),
                format!("must be a whole number of milliseconds from 1 to {MAX_HOLD_MS}"),
            ));
        }
        let request = StreamRequest {
            filter,
            reason: body.reason,
            dry_run: body.dry_run.unwrap_or(false),
            all: body.all.unwrap_or(false),
            hold_ms: body.hold_ms,
            hold_until_admitted: body.hold_until_admitted.unwrap_or(false),
        };
        if request.hold_until_admitted && request.hold_ms.is_none() {
            return Err(bad(
                Some("holdUntilAdmitted"),
                "needs holdMs: the longest the hold may last",
            ));
        }
        if kind == RequestKind::Terminate {
            if request.filter.is_empty() && !request.all {
                return Err(bad(
                    None,
                    "no filter: this would stop every stream; add a filter, or \"all\": true to mean it",
                ));
            }
            if request.all && !request.filter.is_empty() {
                return Err(bad(
                    Some("all"),
                    "\"all\": true cannot be combined with filters",
                ));
            }
        }
        Ok(request)
    }
}

/// Which holds a release lifts.
#[derive(Debug, Default, PartialEq)]
pub struct ReleaseRequest {
    pub ids: Option<Vec<u64>>,
    pub name: Option<String>,
    pub published: Option<bool>,
    pub app_key: Option<String>,
    pub all: bool,
}

const RELEASE_FIELDS: &[(&str, &str)] = &[
    ("holdId", "a hold id (a whole number)"),
    ("holdIds", "an array of hold ids"),
    ("name", "a string"),
    ("published", "true or false"),
    ("appKey", "a string"),
    ("all", "true or false"),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReleaseBody {
    hold_id: Option<u64>,
    hold_ids: Option<Vec<u64>>,
    name: Option<String>,
    published: Option<bool>,
    app_key: Option<String>,
    all: Option<bool>,
}

impl ReleaseRequest {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let body: ReleaseBody = read(body, &[RELEASE_FIELDS], "the body must be a JSON object")?;
        let ids = match (body.hold_id, body.hold_ids) {
            (None, None) => None,
            (one, many) => Some(one.into_iter().chain(many.unwrap_or_default()).collect()),
        };
        let request = ReleaseRequest {
            ids,
            name: body.name,
            published: body.published,
            app_key: body.app_key,
            all: body.all.unwrap_or(false),
        };
        let filtered = request.ids.is_some()
            || request.name.is_some()
            || request.published.is_some()
            || request.app_key.is_some();
        if request.all == filtered {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name the holds to release (holdId, holdIds, name, published, appKey) or give \"all\": true, not both",
            ));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value, kind: RequestKind) -> Result<StreamRequest, ApiError> {
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
            (json!({"mediaSessionId": ""}), Some("mediaSessionId")),
            (json!({"mediaSessionId": 5}), Some("mediaSessionId")),
            (json!({"mediaSessionIds": "abc"}), Some("mediaSessionIds")),
            (json!({"mediaSessionIds": [""]}), Some("mediaSessionIds")),
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
            assert_eq!(err.field.as_deref(), field, "{body}: {}", err.message);
        }
        let err = parse(json!({"published": "yes"}), RequestKind::Find).unwrap_err();
        assert!(
            err.message.starts_with("must be true or false ("),
            "{}",
            err.message
        );
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
        let mut new = crate::registry::NewStream::player("cam", "liveApp");
        new.media_session_id = Some(Uuid::new_v4());
        let mut record = crate::registry::StreamRecord::preview(new, "n");
        record.status = Status::Pending;
        let filter = |v: Value| parse(v, RequestKind::Find).unwrap().filter;
        assert!(filter(json!({"name": "cam", "published": false})).matches(&record));
        assert!(!filter(json!({"name": "cam", "published": true})).matches(&record));
        assert!(filter(json!({"appKey": "liveApp", "status": "PENDING"})).matches(&record));
        assert!(!filter(json!({"mediaSessionIds": []})).matches(&record));
    }

    #[test]
    fn release_names_its_fields() {
        for (body, field) in [
            (json!({"holdId": "x"}), Some("holdId")),
            (json!({"holdIds": [1, "x"]}), Some("holdIds")),
            (json!({"nmae": "s"}), Some("nmae")),
            (json!({"all": true, "name": "s"}), None),
            (json!({}), None),
        ] {
            let err = ReleaseRequest::parse(&body).unwrap_err();
            assert_eq!(err.field.as_deref(), field, "{body}: {}", err.message);
        }
        let r = ReleaseRequest::parse(&json!({"holdId": 1, "holdIds": [2]})).unwrap();
        assert_eq!(r.ids, Some(vec![1, 2]));
    }
}
