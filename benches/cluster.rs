//! The cluster's cost: a cluster-wide terminate of every stream at 3 nodes × 10 000
//! synthetic streams (one process, three in-process nodes on a real `redis-server` on a
//! loopback port) against the same terminate on a single node of 10 000 and of 30 000
//! streams, side by side in one run; and the Redis commands the cluster sends per stream per
//! keep-alive interval (from `INFO stats`' `total_commands_processed`).
//!
//! The latency is request to answer: the answer comes back after every node has stopped its
//! streams (a synthetic stream is told by its registry stop, as a real one's BYE follows it).
//!
//! Run: `cargo bench --bench cluster`.

#[path = "../tests/common/redis.rs"]
mod redis;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use redis::Redis;
use support::{fill_synthetic as fill, in_process_server as node, result};

const PER_NODE: usize = 10_000;
const ROUNDS: usize = 5;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

fn commands_processed(redis: &Redis) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-u", &redis.url(), "INFO", "stats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed")
}

/// The median milliseconds of a terminate of every stream on `asker`, refilled each round.
async fn terminate_ms(
    asker: &sluice::RunningServer,
    nodes: &[&sluice::RunningServer],
    per_node: usize,
) -> f64 {
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/rest-api/stream/terminate",
        asker.http_addr.expect("http")
    );
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        for node in nodes {
            fill(node, per_node);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let began = Instant::now();
        let answer = http
            .post(&url)
            .json(&serde_json::json!({"appKey": "defaultApp", "reason": "bench"}))
            .send()
            .await
            .expect("terminate");
        assert_eq!(answer.status(), 200);
        let _ = answer.bytes().await;
        samples.push(began.elapsed().as_secs_f64() * 1e3);
        for node in nodes {
            assert!(node.registry.is_empty(), "every stream stopped");
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (single, _single_dir) = node("").await;
    let single_10k = terminate_ms(&single, &[&single], PER_NODE).await;
    let single_30k = terminate_ms(&single, &[&single], PER_NODE * 3).await;
    drop(single);

    let redis = Redis::start();
    let cluster = |id: &str| {
        format!(
            "node_id={id}\ncluster_redis_url={}\ncluster_node_ttl=5000\ncluster_answer_timeout=5000\n",
            redis.url()
        )
    };
    let (n1, _d1) = node(&cluster("n1")).await;
    let (n2, _d2) = node(&cluster("n2")).await;
    let (n3, _d3) = node(&cluster("n3")).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // every node in every view
    let nodes = [&n1, &n2, &n3];
    let cluster_30k = terminate_ms(&n1, &nodes, PER_NODE).await;

    // Redis commands with 3 × 10 000 streams live, over one keep-alive interval.
    for node in nodes {
        fill(node, PER_NODE);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = commands_processed(&redis);
    tokio::time::sleep(KEEPALIVE_INTERVAL).await;
    let commands = commands_processed(&redis) - before - 1; // less our own INFO
    let per_stream = commands as f64 / (PER_NODE * 3) as f64;

    println!("cluster terminate, median of {ROUNDS}:");
    println!("  single node, 10 000 streams: {single_10k:.1} ms");
    println!("  single node, 30 000 streams: {single_30k:.1} ms");
    println!("  3 nodes x 10 000 streams, asked on n1: {cluster_30k:.1} ms");
    result(
        "cluster_terminate",
        "3 nodes x 10 000 streams, terminate all",
        &format!("{cluster_30k:.1} ms"),
        &format!("single node 30 000: {single_30k:.1} ms"),
        cluster_30k / single_30k,
    );
    result(
        "cluster_terminate_vs_10k",
        "3 nodes x 10 000 streams, terminate all",
        &format!("{cluster_30k:.1} ms"),
        &format!("single node 10 000: {single_10k:.1} ms"),
        cluster_30k / single_10k,
    );
    println!(
        "redis: {commands} commands in one {KEEPALIVE_INTERVAL:?} keep-alive interval with 30 000 streams: {per_stream:.5} per stream per interval"
    );
}
