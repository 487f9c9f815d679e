//! This process's own figures, read from `/proc/self`: CPU time, resident memory and open
//! descriptors. The console shows them for this node, and a cluster node puts them in its
//! entry so every console can show every node.

use std::time::Instant;

/// Clock ticks a second of `/proc/self/stat`'s CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// utime + stime of this process, in clock ticks.
pub fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory, in bytes (0 where `/proc` cannot say).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Open file descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// CPU use between two readings, as a percentage of one core.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    /// The CPU used since the previous call, rounded to a tenth (0 on the first call).
    pub fn percent(&mut self) -> f64 {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let percent = match (self.last, ticks) {
            (Some((at, before)), Some(ticks)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    ticks.saturating_sub(before) as f64 / USER_HZ / seconds * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = ticks.map(|t| (now, t));
        (percent * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_of_this_process_are_readable() {
        assert!(cpu_ticks().is_some());
        assert!(rss_bytes() > 0);
        assert!(open_fds() > 0);
        let mut meter = CpuMeter::default();
        assert_eq!(meter.percent(), 0.0, "no earlier reading");
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let busy = meter.percent();
        assert!(busy > 30.0, "300 ms of spinning read {busy} %");
    }
}
