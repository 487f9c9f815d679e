//! Reload latency: the time from a write of `server.properties` to the new value in force,
//! through the directory watcher, while 10 000 synthetic streams are live — against the
//! bare parse-validate-swap of the same file called directly (the baseline), side by side in
//! one run. Checks that no stream is dropped by a reload.
//!
//! Run: `cargo bench --bench reload`.

mod support;

use std::time::{Duration, Instant};

use sluice::registry::NewStream;

const STREAMS: usize = 10_000;
const ROUNDS: u64 = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn properties(interval: u64) -> String {
    format!(
        "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\nstreaming_sessions_keep_alive_interval={interval}\n"
    )
}

/// Writes the file the way editors do: a temporary file renamed over the old one.
fn save(dir: &std::path::Path, text: &str) {
    let temporary = dir.join(".server.properties.tmp");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, dir.join("server.properties")).expect("rename");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    save(dir.path(), &properties(10_000));
    let server = sluice::start(sluice::ServerOptions {
        config_dir: Some(dir.path().to_path_buf()),
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        https_listen: None,
        ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
        wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
    })
    .await
    .expect("server");
    for i in 0..STREAMS / 2 {
        let name = format!("s{i}");
        server
            .registry
            .register_synthetic(NewStream::publisher(&name, "defaultApp"))
            .expect("publisher");
        server
            .registry
            .register_synthetic(NewStream::player(&name, "defaultApp"))
            .expect("player");
    }
    let in_force = |interval: u64| {
        server
            .config
            .load()
            .settings
            .streaming_sessions_keep_alive_interval
            == Duration::from_millis(interval)
    };

    let mut watched = Vec::new();
    for round in 0..ROUNDS {
        let interval = 20_000 + round;
        let start = Instant::now();
        save(dir.path(), &properties(interval));
        while !in_force(interval) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: not reloaded"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        watched.push(start.elapsed());
        // Let the watcher settle so rounds do not merge into one debounce window.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    let mut direct = Vec::new();
    for round in 0..ROUNDS {
        let interval = 40_000 + round;
        save(dir.path(), &properties(interval));
        let start = Instant::now();
        // The watcher may have reloaded first; then this measures a check of an unchanged file.
        let _ = server.config.reload();
        assert!(in_force(interval) || start.elapsed() < Duration::from_secs(1));
        direct.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    watched.sort();
    direct.sort();
    assert_eq!(server.registry.len(), STREAMS, "a reload dropped streams");
    println!("reload latency with {STREAMS} live synthetic streams, {ROUNDS} rounds each");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "benchmark", "p50", "p99", "max"
    );
    let row = |name: &str, d: &[Duration]| {
        println!(
            "{:<44} {:>10} {:>10} {:>10}",
            name,
            format!("{:.2?}", percentile(d, 0.5)),
            format!("{:.2?}", percentile(d, 0.99)),
            format!("{:.2?}", d[d.len() - 1]),
        )
    };
    row("write -> in force, via the watcher", &watched);
    row("baseline: parse+validate+swap, called directly", &direct);
    println!(
        "ratio p50 watcher/direct: {:.1}",
        percentile(&watched, 0.5).as_secs_f64() / percentile(&direct, 0.5).as_secs_f64()
    );
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        support::result(
            &format!("reload write -> in force, {name}"),
            &format!("{STREAMS} live streams"),
            &format!("{:.2?}", percentile(&watched, q)),
            &format!("{:.2?} (direct)", percentile(&direct, q)),
            percentile(&watched, q).as_secs_f64() / percentile(&direct, q).as_secs_f64(),
        );
    }
    println!(
        "streams live after {} reloads: {}",
        2 * ROUNDS,
        server.registry.len()
    );
    server.shutdown().await;
}
