//! Load and soak on loopback, bounded in count and time. The CI run is short; set
//! `SLUICE_SOAK=1` for the long one (100 000 synthetic streams for a minute, 1 000 real
//! publish/play/terminate/resume cycles). Afterwards: no panics, no stream lost or leaked
//! (every stream is live or ended with a record of why), and file descriptors, tasks and
//! memory back to their baseline.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{InProcessServer, LOOPBACK, TestServer, until};
use serde_json::json;
use sluice::registry::{NewStream, StopReason};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(15);

/// The two soaks run one after the other: on two cores the synthetic one's load starved the
/// real one's media of CPU (a resumed player saw no packet within `WAIT` under the full suite).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long() -> bool {
    std::env::var_os("SLUICE_SOAK").is_some()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_streams_under_keepalive_and_concurrent_find_and_terminate() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (streams, seconds) = if long() { (100_000, 60) } else { (20_000, 4) };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "{LOOPBACK}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=1000\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("apps.toml"),
        "[apps.defaultApp]\nplugin = \"cull.lua\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    // Every stream whose name ends in 7 is stopped by its first verdict.
    std::fs::write(
        dir.path().join("plugins/cull.lua"),
        "local M = {}\nfunction M.on_keepalive(s)\n  if string.sub(s.name, -1) == '7' then return 403, 'culled' end\n  return 200\nend\nreturn M\n",
    )
    .unwrap();
    let server = Arc::new(InProcessServer::start_in(dir).await);
    let fds_before = open_fds();
    for i in 0..streams {
        server
            .registry
            .register_synthetic(NewStream::publisher(&format!("s{i}"), "defaultApp"))
            .unwrap();
    }

    // Concurrent clients: finds by name and terminates by id, for `seconds`.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let calls = Arc::new(AtomicU64::new(0));
    let terminated = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (server, calls, terminated) = (server.clone(), calls.clone(), terminated.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while Instant::now() < deadline {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (n >> 33) % streams as u64;
                let (status, answer) = server
                    .post("/rest-api/stream/find", json!({"name": format!("s{i}")}))
                    .await;
                assert!(status == 200 || status == 404, "find: {status} {answer}");
                if status == 200 && w % 2 == 0 {
                    let id = answer[0]["mediaSessionId"].clone();
                    let (status, answer) = server
                        .post(
                            "/rest-api/stream/terminate",
                            json!({"mediaSessionId": id, "reason": "soak"}),
                        )
                        .await;
                    assert!(
                        status == 200 || status == 404,
                        "terminate: {status} {answer}"
                    );
                    if status == 200 {
                        terminated
                            .lock()
                            .unwrap()
                            .insert(id.as_str().unwrap().to_string());
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("no panic in a client");
    }
    let calls = calls.load(Ordering::Relaxed);
    eprintln!("{streams} streams, {calls} find calls in {seconds} s");
    assert!(calls > 0);

    // Every stream is accounted for: live, or ended with a termination that names it.
    let culled_expected = (0..streams).filter(|i| i % 10 == 7).count();
    assert!(
        until(WAIT, || {
            server.registry.find(|r| r.name.ends_with('7')).is_empty()
        })
        .await,
        "the plugin culled every stream ending in 7 within its interval"
    );
    let live: HashSet<String> = server
        .registry
        .find(|_| true)
        .into_iter()
        .map(|r| r.media_session_id.to_string())
        .collect();
    let counts = server.registry.lifecycle_counts();
    let started: u64 = counts.started.values().sum();
    let ended: u64 = counts.ended.values().sum();
    assert_eq!(started as usize, streams);
    assert_eq!(live.len() as u64 + ended, started, "no stream lost");
    let by_rest = terminated.lock().unwrap().clone();
    assert!(
        by_rest.iter().all(|id| !live.contains(id)),
        "terminated streams are gone"
    );
    let keepalive_stops = counts.terminations.get("keep_alive").map_or(0, |c| c.1);
    assert!(
        keepalive_stops as usize >= culled_expected - by_rest.len().min(culled_expected),
        "{keepalive_stops} keep-alive stops for {culled_expected} culled"
    );
    let audit = server.registry.terminations();
    assert!(!audit.is_empty());
    // The server still answers, then everything goes and nothing is left.
    let (status, _) = server
        .post("/rest-api/stream/find", json!({"name": "s1"}))
        .await;
    assert!(status == 200 || status == 404);
    let ids: Vec<_> = server
        .registry
        .find(|_| true)
        .into_iter()
        .map(|r| r.media_session_id)
        .collect();
    for id in ids {
        server.registry.stop(id, StopReason::server("soak over"));
    }
    assert!(server.registry.is_empty());
    assert!(
        open_fds() <= fds_before + 8,
        "fds {fds_before} -> {}",
        open_fds()
    );
    match Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(_) => panic!("a worker still holds the server"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_publish_play_terminate_resume_cycles_leave_nothing_behind() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cycles = if long() { 1000 } else { 30 };
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let cycle = |i: usize| {
        let (server, client) = (&server, &client);
        async move {
            let name = format!("soak{}", i % 4);
            let publisher = client
                .publish(
                    &server.url(&format!("/whip/{name}")),
                    SyntheticMedia::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: publish: {e}"));
            let player = client
                .play(&server.url(&format!("/whep/{name}")))
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: play: {e}"));
            assert!(player.wait_packets(3, WAIT).await, "cycle {i}: no media");
            let response = server
                .http_client
                .post(server.url("/rest-api/stream/terminate"))
                .json(&json!({"name": name, "published": false, "reason": "soak"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "cycle {i}");
            assert!(
                player.wait_ended(WAIT).await.is_some(),
                "cycle {i}: player told"
            );
            player.close().await;
            // Resume: play again, then the publisher leaves and takes it down.
            let resumed = client
                .play(&server.url(&format!("/whep/{name}")))
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: resume: {e}"));
            assert!(
                resumed.wait_packets(3, WAIT).await,
                "cycle {i}: resumed media"
            );
            publisher.hang_up().await.unwrap();
            assert!(
                resumed.wait_ended(WAIT).await.is_some(),
                "cycle {i}: resumed player told"
            );
            resumed.close().await;
            assert!(
                server
                    .eventually(WAIT, || async { server.streams().await == 0 })
                    .await,
                "cycle {i}: streams left"
            );
        }
    };
    // Warm-up, then the baseline.
    cycle(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.runtime().await;
    let rss_before = rss_kib(server.pid());
    let started = Instant::now();
    for i in 1..=cycles {
        cycle(i).await;
    }
    let took = started.elapsed();
    let settled = server
        .eventually(WAIT, || async {
            let now = server.runtime().await;
            now["streams"] == 0
                && now["aliveTasks"].as_u64() <= baseline["aliveTasks"].as_u64()
                && now["openFds"].as_u64() <= baseline["openFds"].as_u64()
        })
        .await;
    let now = server.runtime().await;
    assert!(settled, "baseline {baseline}, after {cycles} cycles {now}");
    let rss_after = rss_kib(server.pid());
    eprintln!(
        "{cycles} cycles in {took:?} ({:?} each); RSS {rss_before} -> {rss_after} KiB",
        took / cycles as u32
    );
    // Allocator caches grow a little; a leak per cycle would grow with the count.
    let allowed = 16 * 1024 + cycles as u64 * 8;
    assert!(
        rss_after <= rss_before + allowed,
        "RSS grew {} KiB over {cycles} cycles (allowed {allowed})",
        rss_after.saturating_sub(rss_before)
    );
    let terminations = server
        .http_client
        .get(server.url("/rest-api/stream/terminations"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(terminations.as_array().unwrap().len() > cycles.min(999));
}
