//! Acting on verdicts: a stop (with its hold, and its audit record naming the keep-alive
//! source), or a failure counted toward `keep_alive_failures_to_stop`.

use super::*;

impl KeepAlive {
    /// Acts on a verdict: stop on `Stop`; on `Failed`, stop only under `restOnError = FAIL`
    /// after `keep_alive_failures_to_stop` failures in a row.
    pub(super) fn apply(
        &self,
        id: Uuid,
        app_key: &str,
        verdict: Verdict,
        source: Source,
        method: &MethodConfig,
        took: Duration,
    ) {
        let method_name = source.method();
        let (outcome, code, reason) = match &verdict {
            Verdict::Keep => ("keep", 200, String::new()),
            Verdict::Stop(reason, _) => ("stop", 403, reason.clone()),
            Verdict::Failed(why) => ("failed", 0, why.to_string()),
        };
        self.remember(
            id,
            app_key,
            super::LastVerdict {
                source: method_name,
                outcome,
                code,
                reason,
                at: crate::registry::now_ms(),
            },
        );
        match verdict {
            Verdict::Keep => {
                self.stats.count(source, "keep", took);
                self.lock_failures().remove(&id);
            }
            Verdict::Stop(reason, hold) => {
                self.stats.count(source, "stop", took);
                self.lock_failures().remove(&id);
                self.stop(id, app_key, &reason, source, method_name, hold);
            }
            Verdict::Failed(why) => {
                self.stats.count(source, "failed", took);
                if !method.fails_on_error() {
                    return;
                }
                let limit = self.config.load().settings.keep_alive_failures_to_stop;
                let failed = {
                    let mut failures = self.lock_failures();
                    let n = failures.entry(id).or_default();
                    *n += 1;
                    *n
                };
                if failed >= limit {
                    self.lock_failures().remove(&id);
                    let reason = format!("keep-alive failed {failed} times in a row ({why})");
                    self.stop(id, app_key, &reason, source, method_name, None);
                }
            }
        }
    }

    pub(super) fn stop(
        &self,
        id: Uuid,
        app_key: &str,
        reason: &str,
        source: Source,
        method: &str,
        hold_ms: Option<u64>,
    ) {
        // The stream may have ended while its verdict was out.
        let Some(current) = self.registry.get(id) else {
            return;
        };
        let hold = hold_ms.map(|ms| HoldSpec {
            filter: HoldFilter::one(&current),
            ms,
            until_admitted: false,
        });
        let source = TerminationSource::KeepAlive {
            app_key: app_key.to_string(),
            by: source.as_str().to_string(),
            method: method.to_string(),
        };
        let filter = StreamFilter {
            media_session_ids: Some([id].into()),
            ..StreamFilter::default()
        };
        let streams = [current];
        if let Err(e) =
            self.registry
                .terminate(&streams, reason, source.clone(), filter.clone(), hold)
        {
            // The stop matters more than the hold.
            tracing::warn!(stream = %id, error = %e, "keep-alive stop without its hold");
            let _ = self
                .registry
                .terminate(&streams, reason, source, filter, None);
        }
    }

    pub(super) fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}
