//! The shared key-value store a plugin gets as `shared`: one per app, surviving plugin
//! reloads, with a time to live per key — for counters and quotas across verdicts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Keys one app's store holds at most; a `set` beyond it is refused.
const MAX_KEYS: usize = 100_000;
/// The largest value (as JSON) stored.
const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shared store is full ({MAX_KEYS} keys)")]
    Full,
    #[error("value over {MAX_VALUE} bytes")]
    TooLarge,
    #[error("'{0}' holds a value that is not a number")]
    NotANumber(String),
}

#[derive(Default)]
pub struct SharedStore {
    entries: Mutex<HashMap<String, (Value, Option<Instant>)>>,
}

impl SharedStore {
    pub fn get(&self, key: &str) -> Option<Value> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                entries.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    pub fn set(&self, key: &str, value: Value, ttl_ms: Option<u64>) -> Result<(), StoreError> {
        if value.to_string().len() > MAX_VALUE {
            return Err(StoreError::TooLarge);
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_KEYS && !entries.contains_key(key) {
            let now = Instant::now();
            entries.retain(|_, (_, expiry)| expiry.is_none_or(|e| e > now));
            if entries.len() >= MAX_KEYS {
                return Err(StoreError::Full);
            }
        }
        let expiry = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        entries.insert(key.to_string(), (value, expiry));
        Ok(())
    }

    /// Adds `by` to a number (missing or expired counts as 0) and returns the new value. A
    /// TTL given sets the key's expiry; none keeps the expiry it had.
    pub fn incr(&self, key: &str, by: f64, ttl_ms: Option<u64>) -> Result<f64, StoreError> {
        let current = self.get(key);
        let mut entries = self.lock();
        let (old, expiry) = match (current, entries.get(key)) {
            (Some(Value::Number(n)), Some((_, expiry))) => (n.as_f64().unwrap_or(0.0), *expiry),
            (Some(_), _) => return Err(StoreError::NotANumber(key.to_string())),
            _ => (0.0, None),
        };
        if entries.len() >= MAX_KEYS && !entries.contains_key(key) {
            return Err(StoreError::Full);
        }
        let new = old + by;
        let expiry = ttl_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms))
            .or(expiry);
        let number = serde_json::Number::from_f64(new)
            .map(Value::Number)
            .unwrap_or(Value::Null);
        entries.insert(key.to_string(), (number, expiry));
        Ok(new)
    }

    pub fn delete(&self, key: &str) -> bool {
        self.lock().remove(key).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, Option<Instant>)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_ttl() {
        let store = SharedStore::default();
        assert_eq!(store.incr("n", 1.0, None).unwrap(), 1.0);
        assert_eq!(store.incr("n", 2.0, None).unwrap(), 3.0);
        store.set("gone", Value::from("x"), Some(0)).unwrap();
        assert!(store.get("gone").is_none());
        store.set("s", Value::from("text"), None).unwrap();
        assert!(store.incr("s", 1.0, None).is_err());
        assert!(store.delete("n"));
        assert!(store.get("n").is_none());
    }
}
