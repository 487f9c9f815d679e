//! Keep-alive throughput against a local web back end (`examples/hook_echo.rs`, run as a
//! separate process): verdicts per second and CPU per verdict with 10 000 and 100 000
//! synthetic streams, one REST call per stream (`StreamKeepAliveEvent`) against one call per
//! app per interval (`StreamKeepAliveBatchEvent`), side by side in one run.
//!
//! Run: `cargo bench --bench keepalive` (builds the example first).

mod support;

use std::time::{Duration, Instant};

use support::cpu_seconds;

use sluice::registry::NewStream;

const APPS: usize = 10;
const WINDOW: Duration = Duration::from_secs(6);

struct Row {
    streams: usize,
    mode: &'static str,
    verdicts_per_second: f64,
    server_us: f64,
    backend_us: f64,
    requests_per_second: f64,
    skipped: u64,
}

async fn run(
    backend: &str,
    backend_pid: u32,
    streams: usize,
    batched: bool,
    interval_ms: u64,
) -> Row {
    let method = if batched {
        "StreamKeepAliveBatchEvent"
    } else {
        "StreamKeepAliveEvent"
    };
    let dir = tempfile::tempdir().expect("dir");
    let mut apps = String::new();
    let mut keys = Vec::new();
    for a in 0..APPS {
        apps += &format!(
            "[apps.app{a}]\nurl = \"{backend}\"\n[apps.app{a}.methods.{method}]\nrestOnError = \"LOG\"\n"
        );
        keys.push(format!("app{a}"));
    }
    std::fs::write(dir.path().join("apps.toml"), apps).expect("apps");
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\nkeep_alive_streaming_sessions_enabled=false\n\
             streaming_sessions_keep_alive_interval={interval_ms}\nstreaming_sessions_keep_alive_app_keys={}\n\
             rest_hook_max_in_flight=256\nrest_hook_timeout=5000\n",
            keys.join(",")
        ),
    )
    .expect("properties");
    let server = sluice::start(sluice::ServerOptions {
        config_dir: Some(dir.path().to_path_buf()),
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        https_listen: None,
        ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
        wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
    })
    .await
    .expect("server");
    for i in 0..streams {
        let app = format!("app{}", i % APPS);
        server
            .registry
            .register_synthetic(NewStream::publisher(&format!("s{i}"), &app))
            .expect("stream");
    }
    let text = std::fs::read_to_string(dir.path().join("server.properties")).expect("read");
    std::fs::write(
        dir.path().join("server.properties"),
        text.replace(
            "keep_alive_streaming_sessions_enabled=false",
            "keep_alive_streaming_sessions_enabled=true",
        ),
    )
    .expect("enable");
    while !server
        .config
        .load()
        .settings
        .keep_alive_streaming_sessions_enabled
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One interval to warm up (connections, first batches), then the measured window.
    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    let stats =
        |keepalive: &std::collections::BTreeMap<&'static str, sluice::keepalive::VerdictCounts>| {
            let mut done = 0;
            let mut skipped = 0;
            for v in keepalive.values() {
                done += v.results.get("keep").copied().unwrap_or(0)
                    + v.results.get("failed").copied().unwrap_or(0);
                skipped += v.results.get("skipped").copied().unwrap_or(0);
            }
            (done, skipped)
        };
    let client = reqwest::Client::new();
    let base = backend.trim_end_matches("/api").to_string();
    let backend_count = || {
        let client = client.clone();
        let url = format!("{base}/count");
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("count")
                .text()
                .await
                .expect("text")
                .parse::<u64>()
                .expect("n")
        }
    };
    let keepalive = server.keepalive.clone();
    let (done0, skipped0) = stats(&keepalive.stats.snapshot());
    let requests0 = backend_count().await;
    let me = std::process::id();
    let (cpu0, backend_cpu0) = (cpu_seconds(me), cpu_seconds(backend_pid));
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = start.elapsed().as_secs_f64();
    let (done1, skipped1) = stats(&keepalive.stats.snapshot());
    let requests1 = backend_count().await;
    let (cpu1, backend_cpu1) = (cpu_seconds(me), cpu_seconds(backend_pid));
    let verdicts = (done1 - done0).max(1) as f64;
    server.shutdown().await;
    Row {
        streams,
        mode: if batched { "batched" } else { "per-stream" },
        verdicts_per_second: verdicts / elapsed,
        server_us: (cpu1 - cpu0) * 1e6 / verdicts,
        backend_us: (backend_cpu1 - backend_cpu0) * 1e6 / verdicts,
        requests_per_second: (requests1 - requests0) as f64 / elapsed,
        skipped: skipped1 - skipped0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let backend = support::HookEcho::start();
    let (url, pid) = (backend.url.clone(), backend.pid());
    let mut rows = Vec::new();
    // Per stream: the interval is what one back end process can answer; batched: the same
    // interval, so that the ratio compares equal work.
    for (streams, interval) in [(10_000, 2_000u64), (100_000, 10_000)] {
        rows.push(run(&url, pid, streams, false, interval).await);
        rows.push(run(&url, pid, streams, true, interval).await);
    }
    drop(backend);
    println!(
        "{:>8} {:<11} {:>12} {:>12} {:>14} {:>16} {:>9} {:>8}",
        "streams",
        "mode",
        "verdicts/s",
        "requests/s",
        "server µs/vdt",
        "back end µs/vdt",
        "skipped",
        "ratio"
    );
    for pair in rows.chunks(2) {
        let base = pair[0].server_us;
        for row in pair {
            support::result(
                &format!("keep-alive {} (server CPU/verdict)", row.mode),
                &format!("{} streams", row.streams),
                &format!("{:.2} µs", row.server_us),
                &format!("{base:.2} µs (per stream)"),
                row.server_us / base,
            );
            println!(
                "{:>8} {:<11} {:>12.0} {:>12.0} {:>14.2} {:>16.2} {:>9} {:>8.2}",
                row.streams,
                row.mode,
                row.verdicts_per_second,
                row.requests_per_second,
                row.server_us,
                row.backend_us,
                row.skipped,
                row.server_us / base,
            );
        }
    }
    println!("ratio: server CPU per verdict relative to per-stream at the same size");
}
