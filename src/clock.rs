//! Wall-clock time as every record, event and audit entry spells it: milliseconds since the
//! Unix epoch. Its own room so that `config` and `registry` can share it without knowing of
//! each other.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
