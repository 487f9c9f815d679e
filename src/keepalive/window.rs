//! Where in an interval each stream is due, as pure arithmetic: a stream's slot from its
//! phase, an app's slot, and a window of the interval as ranges of the registry's phase
//! index. No clock and no registry, so it is tested exhaustively below.

use std::ops::Bound;

#[cfg(test)]
use uuid::Uuid;

/// A stream's slot in the interval: where in each interval its verdict is due. Its
/// [`phase`](crate::registry::phase) scaled to the interval, so that the streams due in a
/// slice of the interval are one range of the registry's phase index.
#[cfg(test)]
pub(super) fn slot(id: Uuid, interval_ms: u64) -> u64 {
    ((crate::registry::phase(id) as u128 * interval_ms as u128) >> 64) as u64
}

/// The smallest phase whose slot is at least `position`; `None` past the last phase.
pub(super) fn phase_at(position: u64, interval_ms: u64) -> Option<u64> {
    let scaled = ((position as u128) << 64).div_ceil(interval_ms as u128);
    u64::try_from(scaled).ok()
}

pub(super) fn app_slot(app: &str, interval_ms: u64) -> u64 {
    let hash = app.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    hash % interval_ms
}

/// Positions `from` (exclusive) to `to` (inclusive) within an interval, wrapping.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub from: u64,
    pub to: u64,
    pub whole: bool,
}

impl Window {
    /// The phases whose slots the window covers, as ranges of the registry's phase index.
    pub(super) fn phase_ranges(&self, interval_ms: u64) -> Vec<(Bound<u64>, Bound<u64>)> {
        if self.whole {
            return vec![(Bound::Unbounded, Bound::Unbounded)];
        }
        if self.from == self.to {
            return Vec::new();
        }
        let lower = |position: u64| match phase_at(position, interval_ms) {
            Some(p) => Bound::Included(p),
            None => Bound::Excluded(u64::MAX),
        };
        let upper = |position: u64| match phase_at(position, interval_ms) {
            Some(p) => Bound::Excluded(p),
            None => Bound::Unbounded,
        };
        if self.from < self.to {
            vec![(lower(self.from + 1), upper(self.to + 1))]
        } else {
            vec![
                (lower(self.from + 1), Bound::Unbounded),
                (Bound::Unbounded, upper(self.to + 1)),
            ]
        }
    }

    pub(super) fn contains(&self, position: u64) -> bool {
        if self.whole {
            true
        } else if self.from <= self.to {
            position > self.from && position <= self.to
        } else {
            position > self.from || position <= self.to
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_ranges_hold_exactly_the_slots_a_window_contains() {
        use std::ops::RangeBounds;
        for interval in [1u64, 7, 100, 1000, 10_000] {
            let windows = [
                Window {
                    from: 0,
                    to: interval - 1,
                    whole: false,
                },
                Window {
                    from: interval / 3,
                    to: interval / 2,
                    whole: false,
                },
                Window {
                    from: interval - 1,
                    to: 0,
                    whole: false,
                },
                Window {
                    from: interval / 2,
                    to: interval / 3,
                    whole: false,
                },
                Window {
                    from: 0,
                    to: 0,
                    whole: true,
                },
            ];
            for _ in 0..2000 {
                let id = Uuid::new_v4();
                let (position, p) = (slot(id, interval), crate::registry::phase(id));
                assert!(position < interval);
                for w in &windows {
                    let in_ranges = w.phase_ranges(interval).iter().any(|r| r.contains(&p));
                    assert_eq!(
                        in_ranges,
                        w.contains(position),
                        "{w:?} interval {interval} slot {position}"
                    );
                }
            }
        }
    }

    #[test]
    fn windows_cover_each_slot_once_per_interval() {
        let interval = 1000;
        let mut seen = vec![0u32; interval as usize];
        let mut then = 0u64;
        for now in (7..=3 * interval).step_by(7) {
            let w = Window {
                from: then % interval,
                to: now % interval,
                whole: now - then >= interval,
            };
            for (position, count) in seen.iter_mut().enumerate() {
                if w.contains(position as u64) {
                    *count += 1;
                }
            }
            then = now;
        }
        // Three intervals minus the first partial step: every slot is due 2 or 3 times.
        assert!(seen.iter().all(|&n| (2..=3).contains(&n)), "{seen:?}");
    }
}
