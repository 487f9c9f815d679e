//! Control-plane benchmark: find and terminate latency with 100 000 synthetic streams
//! registered, against the same calls with 100 streams measured side by side in the same
//! run (the baseline), both through the registry and through the REST API on loopback.
//!
//! Run: `cargo bench --bench control_plane` (prints a table; figures are medians).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::api::requests::{RequestKind, StreamRequest};
use sluice::registry::{NewStream, Registry};

const LARGE: usize = 100_000;
const SMALL: usize = 100;

/// Fills a registry: one publisher per 4 streams, three players each.
fn fill(registry: &Arc<Registry>, streams: usize) {
    for i in 0..streams / 4 {
        let name = format!("s{i}");
        let app = if i % 2 == 0 { "defaultApp" } else { "liveApp" };
        registry
            .register_synthetic(NewStream::publisher(&name, app))
            .expect("publisher");
        for _ in 0..3 {
            registry
                .register_synthetic(NewStream::player(&name, app))
                .expect("player");
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<F: FnMut()>(iterations: usize, mut f: F) -> Duration {
    let samples = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    median(samples)
}

async fn time_async<F, Fut>(iterations: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        f().await;
        samples.push(start.elapsed());
    }
    median(samples)
}

struct Row {
    name: &'static str,
    workload: String,
    figure: Duration,
    baseline: Duration,
}

fn filter(body: serde_json::Value) -> sluice::registry::StreamFilter {
    StreamRequest::parse(&body, RequestKind::Find)
        .expect("filter")
        .filter
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rows = Vec::new();

    // Registry only.
    let large = Registry::new("bench");
    let small = Registry::new("bench");
    let rss_before = support::rss_kib(std::process::id());
    let fill_start = Instant::now();
    fill(&large, LARGE);
    let fill_time = fill_start.elapsed();
    let bytes_per_stream = (support::rss_kib(std::process::id()).saturating_sub(rss_before) * 1024)
        as f64
        / LARGE as f64;
    // The reference: the stream as the REST API shows it, serialized.
    let json_bytes = large
        .find_by_name("s777")
        .first()
        .map(|r| serde_json::to_vec(r).map_or(0, |v| v.len()))
        .unwrap_or(1) as f64;
    println!(
        "memory: {bytes_per_stream:.0} bytes per idle synthetic stream (its JSON is {json_bytes:.0} bytes)"
    );
    support::result(
        "registry memory per idle stream (RSS growth)",
        &format!("{LARGE} synthetic streams"),
        &format!("{bytes_per_stream:.0} B"),
        &format!("{json_bytes:.0} B (its JSON)"),
        bytes_per_stream / json_bytes,
    );
    fill(&small, SMALL);
    let by_name = filter(json!({"name": "s777"}));
    let by_name_small = filter(json!({"name": "s7"}));
    rows.push(Row {
        name: "registry find by name",
        workload: format!("{LARGE} vs {SMALL} streams"),
        figure: time(2000, || assert_eq!(large.select(&by_name).len(), 4)),
        baseline: time(2000, || assert_eq!(small.select(&by_name_small).len(), 4)),
    });
    let by_id = large.find_by_name("s999")[0].media_session_id;
    let by_id_small = small.find_by_name("s9")[0].media_session_id;
    let id_filter = filter(json!({"mediaSessionId": by_id}));
    let id_filter_small = filter(json!({"mediaSessionId": by_id_small}));
    rows.push(Row {
        name: "registry find by id",
        workload: format!("{LARGE} vs {SMALL} streams"),
        figure: time(2000, || assert_eq!(large.select(&id_filter).len(), 1)),
        baseline: time(2000, || assert_eq!(small.select(&id_filter_small).len(), 1)),
    });
    let scan = filter(json!({"published": true, "appKey": "liveApp"}));
    rows.push(Row {
        name: "registry find by scan (published+appKey)",
        workload: format!("{LARGE} vs {SMALL} streams"),
        figure: time(20, || assert_eq!(large.select(&scan).len(), LARGE / 4 / 2)),
        baseline: time(20, || assert_eq!(small.select(&scan).len(), SMALL / 4 / 2)),
    });

    // Through the REST API of a running server on loopback.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("server.properties"),
        "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\nrest_api_https_port=0\n",
    )
    .expect("properties");
    let run = |streams: usize| {
        let dir = dir.path().to_path_buf();
        async move {
            let server = sluice::start(sluice::ServerOptions {
                config_dir: Some(dir),
                http_listen: Some("127.0.0.1:0".parse().expect("addr")),
                https_listen: None,
                ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
                wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
            })
            .await
            .expect("server");
            fill(&server.registry, streams);
            server
        }
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut rest = Vec::new();
    for streams in [LARGE, SMALL] {
        let server = run(streams).await;
        let base = format!("http://{}", server.http_addr.expect("http"));
        let find = time_async(500, || {
            let http = http.clone();
            let url = format!("{base}/rest-api/stream/find");
            async move {
                let r = http
                    .post(url)
                    .json(&json!({"name": "s7"}))
                    .send()
                    .await
                    .expect("find");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
            }
        })
        .await;
        // Terminate one publisher (and so its three players) by id, then put it back.
        let registry = server.registry.clone();
        let mut i = 0usize;
        let terminate = time_async(300, || {
            i += 1;
            let name = format!("s{}", i % (streams / 4));
            let id = registry
                .find_by_name(&name)
                .into_iter()
                .find(|r| r.published)
                .expect("publisher")
                .media_session_id;
            let http = http.clone();
            let url = format!("{base}/rest-api/stream/terminate");
            let registry = registry.clone();
            async move {
                let r = http
                    .post(url)
                    .json(&json!({"mediaSessionId": id, "reason": "bench"}))
                    .send()
                    .await
                    .expect("terminate");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
                let app = "defaultApp";
                registry
                    .register_synthetic(NewStream::publisher(&name, app))
                    .expect("re-add");
                for _ in 0..3 {
                    registry
                        .register_synthetic(NewStream::player(&name, app))
                        .expect("re-add");
                }
            }
        })
        .await;
        rest.push((find, terminate));
        server.shutdown().await;
    }
    rows.push(Row {
        name: "REST find by name",
        workload: format!("{LARGE} vs {SMALL} streams"),
        figure: rest[0].0,
        baseline: rest[1].0,
    });
    rows.push(Row {
        name: "REST terminate by id (+3 players, re-add)",
        workload: format!("{LARGE} vs {SMALL} streams"),
        figure: rest[0].1,
        baseline: rest[1].1,
    });

    println!("fill: {LARGE} synthetic streams registered in {fill_time:?}");
    println!(
        "{:<46} {:<24} {:>12} {:>12} {:>8}",
        "benchmark", "workload", "figure", "baseline", "ratio"
    );
    for row in rows {
        let ratio = row.figure.as_secs_f64() / row.baseline.as_secs_f64().max(1e-9);
        println!(
            "{:<46} {:<24} {:>12} {:>12} {:>8.2}",
            row.name,
            row.workload,
            format!("{:.1?}", row.figure),
            format!("{:.1?}", row.baseline),
            ratio
        );
        support::result(
            row.name,
            &row.workload,
            &format!("{:.1?}", row.figure),
            &format!("{:.1?}", row.baseline),
            ratio,
        );
    }
}
