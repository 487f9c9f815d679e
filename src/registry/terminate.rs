//! Stopping from the server side: terminations with their audit record and optional hold,
//! draining at shutdown, the holds in force and their release, and the hint a stopped client
//! is given.

use super::*;

impl Registry {
    /// Stops every stream in `streams` with `reason`, and records the termination in the
    /// audit trail and the log. With `hold`, new streams that its filter matches are refused
    /// for that many milliseconds; the hold is in place before the first stream stops, so a
    /// client that reconnects at once is already refused. Returns the record.
    pub fn terminate(
        &self,
        streams: &[StreamRecord],
        reason: &str,
        source: TerminationSource,
        filter: StreamFilter,
        hold: Option<HoldSpec>,
    ) -> Result<Termination, TooManyHolds> {
        let hold = match hold {
            Some(spec) => Some(self.add_hold(spec, reason, source.clone())?),
            None => None,
        };
        let termination = self.record_termination(
            streams.iter().map(TerminatedStream::from).collect(),
            reason,
            source,
            filter,
            hold.as_ref(),
        );
        if let Some(hold) = &hold {
            self.link_hold(hold.hold_id, termination.id);
        }
        let source_kind = termination.source.kind();
        {
            let mut table = self.write();
            for record in streams {
                if let Some(entry) = table.by_id.get_mut(&record.media_session_id) {
                    entry
                        .terminated_by
                        .get_or_insert((termination.id, source_kind));
                }
            }
        }
        tracing::info!(
            termination = termination.id,
            source = ?termination.source,
            reason = %termination.reason,
            filter = ?termination.filter,
            streams = termination.streams.len(),
            hold_until = termination.held_until,
            "terminating streams"
        );
        for record in streams {
            self.stop(record.media_session_id, StopReason::server(reason));
        }
        Ok(termination)
    }

    /// Puts a hold in place (before any stream is stopped under it) and returns it.
    pub fn add_hold(
        &self,
        spec: HoldSpec,
        reason: &str,
        source: TerminationSource,
    ) -> Result<Hold, TooManyHolds> {
        let now = now_ms();
        self.lock_holds().add(
            Hold {
                hold_id: 0,
                reason: reason.to_string(),
                created: now,
                until: now.saturating_add(spec.ms.min(MAX_HOLD_MS)),
                filter: spec.filter,
                until_admitted: spec.until_admitted,
                source,
                termination_id: None,
            },
            now,
        )
    }

    /// Names the termination that put a hold in place.
    pub fn link_hold(&self, hold_id: u64, termination_id: u64) {
        self.lock_holds().set_termination(hold_id, termination_id);
    }

    /// Keeps a hold another node of the cluster put in place, under its id; false when it
    /// is here already or has expired.
    pub fn adopt_hold(&self, hold: Hold) -> Result<bool, TooManyHolds> {
        let id = hold.hold_id;
        let adopted = self.lock_holds().adopt(hold, now_ms())?;
        if adopted {
            tracing::info!(hold = id, "hold of the cluster in force here");
        }
        Ok(adopted)
    }

    /// Draws hold ids at random, as a cluster node must (every node keeps every hold).
    pub fn use_cluster_hold_ids(&self) {
        self.lock_holds().use_random_ids();
    }

    /// Records a termination in the audit trail and the counters, without stopping anything:
    /// for a cluster terminate, whose streams each node stops, recorded once by the node
    /// that was asked.
    pub fn record_termination(
        &self,
        streams: Vec<TerminatedStream>,
        reason: &str,
        source: TerminationSource,
        filter: StreamFilter,
        hold: Option<&Hold>,
    ) -> Termination {
        let count = streams.len() as u64;
        let termination = {
            let mut audit = self.audit.lock().unwrap_or_else(|e| e.into_inner());
            let termination = Termination {
                id: audit.next_id(),
                time: now_ms(),
                source,
                reason: reason.to_string(),
                filter,
                streams,
                hold_id: hold.map(|h| h.hold_id),
                held_until: hold.map(|h| h.until),
            };
            audit.push(termination.clone());
            termination
        };
        let mut counts = self.lock_counts();
        let entry = counts
            .terminations
            .entry(termination.source.kind())
            .or_default();
        entry.0 += 1;
        entry.1 += count;
        drop(counts);
        termination
    }

    /// Stops these streams of a termination recorded on another node (a cluster terminate).
    pub fn stop_for_cluster(&self, streams: &[StreamRecord], reason: &str, asked_by: &str) {
        tracing::info!(
            asked_by,
            reason,
            streams = streams.len(),
            "terminating streams for a cluster request"
        );
        for record in streams {
            self.stop(record.media_session_id, StopReason::server(reason));
        }
    }

    /// Refuses every registration from now on (server shutdown).
    pub fn drain(&self) {
        // Taken under the write lock, so no registration is half-way past the check.
        let _table = self.write();
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The hold that refuses a new stream of this name, direction and app, if any.
    pub fn held(&self, name: &str, published: bool, app_key: &str) -> Option<Hold> {
        self.lock_holds()
            .find(name, published, app_key, now_ms())
            .cloned()
    }

    /// The holds in force.
    pub fn holds(&self) -> Vec<Hold> {
        self.lock_holds().list(now_ms())
    }

    /// Lifts the holds `pick` selects; returns them.
    pub fn release(&self, pick: impl Fn(&Hold) -> bool) -> Vec<Hold> {
        let released = self.lock_holds().release(now_ms(), pick);
        for hold in &released {
            tracing::info!(hold = hold.hold_id, reason = %hold.reason, "hold released");
        }
        released
    }

    /// What a stream that ends for `reason` should be told to do next.
    pub(super) fn hint(&self, record: &StreamRecord, reason: &StopReason, now: u64) -> Hint {
        let held = |published: bool| {
            self.lock_holds()
                .find(&record.name, published, &record.app_key, now)
                .map(|h| h.remaining_ms(now))
        };
        let retry = |retry_after_ms| Hint::Retry { retry_after_ms };
        match reason {
            StopReason::ClientLeft => Hint::DoNotReconnect,
            StopReason::Server(_) => held(record.published).map_or(Hint::DoNotReconnect, retry),
            StopReason::PublisherStopped => retry(
                held(false)
                    .max(held(true))
                    .unwrap_or(PUBLISHER_GONE_RETRY_MS),
            ),
            StopReason::ConnectionLost(_) => {
                retry(held(record.published).unwrap_or(CONNECTION_LOST_RETRY_MS))
            }
        }
    }

    /// The recent terminations, oldest first.
    pub fn terminations(&self) -> Vec<Termination> {
        self.audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent()
    }
}
