//! Each stream's status events in order, kept while it lives and for a while after it
//! ends, so that a status stream can replay what a client missed (`Last-Event-ID`) and a
//! client that reconnects after the end still learns how and why it ended; [`follow`] reads
//! one stream's events as they come, for every protocol that shows them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::StatusEvent;
use super::packed::{Packed, pack};

/// Events kept per stream. A stream changes status a handful of times; this bounds a
/// misbehaving one.
const EVENTS_PER_STREAM: usize = 64;
/// Ended streams whose events stay readable.
pub(super) const ENDED_KEPT: usize = 10_000;
/// How long an ended stream's events stay readable.
pub(super) const ENDED_KEPT_MS: u64 = 5 * 60 * 1000;

/// One stream's events, oldest first. Appended under the registry's write lock, so the
/// order is the order of `eventId`.
#[derive(Default)]
pub struct Timeline {
    events: Mutex<VecDeque<StatusEvent>>,
}

impl Timeline {
    pub(super) fn push(&self, event: StatusEvent) {
        let mut events = self.lock();
        if events.len() == EVENTS_PER_STREAM {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The events after `event_id` (all of them for 0).
    pub fn since(&self, event_id: u64) -> Vec<StatusEvent> {
        self.lock()
            .iter()
            .filter(|e| e.event_id > event_id)
            .cloned()
            .collect()
    }

    /// The final event, once the stream has ended.
    pub fn last(&self) -> Option<StatusEvent> {
        self.lock().back().cloned()
    }

    fn packed(&self) -> Packed {
        pack(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<StatusEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The timelines of ended streams, newest last, bounded in count and age; packed (see
/// [`super::packed`]) for the minutes they are kept.
#[derive(Default)]
pub(super) struct Ended {
    by_id: HashMap<Uuid, (Packed, u64)>,
    order: VecDeque<Uuid>,
}

impl Ended {
    pub fn insert(&mut self, id: Uuid, timeline: &Timeline, now_ms: u64) {
        self.evict(now_ms, ENDED_KEPT - 1);
        self.by_id.insert(id, (timeline.packed(), now_ms));
        self.order.push_back(id);
    }

    /// Forgets the timelines that have expired by `now_ms`; how many. Run on a timer, so a
    /// server whose streams have all ended gives their events' memory back when they
    /// expire, not at the next stream's end.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let pruned = self.evict(now_ms, ENDED_KEPT);
        if pruned > 0 && self.order.is_empty() {
            self.by_id.shrink_to_fit();
            self.order.shrink_to_fit();
        }
        pruned
    }

    /// Whether the oldest kept timeline has expired by `now_ms` (a prune would drop one).
    pub fn has_expired(&self, now_ms: u64) -> bool {
        self.order
            .front()
            .and_then(|oldest| self.by_id.get(oldest))
            .is_some_and(|(_, ended)| now_ms.saturating_sub(*ended) >= ENDED_KEPT_MS)
    }

    /// Drops the oldest timelines while more than `keep` are kept or the oldest expired.
    fn evict(&mut self, now_ms: u64, keep: usize) -> usize {
        let mut evicted = 0;
        while let Some(oldest) = self.order.front() {
            let ended = self.by_id.get(oldest).map_or(0, |(_, at)| *at);
            if self.order.len() <= keep && now_ms.saturating_sub(ended) < ENDED_KEPT_MS {
                break;
            }
            self.by_id.remove(oldest);
            self.order.pop_front();
            evicted += 1;
        }
        evicted
    }

    pub fn get(&self, id: &Uuid, now_ms: u64) -> Option<Arc<Timeline>> {
        self.by_id
            .get(id)
            .filter(|(_, ended)| now_ms.saturating_sub(*ended) < ENDED_KEPT_MS)
            .map(|(packed, _)| {
                Arc::new(Timeline {
                    events: Mutex::new(packed.unpack()),
                })
            })
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The events of `timeline` after `after`, then each new one as `changes` signals it,
/// ending with the final event.
pub fn follow(
    timeline: Arc<Timeline>,
    changes: Option<watch::Receiver<StatusEvent>>,
    after: u64,
) -> impl futures::Stream<Item = StatusEvent> {
    struct Cursor {
        timeline: Arc<Timeline>,
        changes: Option<watch::Receiver<StatusEvent>>,
        after: u64,
        ended: bool,
    }
    let cursor = Cursor {
        timeline,
        changes,
        after,
        ended: false,
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if cursor.ended {
                return None;
            }
            let events = cursor.timeline.since(cursor.after);
            if let Some(last) = events.last() {
                cursor.after = last.event_id;
                cursor.ended = last.status.is_final();
                return Some((futures::stream::iter(events), cursor));
            }
            // Nothing new: wait for the next change. The timeline is appended before the
            // change is signalled, and a closed channel means the final event is in.
            match cursor.changes.as_mut() {
                Some(changes) => {
                    if changes.changed().await.is_err() {
                        cursor.changes = None;
                    }
                }
                None => return None,
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_timelines_are_pruned_without_a_new_end() {
        let mut ended = Ended::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        ended.insert(first, &Timeline::default(), 0);
        ended.insert(second, &Timeline::default(), ENDED_KEPT_MS / 2);
        assert!(!ended.has_expired(ENDED_KEPT_MS - 1));
        assert_eq!(ended.prune(ENDED_KEPT_MS - 1), 0, "none expired yet");
        assert!(ended.has_expired(ENDED_KEPT_MS));
        assert_eq!(ended.prune(ENDED_KEPT_MS), 1);
        assert!(ended.get(&first, ENDED_KEPT_MS).is_none());
        assert!(ended.get(&second, ENDED_KEPT_MS).is_some());
        assert_eq!(ended.prune(ENDED_KEPT_MS * 2), 1);
        assert_eq!(ended.len(), 0);
    }

    #[test]
    fn an_insert_keeps_at_most_the_bound() {
        let mut ended = Ended::default();
        for _ in 0..ENDED_KEPT + 5 {
            ended.insert(Uuid::new_v4(), &Timeline::default(), 1);
        }
        assert_eq!(ended.len(), ENDED_KEPT);
        assert_eq!(ended.prune(1), 0, "a full set that has not expired stays");
    }
}
