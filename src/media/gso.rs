//! Planning a batch of queued datagrams into system calls: datagrams to one destination
//! that follow one another with one size (the last may be shorter) become one UDP GSO
//! message (`UDP_SEGMENT`: the kernel cuts it into the datagrams), the rest leave one
//! `sendmmsg` entry each. Pure: it orders and groups indices, and never touches a socket.

use std::net::SocketAddr;
use std::ops::Range;

/// Segments one GSO message may carry (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Bytes one GSO message may carry: an IP datagram's limit, less its headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams that leave in one message: `order[range]` indexes the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub target: SocketAddr,
    pub range: Range<usize>,
    /// The size of each segment but the last; the kernel's `gso_size`.
    pub segment: usize,
}

impl Run {
    pub fn len(&self) -> usize {
        self.range.len()
    }
}

/// Fills `order` with the indices of `batch` (datagrams and their destinations) grouped by
/// destination, each destination's datagrams kept in the order they were queued, and
/// `runs` with the messages to send.
pub fn plan<D: AsRef<[u8]>>(
    batch: &[(D, SocketAddr)],
    order: &mut Vec<usize>,
    runs: &mut Vec<Run>,
) {
    order.clear();
    runs.clear();
    order.extend(0..batch.len());
    // The index as the second key keeps each destination's datagrams in queue order.
    order.sort_unstable_by_key(|&i| (batch[i].1, i));
    let size = |i: usize| batch[i].0.as_ref().len();
    let mut start = 0;
    while start < order.len() {
        let first = order[start];
        let (target, segment) = (batch[first].1, size(first));
        let mut end = start + 1;
        let mut bytes = segment;
        while end < order.len() && end - start < MAX_SEGMENTS {
            let next = order[end];
            let size = size(next);
            if batch[next].1 != target || size > segment || bytes + size > MAX_GSO_BYTES {
                break;
            }
            bytes += size;
            end += 1;
            // A shorter datagram can only be a run's last segment.
            if size < segment {
                break;
            }
        }
        runs.push(Run {
            target,
            range: start..end,
            segment,
        });
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn planned(batch: &[(usize, u16)]) -> (Vec<usize>, Vec<Run>) {
        let batch: Vec<(Vec<u8>, SocketAddr)> =
            batch.iter().map(|&(s, p)| (vec![0; s], addr(p))).collect();
        let (mut order, mut runs) = (Vec::new(), Vec::new());
        plan(&batch, &mut order, &mut runs);
        (order, runs)
    }

    #[test]
    fn a_frame_to_each_player_becomes_one_run_per_player_in_queue_order() {
        // Two players, a frame of three packets (the last shorter), interleaved as the
        // players' writers queue them.
        let batch = [
            (1200, 2),
            (1200, 1),
            (1200, 2),
            (1200, 1),
            (300, 1),
            (300, 2),
        ];
        let (order, runs) = planned(&batch);
        assert_eq!(order, vec![1, 3, 4, 0, 2, 5]);
        assert_eq!(
            runs,
            vec![
                Run {
                    target: addr(1),
                    range: 0..3,
                    segment: 1200
                },
                Run {
                    target: addr(2),
                    range: 3..6,
                    segment: 1200
                },
            ]
        );
    }

    #[test]
    fn a_larger_datagram_or_one_after_a_shorter_starts_a_new_run() {
        let batch = [(500, 1), (1200, 1), (1200, 1), (900, 1), (900, 1)];
        let (_, runs) = planned(&batch);
        let shapes: Vec<(usize, usize)> = runs.iter().map(|r| (r.len(), r.segment)).collect();
        // The first 900 ends the 1200s' run as its shorter last segment.
        assert_eq!(shapes, vec![(1, 500), (3, 1200), (1, 900)]);
        // Each datagram once, in queue order for the one destination.
        let (order, _) = planned(&batch);
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn runs_stop_at_the_kernels_segment_and_byte_limits() {
        let many: Vec<(usize, u16)> = (0..150).map(|_| (100, 1)).collect();
        let (_, runs) = planned(&many);
        let lens: Vec<usize> = runs.iter().map(Run::len).collect();
        assert_eq!(lens, vec![64, 64, 22]);
        let big: Vec<(usize, u16)> = (0..60).map(|_| (1400, 1)).collect();
        let (_, runs) = planned(&big);
        assert!(runs.iter().all(|r| r.len() * 1400 <= MAX_GSO_BYTES));
        assert_eq!(runs.iter().map(Run::len).sum::<usize>(), 60);
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        assert_eq!(planned(&[]), (vec![], vec![]));
    }
}
