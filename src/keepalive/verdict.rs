//! What a web server's keep-alive answer decides: a `StreamKeepAliveEvent` answer's verdict
//! and the stops of a `StreamKeepAliveBatchEvent` answer, each with its reason and hold. Pure
//! functions of the answer, tested without sockets.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use crate::hooks::{HookAnswer, HookError};

/// What one verdict decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Stop with this reason, holding the stream's return for so many ms if asked.
    Stop(String, Option<u64>),
    /// No usable answer: handled by the method's `restOnError`.
    Failed(String),
}

/// The verdict a `StreamKeepAliveEvent` answer gives: `403` stops, `2xx` keeps, anything else
/// (another status, no answer) is a failed verdict.
pub fn verdict_of(answer: &Result<HookAnswer, HookError>) -> Verdict {
    match answer {
        Ok(a) if a.status == 403 => Verdict::Stop(
            a.reason()
                .map(|r| format!("keep-alive: {r}"))
                .unwrap_or_else(|| "keep-alive refused by the web server (403)".into()),
            hold_of(&a.body),
        ),
        Ok(a) if (200..300).contains(&a.status) => Verdict::Keep,
        Ok(a) => Verdict::Failed(HookError::Status(a.status).to_string()),
        Err(e) => Verdict::Failed(e.to_string()),
    }
}

/// The hold a web server's answer asks for: a `holdMs` field of 1 ms to a day. Anything
/// else is no hold (the stop itself still happens).
fn hold_of(body: &Value) -> Option<u64> {
    body.get("holdMs")
        .and_then(Value::as_u64)
        .filter(|ms| (1..=crate::registry::MAX_HOLD_MS).contains(ms))
}

/// The streams a `StreamKeepAliveBatchEvent` answer stops, each with its reason and hold:
/// `{"stop": ["id", …]}` or `{"stop": [{"mediaSessionId": "id", "reason": "…", "holdMs": N}, …]}`;
/// `Err` when the answer is unusable.
pub fn batch_stops(
    answer: &Result<HookAnswer, HookError>,
) -> Result<HashMap<Uuid, (String, Option<u64>)>, String> {
    let answer = answer.as_ref().map_err(|e| e.to_string())?;
    if !(200..300).contains(&answer.status) {
        return Err(HookError::Status(answer.status).to_string());
    }
    let default_reason = "keep-alive refused by the web server (batch)".to_string();
    let list = match &answer.body {
        Value::Null => return Ok(HashMap::new()),
        Value::Object(o) => match o.get("stop") {
            None => return Ok(HashMap::new()),
            Some(Value::Array(list)) => list,
            Some(_) => return Err("'stop' is not an array".into()),
        },
        _ => return Err("the answer is not a JSON object".into()),
    };
    let mut stops = HashMap::new();
    for item in list {
        let (id, reason, hold) = match item {
            Value::String(id) => (id.as_str(), default_reason.clone(), None),
            Value::Object(o) => (
                o.get("mediaSessionId")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                o.get("reason")
                    .and_then(Value::as_str)
                    .map(|r| format!("keep-alive: {r}"))
                    .unwrap_or_else(|| default_reason.clone()),
                hold_of(item),
            ),
            _ => return Err("a 'stop' entry is neither an id nor an object".into()),
        };
        let id = Uuid::parse_str(id).map_err(|_| format!("'{id}' is not a mediaSessionId"))?;
        stops.insert(id, (reason, hold));
    }
    Ok(stops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn answer(status: u16, body: Value) -> Result<HookAnswer, HookError> {
        Ok(HookAnswer { status, body })
    }

    #[test]
    fn verdicts_follow_the_model() {
        assert_eq!(verdict_of(&answer(200, Value::Null)), Verdict::Keep);
        assert_eq!(
            verdict_of(&answer(403, json!({"reason": "quota"}))),
            Verdict::Stop("keep-alive: quota".into(), None)
        );
        assert_eq!(
            verdict_of(&answer(403, json!({"reason": "quota", "holdMs": 30000}))),
            Verdict::Stop("keep-alive: quota".into(), Some(30000))
        );
        assert_eq!(
            verdict_of(&answer(403, json!({"holdMs": "soon"}))),
            Verdict::Stop("keep-alive refused by the web server (403)".into(), None),
            "a bad hold is ignored, the stop stays"
        );
        assert!(matches!(
            verdict_of(&answer(500, Value::Null)),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            verdict_of(&Err(HookError::Timeout(Duration::from_secs(1)))),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn batch_answers() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let stops = batch_stops(&answer(
            200,
            json!({"stop": [a.to_string(), {"mediaSessionId": b, "reason": "r", "holdMs": 9}]}),
        ))
        .unwrap();
        assert_eq!(stops.len(), 2);
        assert_eq!(stops[&b], ("keep-alive: r".to_string(), Some(9)));
        assert_eq!(stops[&a].1, None);
        assert!(batch_stops(&answer(200, Value::Null)).unwrap().is_empty());
        assert!(batch_stops(&answer(200, json!({"stop": "x"}))).is_err());
        assert!(batch_stops(&answer(200, json!({"stop": ["nope"]}))).is_err());
        assert!(batch_stops(&answer(502, Value::Null)).is_err());
    }
}
