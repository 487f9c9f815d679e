//! `GET /metrics`: the server's counters in the Prometheus/OpenMetrics text format, read at
//! scrape time from the parts that keep them (registry, relay, keep-alive, hooks, breakers,
//! plugins, config) by one `prometheus-client` collector, so nothing is counted twice and
//! no hot path pays for metrics it does not already keep.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::AppState;
use crate::hooks::Latency;

type Labels = Vec<(&'static str, String)>;

/// One metric family with its samples, encoded through `prometheus-client`.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Sample<'a>)>,
}

enum Sample<'a> {
    Counter(u64),
    Gauge(i64),
    Histogram(&'a Latency),
}

impl Family<'_> {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, sample) in &self.samples {
            encode_sample(metric.encode_family(labels)?, sample)?;
        }
        Ok(())
    }
}

fn encode_sample(mut encoder: MetricEncoder, sample: &Sample) -> Result<(), std::fmt::Error> {
    match sample {
        Sample::Counter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(v, None),
        Sample::Gauge(v) => encoder.encode_gauge(v),
        Sample::Histogram(latency) => latency.histogram.encode(encoder),
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn kind_of(published: bool) -> &'static str {
    if published { "publisher" } else { "player" }
}

/// Everything `/metrics` reads, gathered in one place.
struct Scrape {
    state: AppState,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Scrape {
    fn families(&self, latencies: &mut Vec<Latency>) -> Vec<FamilySpec> {
        let state = &self.state;
        let mut out = Vec::new();
        let counts = state.registry.lifecycle_counts();

        let census = state.registry.census();
        out.push(FamilySpec::gauge(
            "sluice_streams",
            "Live streams by app, kind and status.",
            census
                .iter()
                .map(|((app, published, status), n)| {
                    (
                        labels(&[
                            ("app", app),
                            ("kind", kind_of(*published)),
                            ("status", status.as_str()),
                        ]),
                        *n as i64,
                    )
                })
                .collect(),
        ));
        out.push(FamilySpec::counter(
            "sluice_streams_started",
            "Streams registered (publishes and plays admitted), by app and kind.",
            counts
                .started
                .iter()
                .map(|((app, published), n)| {
                    (labels(&[("app", app), ("kind", kind_of(*published))]), *n)
                })
                .collect(),
        ));
        out.push(FamilySpec::counter(
            "sluice_streams_stopped",
            "Streams ended, by app, kind and cause (client, server, publisher_stopped, connection_lost).",
            counts
                .ended
                .iter()
                .map(|((app, published, cause), n)| {
                    (labels(&[("app", app), ("kind", kind_of(*published)), ("cause", cause)]), *n)
                })
                .collect(),
        ));
        out.push(FamilySpec::counter(
            "sluice_terminations",
            "Termination requests by source (rest, keep_alive, server).",
            counts
                .terminations
                .iter()
                .map(|(source, (calls, _))| (labels(&[("source", source)]), *calls))
                .collect(),
        ));
        out.push(FamilySpec::counter(
            "sluice_terminated_streams",
            "Streams named by termination requests, by source.",
            counts
                .terminations
                .iter()
                .map(|(source, (_, streams))| (labels(&[("source", source)]), *streams))
                .collect(),
        ));
        let (ended_kept, holds) = state.registry.kept();
        out.push(FamilySpec::gauge(
            "sluice_holds",
            "Holds in force.",
            vec![(vec![], holds as i64)],
        ));
        out.push(FamilySpec::gauge(
            "sluice_ended_timelines",
            "Ended streams whose status events are kept for Last-Event-ID.",
            vec![(vec![], ended_kept as i64)],
        ));

        let relay = state.media.relays.totals();
        for (name, help, value) in [
            (
                "sluice_relay_received_packets",
                "RTP packets received from publishers.",
                relay.received_packets,
            ),
            (
                "sluice_relay_received_bytes",
                "RTP payload bytes received from publishers.",
                relay.received_bytes,
            ),
            (
                "sluice_relay_forwarded_packets",
                "RTP packets written to players.",
                relay.forwarded_packets,
            ),
            (
                "sluice_relay_forwarded_bytes",
                "RTP payload bytes written to players.",
                relay.forwarded_bytes,
            ),
            (
                "sluice_relay_dropped_packets",
                "RTP packets slow players skipped.",
                relay.dropped_packets,
            ),
            (
                "sluice_relay_lost_packets",
                "RTP packets publishers' sequence numbers say never arrived.",
                relay.lost_packets,
            ),
        ] {
            out.push(FamilySpec::counter(name, help, vec![(vec![], value)]));
        }
        out.push(FamilySpec::gauge(
            "sluice_relay_tracks",
            "Published tracks being relayed.",
            vec![(vec![], relay.live_tracks as i64)],
        ));

        let verdicts = state.keepalive.stats.snapshot();
        out.push(FamilySpec::counter(
            "sluice_keepalive_verdicts",
            "Keep-alive verdicts by source (plugin, hook, batch) and result (keep, stop, failed, skipped, abstain).",
            verdicts
                .iter()
                .flat_map(|(source, counts)| {
                    counts
                        .results
                        .iter()
                        .map(move |(result, n)| (labels(&[("source", source), ("result", result)]), *n))
                })
                .collect(),
        ));
        let mut verdict_latency = Vec::new();
        for (source, counts) in &verdicts {
            verdict_latency.push((labels(&[("source", source)]), latencies.len()));
            latencies.push(counts.latency.clone());
        }
        out.push(FamilySpec::histogram(
            "sluice_keepalive_verdict_seconds",
            "Time to a keep-alive verdict, by source (per stream for plugin and batch calls).",
            verdict_latency,
        ));

        let hooks = state.hooks.stats.snapshot();
        let mut calls = Vec::new();
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        let mut hook_latency = Vec::new();
        for ((app, method), counts) in &hooks {
            let base = [("app", app.as_str()), ("method", method.as_str())];
            calls.push((labels(&base), counts.calls));
            for (status, n) in &counts.statuses {
                let status = status.to_string();
                answers.push((labels(&[base[0], base[1], ("status", &status)]), *n));
            }
            for (kind, n) in &counts.errors {
                errors.push((labels(&[base[0], base[1], ("kind", kind)]), *n));
            }
            hook_latency.push((labels(&base), latencies.len()));
            latencies.push(counts.latency.clone());
        }
        out.push(FamilySpec::counter(
            "sluice_hook_calls",
            "REST hook calls made, by app and method.",
            calls,
        ));
        out.push(FamilySpec::counter(
            "sluice_hook_answers",
            "REST hook answers by app, method and HTTP status.",
            answers,
        ));
        out.push(FamilySpec::counter(
            "sluice_hook_errors",
            "REST hook calls without a usable answer, by app, method and kind (connect, timeout, status, garbage, too_large, saturated, circuit_open).",
            errors,
        ));
        out.push(FamilySpec::histogram(
            "sluice_hook_call_seconds",
            "REST hook call duration, by app and method.",
            hook_latency,
        ));

        let settings = &state.config.load().settings;
        let breakers = state.hooks.breakers.snapshot(
            crate::hooks::CallLimits::from(settings).breaker,
            std::time::Instant::now(),
        );
        let mut breaker_state = Vec::new();
        let mut opens = Vec::new();
        let mut refused = Vec::new();
        for (app, view) in &breakers {
            for state in [
                crate::hooks::BreakerState::Closed,
                crate::hooks::BreakerState::Open,
                crate::hooks::BreakerState::HalfOpen,
            ] {
                breaker_state.push((
                    labels(&[("app", app), ("state", state.as_str())]),
                    i64::from(view.state == state),
                ));
            }
            opens.push((labels(&[("app", app)]), view.opens));
            refused.push((labels(&[("app", app)]), view.refused));
        }
        out.push(FamilySpec::gauge(
            "sluice_hook_circuit_state",
            "Each app's web server circuit breaker: 1 for the state it is in.",
            breaker_state,
        ));
        out.push(FamilySpec::counter(
            "sluice_hook_circuit_opens",
            "Times an app's circuit opened.",
            opens,
        ));
        out.push(FamilySpec::counter(
            "sluice_hook_circuit_refused_calls",
            "Hook calls not made because the app's circuit was open.",
            refused,
        ));

        let (reloads, failures) = state.config.counts();
        out.push(FamilySpec::counter(
            "sluice_config_reloads",
            "Configuration reloads that took effect.",
            vec![(vec![], reloads)],
        ));
        out.push(FamilySpec::counter(
            "sluice_config_reload_failures",
            "Configuration edits refused (the config in force was kept).",
            vec![(vec![], failures)],
        ));
        let plugins = state.policy.status();
        let per_app = |f: fn(&crate::policy::PluginStatus) -> u64| {
            plugins
                .iter()
                .map(|p| (labels(&[("app", &p.app_key)]), f(p)))
                .collect::<Vec<_>>()
        };
        out.push(FamilySpec::counter(
            "sluice_plugin_loads",
            "Plugin versions loaded, by app.",
            per_app(|p| p.reloads),
        ));
        out.push(FamilySpec::counter(
            "sluice_plugin_load_failures",
            "Plugin files that failed to load (the running version was kept), by app.",
            per_app(|p| p.reload_failures),
        ));
        out.push(FamilySpec::counter(
            "sluice_plugin_calls",
            "Plugin entry point calls, by app.",
            per_app(|p| p.calls),
        ));
        out.push(FamilySpec::counter(
            "sluice_plugin_errors",
            "Plugin calls that failed, by app.",
            per_app(|p| p.errors),
        ));

        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0);
        out.push(FamilySpec::gauge(
            "sluice_open_fds",
            "Open file descriptors of the process.",
            vec![(vec![], fds as i64)],
        ));
        out.push(FamilySpec::gauge(
            "sluice_tasks",
            "Live tokio tasks.",
            vec![(
                vec![],
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks() as i64,
            )],
        ));
        out
    }
}

/// A family before its histogram samples are bound to the latencies they point at.
struct FamilySpec {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    values: Vec<(Labels, Value)>,
}

enum Value {
    Counter(u64),
    Gauge(i64),
    /// An index into the scrape's latencies.
    Histogram(usize),
}

impl FamilySpec {
    fn counter(name: &'static str, help: &'static str, values: Vec<(Labels, u64)>) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::Counter,
            values: values
                .into_iter()
                .map(|(l, v)| (l, Value::Counter(v)))
                .collect(),
        }
    }

    fn gauge(name: &'static str, help: &'static str, values: Vec<(Labels, i64)>) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::Gauge,
            values: values
                .into_iter()
                .map(|(l, v)| (l, Value::Gauge(v)))
                .collect(),
        }
    }

    fn histogram(name: &'static str, help: &'static str, values: Vec<(Labels, usize)>) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::Histogram,
            values: values
                .into_iter()
                .map(|(l, i)| (l, Value::Histogram(i)))
                .collect(),
        }
    }

    fn bind<'a>(self, latencies: &'a [Latency]) -> Option<Family<'a>> {
        let samples = self
            .values
            .into_iter()
            .map(|(labels, value)| {
                let sample = match value {
                    Value::Counter(v) => Sample::Counter(v),
                    Value::Gauge(v) => Sample::Gauge(v),
                    Value::Histogram(i) => Sample::Histogram(latencies.get(i)?),
                };
                Some((labels, sample))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Family {
            name: self.name,
            help: self.help,
            kind: self.kind,
            samples,
        })
    }
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut latencies = Vec::new();
        let specs = self.families(&mut latencies);
        for spec in specs {
            if let Some(family) = spec.bind(&latencies) {
                family.encode(&mut encoder)?;
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of every metric, as one scrape sees them.
pub fn render(state: &AppState) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape {
        state: state.clone(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The census scans the registry: off the async workers for large tables.
    let rendered = tokio::task::spawn_blocking({
        let state = state.clone();
        let handle = tokio::runtime::Handle::current();
        move || {
            let _guard = handle.enter();
            render(&state)
        }
    })
    .await;
    match rendered {
        Ok(Ok(text)) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        )
            .into_response(),
    }
}
