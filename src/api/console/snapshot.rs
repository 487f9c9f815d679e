//! One console snapshot, assembled from what the server already keeps (the registry, the
//! relay counters, keep-alive's last verdicts, hook statistics and breakers, plugin status,
//! the holds and the audit) and the process's own figures from `/proc`. Rates — bitrates,
//! CPU, keep-alive verdicts a second — are differences against the previous sample.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::AppState;
use crate::procstat::{CpuMeter, open_fds, rss_bytes};

/// Terminations a snapshot lists.
const RECENT_TERMINATIONS: usize = 20;
/// Samples a hook's recent latency and failures are taken over (ten seconds at one a second).
const RECENT_SAMPLES: usize = 10;

/// One app's hook counters at one sample: calls, failures, latency sum (s), latency count.
type HookSample = (u64, u64, f64, u64);

/// The previous sample, for rates.
#[derive(Default)]
pub struct Sampler {
    at: Option<Instant>,
    /// Per publisher: bytes received and forwarded.
    bytes: HashMap<Uuid, (u64, u64)>,
    cpu: CpuMeter,
    verdicts: BTreeMap<String, u64>,
    /// Per app, its hook counters at the last samples, oldest first.
    hooks: BTreeMap<String, std::collections::VecDeque<HookSample>>,
}

/// Bits a second from a byte counter's change over `seconds`.
fn bitrate(before: Option<u64>, now: u64, seconds: f64) -> u64 {
    match before {
        Some(before) if seconds > 0.0 => (now.saturating_sub(before) as f64 * 8.0 / seconds) as u64,
        _ => 0,
    }
}

impl Sampler {
    /// The snapshot; `cluster` is the cluster's node list (or why it is not known), when
    /// this node is in one.
    pub fn snapshot(&mut self, state: &AppState, cluster: Option<Value>) -> Value {
        let now = Instant::now();
        let seconds = self
            .at
            .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        self.at = Some(now);
        let now_ms = crate::registry::now_ms();
        let config = state.config.load();
        let settings = &config.settings;

        let mut records = state.registry.find(|_| true);
        // By name, each publisher before its players, oldest first.
        records.sort_by(|a, b| {
            (&a.name, !a.published, a.created_date).cmp(&(&b.name, !b.published, b.created_date))
        });
        let counts = state.media.publisher_counts();
        let live: std::collections::HashSet<Uuid> =
            records.iter().map(|r| r.media_session_id).collect();
        let verdicts = state.keepalive.last_verdicts(|id| live.contains(id));
        let holds = state.registry.holds();
        let interval_ms = settings.streaming_sessions_keep_alive_interval.as_millis() as u64;
        let keepalive_apps = &settings.streaming_sessions_keep_alive_app_keys;
        let keepalive_on = |app: &str| {
            settings.keep_alive_streaming_sessions_enabled
                && keepalive_apps.iter().any(|a| a == app)
        };

        let mut players: HashMap<&str, usize> = HashMap::new();
        for r in records.iter().filter(|r| !r.published) {
            *players.entry(r.name.as_str()).or_default() += 1;
        }
        let mut bytes = HashMap::new();
        let mut streams = Vec::with_capacity(records.len());
        let (mut total_in, mut total_out) = (0u64, 0u64);
        for record in &records {
            let id = record.media_session_id;
            let mut stream = json!({
                "mediaSessionId": id,
                "name": record.name,
                "appKey": record.app_key,
                "published": record.published,
                "status": record.status,
                "info": record.info,
                "createdDate": record.created_date,
                "remoteAddress": record.remote_address,
                "videoCodec": record.video_codec,
                "audioCodec": record.audio_codec,
                "held": holds.iter().any(|h| h.filter.matches(&record.name, record.published, &record.app_key)),
                "keepAliveOn": keepalive_on(&record.app_key),
            });
            if record.published {
                stream["players"] = json!(players.get(record.name.as_str()).copied().unwrap_or(0));
                if let Some(c) = counts.get(&id) {
                    let before = self.bytes.get(&id);
                    let bitrate_in = bitrate(before.map(|b| b.0), c.received_bytes, seconds);
                    let bitrate_out = bitrate(before.map(|b| b.1), c.forwarded_bytes, seconds);
                    total_in += bitrate_in;
                    total_out += bitrate_out;
                    stream["bitrateIn"] = json!(bitrate_in);
                    stream["bitrateOut"] = json!(bitrate_out);
                    stream["packetsIn"] = json!(c.received_packets);
                    stream["packetsLost"] = json!(c.lost_packets);
                    stream["packetsDropped"] = json!(c.dropped_packets);
                    bytes.insert(id, (c.received_bytes, c.forwarded_bytes));
                }
            }
            if let Some(verdict) = verdicts.get(&id) {
                stream["keepAlive"] = json!(verdict);
                stream["keepAliveNextDue"] = json!(verdict.at + interval_ms);
            }
            streams.push(stream);
        }
        self.bytes = bytes;

        let cpu_percent = self.cpu.percent();

        let apps = self.apps(state, &records, seconds);
        let mut terminations = state.registry.terminations();
        let keep_from = terminations.len().saturating_sub(RECENT_TERMINATIONS);
        let terminations: Vec<_> = terminations.drain(keep_from..).rev().collect();
        json!({
            "at": now_ms,
            "nodeId": state.registry.node_id(),
            "server": {
                "streams": records.len(),
                "publishers": records.iter().filter(|r| r.published).count(),
                "players": records.iter().filter(|r| !r.published).count(),
                "signallingConnections": state.connections.len(),
                "peerConnections": state.media.peer_count(),
                "bitrateIn": total_in,
                "bitrateOut": total_out,
                "cpuPercent": cpu_percent,
                "rssBytes": rss_bytes(),
                "openFds": open_fds(),
                "keepAliveIntervalMs": interval_ms,
            },
            "streams": streams,
            "cluster": cluster,
            "apps": apps,
            "holds": holds,
            "terminations": terminations,
        })
    }

