//! Several nodes as one server, on a real `redis-server` (Debian's) on a loopback port:
//! the cluster view, finds that answer for every node with each stream's `nodeId`, a node
//! killed with `kill -9` leaving the view within its TTL, and Redis stopped and restarted
//! mid-test — every node keeps serving its own streams, cluster requests say why they
//! cannot answer, and the view comes back by itself; terminates and holds across nodes,
//! and keep-alive verdicts and status events not duplicated by the cluster.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/redis.rs"]
mod redis;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Backend, final_infos, hooked_node, node, post, three_nodes, view, wait_nodes};
use common::TestServer;
use redis::Redis;
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_answer_for_every_node_and_a_killed_node_leaves_the_view() {
    let redis = Redis::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    let n3 = node(&redis, "n3");
    let view = wait_nodes(&n1, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    assert_eq!(view["nodeId"], "n1");
    assert!(
        view["nodes"][1]["httpUrl"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{view}"
    );

    let client = Client::new().unwrap();
    let _a = client
        .publish(&n2.url("/whip/a"), SyntheticMedia::default())
        .await
        .unwrap();
    let _b = client
        .publish(&n3.url("/whip/b"), SyntheticMedia::default())
        .await
        .unwrap();
    let b_player = client.play(&n3.url("/whep/b")).await.unwrap();
    assert!(b_player.wait_packets(10, Duration::from_secs(10)).await);

    // Any node answers for all, each stream with its real node.
    for asker in [&n1, &n2] {
        let (status, unanswered, streams) =
            post(asker, "/rest-api/stream/find_all", json!({})).await;
        assert_eq!(status, 200, "{streams}");
        assert_eq!(unanswered, None);
        let mut found: Vec<(String, String)> = streams
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().into(),
                    s["nodeId"].as_str().unwrap().into(),
                )
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("a".into(), "n2".into()),
                ("b".into(), "n3".into()),
                ("b".into(), "n3".into())
            ]
        );
    }
    let (status, _, streams) = post(
        &n1,
        "/rest-api/stream/find",
        json!({"name": "b", "published": false}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(streams.as_array().unwrap().len(), 1);
    let (status, _, _) = post(&n1, "/rest-api/stream/find", json!({"name": "nobody"})).await;
    assert_eq!(status, 404);
    let (status, _, error) = post(&n1, "/rest-api/stream/find", json!({"nmae": "b"})).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("unknown field 'nmae'")
    );

    // kill -9: n3 leaves the view within its TTL; its streams leave the answers.
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &n3.pid().to_string()])
        .status()
        .unwrap();
    wait_nodes(&n1, &["n1", "n2"], Duration::from_millis(1500 + 1500)).await;
    let gone = killed.elapsed();
    let (status, unanswered, streams) = post(&n1, "/rest-api/stream/find_all", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(unanswered, None, "a node out of the view is not waited for");
    assert_eq!(streams.as_array().unwrap().len(), 1, "{streams}");
    println!("a node killed with -9 left the view after {gone:?} (TTL 1.5 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_nodes_serve_their_own_streams_and_the_view_comes_back() {
    let redis = Redis::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    wait_nodes(&n1, &["n1", "n2"], Duration::from_secs(10)).await;
    let client = Client::new().unwrap();
    let _publisher = client
        .publish(&n1.url("/whip/local"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&n1.url("/whep/local")).await.unwrap();
    assert!(player.wait_packets(10, Duration::from_secs(10)).await);

    let port = redis.stop();
    // Cluster requests say why they cannot answer; nothing live is dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = view(&n1).await;
        if status == 503 {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "the view still answers {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
    let (status, _, body) = post(&n1, "/rest-api/stream/find_all", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not usable"),
        "{body}"
    );
    let before = player.counters.packets();
    assert!(
        player
            .wait_packets(before + 50, Duration::from_secs(5))
            .await,
        "media flows on"
    );
    let second = client
        .publish(&n1.url("/whip/while-down"), SyntheticMedia::default())
        .await;
    assert!(
        second.is_ok(),
        "a node publishes without Redis: {:?}",
        second.err()
    );
    assert_eq!(n1.streams().await, 3);

    // Redis back on the same port: the nodes list themselves again and finds work.
    let _redis = Redis::start_on(port);
    wait_nodes(&n1, &["n1", "n2"], Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, streams) = post(&n2, "/rest-api/stream/find_all", json!({})).await;
        if status == 200 && streams.as_array().is_some_and(|s| s.len() == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "finds did not come back: {status} {streams}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_on_one_node_stops_streams_on_the_others_each_told_why_and_is_recorded_once() {
    let redis = Redis::start();
    let [n1, n2, n3] = three_nodes(&redis).await;
    let client = Client::new().unwrap();
    let on_n2 = client
        .publish(&n2.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    let on_n3 = client
        .publish(&n3.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&n3.url("/whep/show")).await.unwrap();
    let bystander = client
        .publish(&n2.url("/whip/other"), SyntheticMedia::default())
        .await
        .unwrap();
    assert!(player.wait_packets(10, Duration::from_secs(10)).await);

    // A dry run lists what each node would stop, and stops nothing.
    let (status, _, dry) = post(
        &n1,
        "/rest-api/stream/terminate",
        json!({"name": "show", "dryRun": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["nodes"]["n2"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(dry["nodes"]["n3"].as_array().unwrap().len(), 2, "{dry}");
    assert!(dry.get("terminationId").is_none());
    assert_eq!(n3.streams().await, 2);

    // The terminate on n1 stops the streams on n2 and n3, each client told the reason.
    let infos = final_infos(&[&on_n2, &on_n3, &player]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, unanswered, answer) = post(
        &n1,
        "/rest-api/stream/terminate",
        json!({"name": "show", "reason": "maintenance"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(unanswered, None);
    assert_eq!(answer["mediaSessionIds"].as_array().unwrap().len(), 3);
    assert_eq!(answer["unansweredNodes"], json!([]));
    let termination = answer["terminationId"].as_u64().unwrap();
    for info in infos.await.unwrap() {
        assert_eq!(info, "Stopped by server: maintenance");
    }
    for ended in [&on_n2, &on_n3, &player] {
        assert!(
            ended.wait_ended(Duration::from_secs(5)).await.is_some(),
            "told by BYE"
        );
    }
    assert!(
        n2.streams().await == 1 && n3.streams().await == 0,
        "only the named streams"
    );
    assert!(
        bystander
            .wait_ended(Duration::from_millis(300))
            .await
            .is_none(),
        "the bystander stays"
    );
    // Recorded once, by the node that was asked.
    let records = |server: &TestServer| {
        let url = server.url("/rest-api/stream/terminations");
        let http = server.http_client.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let on_n1 = records(&n1).await;
    let last = on_n1.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], termination);
    assert_eq!(last["streams"].as_array().unwrap().len(), 3, "{last}");
    assert_eq!(last["reason"], "maintenance");
    for other in [&n2, &n3] {
        assert_eq!(records(other).await, json!([]), "not recorded again");
    }

    // A node that dies is named as not answering, and the rest still stop.
    let late = client
        .publish(&n2.url("/whip/late"), SyntheticMedia::default())
        .await
        .unwrap();
    Command::new("kill")
        .args(["-9", &n3.pid().to_string()])
        .status()
        .unwrap();
    let (status, unanswered, answer) =
        post(&n1, "/rest-api/stream/terminate", json!({"name": "late"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["unansweredNodes"], json!(["n3"]), "{answer}");
    assert_eq!(unanswered.as_deref(), Some("n3"));
    let (_, _, left) = post(&n2, "/rest-api/stream/find_all", json!({})).await;
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other"], "late stopped on n2");
    drop(late);
}

async fn holds(server: &TestServer) -> Vec<u64> {
    let response = server
        .http_client
        .get(server.url("/rest-api/stream/holds"))
        .send()
        .await
        .unwrap();
    let list: Value = response.json().await.unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|h| h["holdId"].as_u64().unwrap())
        .collect()
}

async fn wait_holds(server: &TestServer, expected: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = holds(server).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "holds {now:?}, waited for {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_status(client: &Client, server: &TestServer, name: &str) -> Option<u16> {
    match client
        .publish(
            &server.url(&format!("/whip/{name}")),
            SyntheticMedia::default(),
        )
        .await
    {
        Ok(_) => None,
        Err(e) => Some(e.status().unwrap_or(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_set_on_one_node_refuses_the_republish_on_every_node_and_outlives_its_asker() {
    let redis = Redis::start();
    let [n1, n2, n3] = three_nodes(&redis).await;
    let client = Client::new().unwrap();
    let encoder = client
        .publish(&n2.url("/whip/held"), SyntheticMedia::default())
        .await
        .unwrap();
    let viewer = client.play(&n2.url("/whep/held")).await.unwrap();
    assert!(viewer.wait_packets(10, Duration::from_secs(10)).await);

    let (status, _, answer) = post(
        &n1,
        "/rest-api/stream/terminate",
        json!({"name": "held", "reason": "abuse", "holdMs": 30000}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let hold = answer["holdId"].as_u64().expect("a hold id");
    assert!(encoder.wait_ended(Duration::from_secs(5)).await.is_some());
    // The encoder reconnects wherever it lands: refused on every node, the same hold listed.
    for server in [&n3, &n2, &n1] {
        assert_eq!(publish_status(&client, server, "held").await, Some(403));
        assert_eq!(holds(server).await, [hold]);
    }
    assert_eq!(
        publish_status(&client, &n3, "bystander").await,
        None,
        "only the held name"
    );

    // The asker dies; the hold stays in force, and a node that joins later takes it up.
    Command::new("kill")
        .args(["-9", &n1.pid().to_string()])
        .status()
        .unwrap();
    let n4 = node(&redis, "n4");
    wait_nodes(&n2, &["n2", "n3", "n4"], Duration::from_secs(10)).await;
    wait_holds(&n4, &[hold], Duration::from_secs(5)).await;
    assert_eq!(publish_status(&client, &n4, "held").await, Some(403));

    // Released on n3: lifted everywhere, and the encoder is back.
    let (status, _, released) =
        post(&n3, "/rest-api/stream/release", json!({"holdId": hold})).await;
    assert_eq!(status, 200, "{released}");
    for server in [&n2, &n3, &n4] {
        wait_holds(server, &[], Duration::from_secs(5)).await;
    }
    assert_eq!(publish_status(&client, &n4, "held").await, None);
    let (status, _, again) = post(&n2, "/rest-api/stream/release", json!({"holdId": hold})).await;
    assert_eq!(status, 404, "released once: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_verdicts_and_status_events_are_not_duplicated_by_the_cluster() {
    let backend = Backend::default();
    let (addr, serving) = backend.serve().await;
    let redis = Redis::start();
    const INTERVAL_MS: u64 = 400;
    let start = |id: &str| hooked_node(&redis, id, &addr, INTERVAL_MS);
    let n1 = start("n1");
    let n2 = start("n2");
    let n3 = start("n3");
    wait_nodes(&n1, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    let client = Client::new().unwrap();
    let on_n2 = client
        .publish(&n2.url("/whip/once"), SyntheticMedia::default())
        .await
        .unwrap();
    let on_n3 = client
        .publish(&n3.url("/whip/twice"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&n3.url("/whep/twice")).await.unwrap();
    assert!(player.wait_packets(10, Duration::from_secs(10)).await);
    // Counted over a window that starts now: the streams' set-up time is not in it.
    let before = backend.per_stream("StreamKeepAliveEvent");
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 8)).await;
    let elapsed = began.elapsed();
    let keepalives = backend.per_stream("StreamKeepAliveEvent");
    assert_eq!(keepalives.len(), 3, "every stream is asked: {keepalives:?}");
    // Asked once per interval by its own node, not once per node (three nodes would
    // triple it); the window edges and a catch-up after a stall allow a few more.
    let most = (elapsed.as_millis() as u64 / INTERVAL_MS + 3) as usize;
    for (id, total) in &keepalives {
        let count = &(total - before.get(id).copied().unwrap_or(0));
        assert!(
            (2..=most).contains(count),
            "{id}: {count} keep-alives in {elapsed:?}, at most {most}"
        );
    }

    // A cluster terminate on n1: each stream's end reaches the web server exactly once.
    let (status, _, answer) = post(
        &n1,
        "/rest-api/stream/terminate",
        json!({"appKey": "defaultApp", "reason": "done"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["mediaSessionIds"].as_array().unwrap().len(), 3);
    for ended in [&on_n2, &on_n3, &player] {
        assert!(ended.wait_ended(Duration::from_secs(5)).await.is_some());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.finals().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let finals = backend.finals();
    assert_eq!(finals.len(), 3, "{finals:?}");
    assert!(
        finals.values().all(|&n| n == 1),
        "one final each: {finals:?}"
    );
    serving.abort();
}
