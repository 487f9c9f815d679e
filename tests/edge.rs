//! Origin and edge on a real `redis-server` and three Sluice nodes: a WHEP play on a node
//! that does not have the stream makes that node pull it once from the node that publishes
//! it and fan it out to its own players (frames received); the origin's publisher stopping
//! ends the edge's players with `Stopped by publisher stop`; an edge's pull ends when its
//! last player leaves; and an edge relay is the cluster's plumbing, not a stream of its own.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/redis.rs"]
mod redis;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use cluster::{Backend, final_infos, hooked_node, post, three_nodes, wait_nodes};
use common::TestServer;
use redis::Redis;
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

/// The streams named `name` the cluster reports, as (nodeId, published, originNodeId).
async fn streams_of(asker: &TestServer, name: &str) -> Vec<(String, bool, Option<String>)> {
    let (status, unanswered, streams) =
        post(asker, "/rest-api/stream/find", json!({ "name": name })).await;
    assert_eq!(unanswered, None);
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{streams}");
    let mut found: Vec<_> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["nodeId"].as_str().unwrap().to_string(),
                s["published"].as_bool().unwrap(),
                s["originNodeId"].as_str().map(String::from),
            )
        })
        .collect();
    found.sort();
    found
}

/// Waits until `n`'s own registry holds `expected` streams.
async fn wait_streams(n: &TestServer, expected: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let live = n.streams().await;
        if live == expected || Instant::now() >= deadline {
            return live;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn edge(node: &str, origin: &str) -> (String, bool, Option<String>) {
    (node.into(), true, Some(origin.into()))
}

fn player(node: &str) -> (String, bool, Option<String>) {
    (node.into(), false, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_once_fans_out_and_its_players_end_with_the_origins_publisher() {
    let redis = Redis::start();
    let [n1, n2, n3] = three_nodes(&redis).await;
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&n1.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();

    // Two players on n2 and one on n3, of a stream only n1 has: media flows to all three.
    // The two on n2 ask at the same moment: they share one pull.
    let on_n2 = n2.url("/whep/show");
    let (first, second) = tokio::join!(client.play(&on_n2), client.play(&on_n2));
    let (first, second) = (first.unwrap(), second.unwrap());
    let third = client.play(&n3.url("/whep/show")).await.unwrap();
    for (i, p) in [&first, &second, &third].iter().enumerate() {
        assert!(
            p.wait_packets(100, Duration::from_secs(10)).await,
            "edge player {i} received {} packets",
            p.counters.packets()
        );
    }
    // Whole video frames (the marker bit ends each) and audio reach every edge player.
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in [&first, &second, &third] {
        while p.counters.video_frames.load(Relaxed) < 30 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            p.counters.video_frames.load(Relaxed) >= 30,
            "frames at an edge player"
        );
        assert!(
            p.counters.audio_packets.load(Relaxed) > 0,
            "audio at an edge player"
        );
    }
    // n1 serves one pull per edge node, not one per edge player.
    let mut expected = vec![
        ("n1".to_string(), true, None),
        player("n1"),
        player("n1"),
        edge("n2", "n1"),
        player("n2"),
        player("n2"),
        edge("n3", "n1"),
        player("n3"),
    ];
    expected.sort();
    assert_eq!(streams_of(&n2, "show").await, expected);
    let (_, _, on_n1) = post(
        &n1,
        "/rest-api/stream/find",
        json!({"name": "show", "published": false}),
    )
    .await;
    let pulls: Vec<&Value> = on_n1
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["nodeId"] == "n1")
        .collect();
    assert_eq!(pulls.len(), 2, "{on_n1}");

    // The third player leaves: n3's pull ends, on n3 and on n1, and nothing is left on n3.
    third.hang_up().await.unwrap();
    assert_eq!(wait_streams(&n3, 0, Duration::from_secs(5)).await, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while wait_streams(&n1, 2, Duration::ZERO).await != 2 {
        assert!(Instant::now() < deadline, "n3's pull still on n1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        streams_of(&n1, "show")
            .await
            .iter()
            .filter(|s| s.0 == "n1")
            .count(),
        2,
        "n1: the publisher and n2's pull"
    );

    // The origin's publisher stops: n2's players are told, by status event and RTCP BYE.
    let infos = final_infos(&[&first, &second]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = Instant::now();
    publisher.hang_up().await.unwrap();
    for p in [&first, &second] {
        assert!(
            p.wait_ended(Duration::from_secs(5)).await.is_some(),
            "an edge player is told by RTCP BYE"
        );
    }
    let told = stopped.elapsed();
    for info in infos.await.unwrap() {
        assert_eq!(info, "Stopped by publisher stop");
    }
    assert_eq!(wait_streams(&n2, 0, Duration::from_secs(5)).await, 0);
    assert_eq!(wait_streams(&n1, 0, Duration::from_secs(5)).await, 0);
    println!("edge players told of the origin publisher's stop after {told:?}");

    // Nothing published anywhere: a play on an edge node is a plain 404.
    let gone = client.play(&n2.url("/whep/show")).await.err().unwrap();
    assert_eq!(gone.status(), Some(404), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_relay_gets_no_keep_alives_or_status_hooks_of_its_own() {
    let backend = Backend::default();
    let (addr, serving) = backend.serve().await;
    let redis = Redis::start();
    const INTERVAL_MS: u64 = 400;
    let n1 = hooked_node(&redis, "n1", &addr, INTERVAL_MS);
    let n2 = hooked_node(&redis, "n2", &addr, INTERVAL_MS);
    wait_nodes(&n1, &["n1", "n2"], Duration::from_secs(10)).await;
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&n1.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    let viewer = client.play(&n2.url("/whep/show")).await.unwrap();
    assert!(viewer.wait_packets(50, Duration::from_secs(10)).await);
    let (_, _, streams) = post(&n2, "/rest-api/stream/find", json!({"name": "show"})).await;
    let ids = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let mut ids: Vec<String> = streams
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| keep(s))
            .map(|s| s["mediaSessionId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let edge_relay = ids(&|s| s.get("originNodeId").is_some());
    let streams_proper = ids(&|s| s.get("originNodeId").is_none());
    assert_eq!(edge_relay.len(), 1, "{streams}");
    assert_eq!(
        streams_proper.len(),
        3,
        "publisher, n2's pull, viewer: {streams}"
    );
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 6)).await;

    // Keep-alives: every stream proper, on its own node; never the edge relay.
    let keepalives = backend.per_stream("StreamKeepAliveEvent");
    assert_eq!(
        keepalives.keys().cloned().collect::<Vec<_>>(),
        streams_proper,
        "{keepalives:?}"
    );
    publisher.hang_up().await.unwrap();
    assert!(viewer.wait_ended(Duration::from_secs(5)).await.is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.finals().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Status events: one final for each stream proper, none of the relay's.
    let finals = backend.finals();
    assert_eq!(finals.keys().cloned().collect::<Vec<_>>(), streams_proper);
    assert!(finals.values().all(|&n| n == 1), "{finals:?}");
    let relay_events = backend
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body["mediaSessionId"] == edge_relay[0].as_str())
        .count();
    assert_eq!(relay_events, 0, "no hook call names the edge relay");
    serving.abort();
}

/// One edge pulls two streams from one origin at once: both pulls' datagrams come from the
/// origin's one media port to the edge's, and each must reach its own pull. Stream `a` sends
/// video only and `b` video and audio, so a crossed pull shows as audio at `a`'s player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_pulled_from_one_origin_each_reach_their_own_players() {
    let redis = Redis::start();
    let [n1, n2, _n3] = three_nodes(&redis).await;
    let client = Client::new().unwrap();
    let video_only = SyntheticMedia {
        audio: false,
        ..SyntheticMedia::default()
    };
    let _a = client
        .publish(&n1.url("/whip/a"), video_only)
        .await
        .unwrap();
    let _b = client
        .publish(&n1.url("/whip/b"), SyntheticMedia::default())
        .await
        .unwrap();
    let (url_a, url_b) = (n2.url("/whep/a"), n2.url("/whep/b"));
    let (on_a, on_b) = tokio::join!(client.play(&url_a), client.play(&url_b));
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    for (name, p) in [("a", &on_a), ("b", &on_b)] {
        assert!(
            p.wait_packets(100, Duration::from_secs(10)).await,
            "the player of '{name}' at the edge received {:?}",
            p.counters
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_b.counters.audio_packets.load(Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_b.counters.audio_packets.load(Relaxed) > 0, "b's audio");
    assert_eq!(
        on_a.counters.audio_packets.load(Relaxed),
        0,
        "audio at a's player"
    );
}