    /// Every app in `apps.toml` or with a live stream: its hooks' health, plugin, verdicts.
    fn apps(
        &mut self,
        state: &AppState,
        records: &[crate::registry::StreamRecord],
        seconds: f64,
    ) -> Vec<Value> {
        let config = state.config.load();
        let breakers = state.hooks.breakers.snapshot(
            crate::hooks::CallLimits::from(&config.settings).breaker,
            Instant::now(),
        );
        let hooks = state.hooks.stats.snapshot();
        let plugins: HashMap<String, crate::policy::PluginStatus> = state
            .policy
            .status()
            .into_iter()
            .map(|p| (p.app_key.clone(), p))
            .collect();
        let verdict_totals = state.keepalive.verdicts_by_app();
        let mut names: std::collections::BTreeSet<String> =
            config.apps.apps.keys().cloned().collect();
        names.extend(records.iter().map(|r| r.app_key.clone()));
        let mut out = Vec::new();
        for app in names {
            let (mut calls, mut failures, mut latency_sum, mut latency_count) =
                (0u64, 0u64, 0.0, 0u64);
            for ((hook_app, _), counts) in &hooks {
                if *hook_app == app {
                    calls += counts.calls;
                    failures += counts.errors.values().sum::<u64>();
                    latency_sum += counts.latency.latency_seconds_sum;
                    latency_count += counts.latency.latency_count;
                }
            }
            // Recent figures: the change over the last samples, not since the start.
            let history = self.hooks.entry(app.clone()).or_default();
            history.push_back((calls, failures, latency_sum, latency_count));
            if history.len() > RECENT_SAMPLES + 1 {
                history.pop_front();
            }
            let (old_calls, old_failures, old_sum, old_count) =
                history.front().copied().unwrap_or_default();
            let recent_count = latency_count.saturating_sub(old_count);
            let recent_latency_ms = if recent_count > 0 {
                (latency_sum - old_sum).max(0.0) * 1000.0 / recent_count as f64
            } else {
                0.0
            };
            let recent_calls = calls.saturating_sub(old_calls);
            let recent_failures = failures.saturating_sub(old_failures);
            let total = verdict_totals.get(&app).copied().unwrap_or(0);
            let before = self.verdicts.insert(app.clone(), total);
            let rate = match before {
                Some(before) if seconds > 0.0 => total.saturating_sub(before) as f64 / seconds,
                _ => 0.0,
            };
            let plugin = plugins.get(&app).map(|p| {
                json!({
                    "file": p.file, "loaded": p.loaded, "version": p.version, "errors": p.errors,
                    "lastError": p.last_error, "lastErrorAt": p.last_error_at,
                })
            });
            out.push(json!({
                "appKey": app,
                "streams": records.iter().filter(|r| r.app_key == app).count(),
                "hooks": {
                    "calls": calls,
                    "failures": failures,
                    "meanLatencyMs": if latency_count > 0 { latency_sum * 1000.0 / latency_count as f64 } else { 0.0 },
                    "recentCalls": recent_calls,
                    "recentFailures": recent_failures,
                    "recentLatencyMs": recent_latency_ms,
                    "breaker": breakers.get(&app),
                },
                "plugin": plugin,
                "keepAlivePerSecond": (rate * 10.0).round() / 10.0,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_change_over_the_time() {
        assert_eq!(bitrate(None, 1000, 1.0), 0, "no previous sample");
        assert_eq!(bitrate(Some(1000), 126_000, 1.0), 1_000_000);
        assert_eq!(
            bitrate(Some(5000), 1000, 1.0),
            0,
            "a counter that restarted"
        );
    }
}
