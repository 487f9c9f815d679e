//! Reading the table: one stream, the publisher of a name, the streams a filter selects
//! (through the id and name indexes where it can), the streams due in a slice of an
//! interval (the phase index), and counts for scrapes. Every answer is a copy, taken under
//! the read lock for a moment.

use super::*;

impl Registry {
    /// The records whose [`phase`] is in one of `ranges` and that `keep` accepts: the
    /// streams due in a slice of an interval, found through the phase index.
    pub fn due(
        &self,
        ranges: &[(Bound<u64>, Bound<u64>)],
        keep: impl Fn(&StreamRecord) -> bool,
    ) -> Vec<StreamRecord> {
        let table = self.read();
        let mut out = Vec::new();
        for &(from, to) in ranges {
            let from = match from {
                Bound::Included(p) => Bound::Included((p, Uuid::nil())),
                Bound::Excluded(p) => Bound::Excluded((p, Uuid::max())),
                Bound::Unbounded => Bound::Unbounded,
            };
            let to = match to {
                Bound::Included(p) => Bound::Included((p, Uuid::max())),
                Bound::Excluded(p) => Bound::Excluded((p, Uuid::nil())),
                Bound::Unbounded => Bound::Unbounded,
            };
            for (_, id) in table.by_phase.range((from, to)) {
                if let Some(entry) = table.by_id.get(id)
                    && keep(&entry.record)
                {
                    out.push(entry.record.clone());
                }
            }
        }
        out
    }

    /// How many streams are live, by (app, published, status). A scan: for scrapes, not
    /// for hot paths.
    pub fn census(&self) -> BTreeMap<(String, bool, Status), u64> {
        let table = self.read();
        let mut census = BTreeMap::new();
        for entry in table.by_id.values() {
            let r = &entry.record;
            *census
                .entry((r.app_key.clone(), r.published, r.status))
                .or_default() += 1;
        }
        census
    }

    /// What happened to streams since the start.
    pub fn lifecycle_counts(&self) -> LifecycleCounts {
        self.lock_counts().clone()
    }

    pub(super) fn lock_counts(&self) -> std::sync::MutexGuard<'_, LifecycleCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: Uuid) -> Option<StreamRecord> {
        self.read().by_id.get(&id).map(|e| e.record.clone())
    }

    /// The id of the publisher of `name`, if one is registered.
    pub fn publisher_of(&self, name: &str) -> Option<Uuid> {
        self.read().by_name.get(name).and_then(|s| s.publisher)
    }

    /// How many players `name` has (connected or still connecting).
    pub fn viewer_count(&self, name: &str) -> usize {
        self.read().by_name.get(name).map_or(0, |s| s.players.len())
    }

    /// Every record matching `keep`, in no particular order.
    pub fn find(&self, keep: impl Fn(&StreamRecord) -> bool) -> Vec<StreamRecord> {
        self.read()
            .by_id
            .values()
            .filter(|e| keep(&e.record))
            .map(|e| e.record.clone())
            .collect()
    }

    /// The records of streams named `name`: the publisher and its players.
    pub fn find_by_name(&self, name: &str) -> Vec<StreamRecord> {
        let table = self.read();
        let Some(slot) = table.by_name.get(name) else {
            return Vec::new();
        };
        slot.publisher
            .iter()
            .chain(slot.players.iter())
            .filter_map(|id| table.by_id.get(id).map(|e| e.record.clone()))
            .collect()
    }

    /// The records matching the built-in conditions of `filter`, using the id and name
    /// indexes when the filter names ids or a name. A plugin filter is not evaluated here:
    /// the caller runs it on the returned copies, so no Lua call happens under the lock.
    pub fn select(&self, filter: &StreamFilter) -> Vec<StreamRecord> {
        let keep = |r: &StreamRecord| filter.matches(r);
        let table = self.read();
        let pick = |ids: &mut dyn Iterator<Item = Uuid>| -> Vec<StreamRecord> {
            ids.filter_map(|id| table.by_id.get(&id))
                .filter(|e| keep(&e.record))
                .map(|e| e.record.clone())
                .collect()
        };
        if let Some(ids) = filter::named_ids(filter) {
            return pick(&mut ids.iter().copied());
        }
        if let Some(name) = &filter.name {
            let Some(slot) = table.by_name.get(name) else {
                return Vec::new();
            };
            let ids = filter::dedup(slot.publisher.iter().chain(slot.players.iter()).copied());
            return pick(&mut ids.into_iter());
        }
        table
            .by_id
            .values()
            .filter(|e| keep(&e.record))
            .map(|e| e.record.clone())
            .collect()
    }
}
