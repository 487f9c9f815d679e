//! The central promise under races and impatient clients: a dropped hook call does not wedge
//! the circuit breaker, a hold racing concurrent offers admits none of them, a republish
//! racing WHEP requests leaves no player bound to a dead relay, limits answer `503`/`429`,
//! and a failed negotiation leaves no timer behind. Real WebRTC peers, real HTTP back ends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{InProcessServer, LOOPBACK, until};
use serde_json::{Value, json};
use sluice::hooks::{BreakerLimits, CallLimits, HookClient};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

/// A web back end: `publishStream`, `playStream` and the rest answer after `delay`, with the
/// status `status` for the first `failures` calls and 200 after; every call is counted.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicU64>,
    url: String,
}

async fn backend(failures: u64, delay_for_call: fn(u64) -> Duration) -> Backend {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay_for_call(n)).await;
                let status = if n <= failures { 500 } else { 200 };
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Backend { calls, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_caller_goes_away_does_not_wedge_the_breaker() {
    // Calls 1 and 2 fail (the breaker opens), call 3 (the probe) hangs, then all answer.
    let back = backend(2, |n| {
        if n == 3 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        }
    })
    .await;
    let client = HookClient::new();
    let limits = CallLimits {
        timeout: Duration::from_secs(10),
        breaker: BreakerLimits {
            failures: 2,
            cooldown: Duration::from_millis(200),
        },
    };
    let call = || client.call("app", &back.url, "publishStream", &Value::Null, limits);
    for _ in 0..2 {
        assert_eq!(call().await.unwrap().status, 500);
    }
    assert!(call().await.is_err(), "open: refused without a call");
    assert_eq!(back.calls.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The probe goes out, and its caller gives up (a WHIP client that hung up).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call())
            .await
            .is_err()
    );
    assert!(until(WAIT, || back.calls.load(Ordering::SeqCst) == 3).await);
    // The next call is a probe again and reaches the back end; its answer closes the breaker.
    let answer = call()
        .await
        .expect("a call after the dropped probe reaches the back end");
    assert_eq!(answer.status, 200);
    assert_eq!(back.calls.load(Ordering::SeqCst), 4);
    for _ in 0..3 {
        assert_eq!(call().await.unwrap().status, 200);
    }
    assert_eq!(back.calls.load(Ordering::SeqCst), 7);
}

/// A WHEP offer that a peer connection accepts, from a real client's offer turned around.
async fn recvonly_offer(client: &Client) -> String {
    client
        .sample_offer()
        .await
        .unwrap()
        .replace("a=sendonly", "a=recvonly")
}

async fn post_offer(http: &reqwest::Client, url: &str, sdp: &str) -> (u16, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A server whose web back end answers the admission hook `method` after 800 ms: offers are
/// past the handler's hold check and in admission when a hold comes.
async fn server_with_slow_admission(method: &str) -> (InProcessServer, Backend) {
    let back = backend(0, |_| Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!("{LOOPBACK}rest_hook_timeout=5000\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("apps.toml"),
        format!(
            "[apps.defaultApp]\nurl = \"{}\"\n[apps.defaultApp.methods.{method}]\n",
            back.url
        ),
    )
    .unwrap();
    (InProcessServer::start_in(dir).await, back)
}

/// Posts `offer` to `url` 50 times at once; once all 50 are in their admission hook (the
/// back end has seen `before + 50` calls), terminates with `terminate` (which asks for a
/// hold); then every one of the 50 must have been refused by that hold.
async fn fifty_offers_race_a_hold(
    server: &InProcessServer,
    back: &Backend,
    url: &str,
    offer: &str,
    terminate: Value,
) {
    let before = back.calls.load(Ordering::SeqCst);
    let mut offers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let http = server.http_client.clone();
        let (url, offer) = (server.url(url), offer.to_string());
        offers.spawn(async move { post_offer(&http, &url, &offer).await });
    }
    assert!(until(WAIT, || back.calls.load(Ordering::SeqCst) >= before + 50).await);
    let (status, answer) = server.post("/rest-api/stream/terminate", terminate).await;
    assert_eq!(status, 200, "{answer}");
    let hold_id = answer["holdId"].as_u64().expect("a hold");
    let mut refused = 0;
    while let Some(result) = offers.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, 403, "an offer admitted past the hold: {body}");
        assert_eq!(body["holdId"], hold_id, "{body}");
        refused += 1;
    }
    assert_eq!(refused, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_racing_fifty_plays_admits_none() {
    let (server, back) = server_with_slow_admission("playStream").await;
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/cam"), SyntheticMedia::default())
        .await
        .unwrap();
    let first = client.play(&server.url("/whep/cam")).await.unwrap();
    assert!(first.wait_packets(5, WAIT).await);
    let offer = recvonly_offer(&client).await;
    fifty_offers_race_a_hold(
        &server,
        &back,
        "/whep/cam",
        &offer,
        json!({"name": "cam", "published": false, "holdMs": 60000, "reason": "players out"}),
    )
    .await;
    let players: Vec<_> = server
        .registry
        .find_by_name("cam")
        .into_iter()
        .filter(|r| !r.published)
        .collect();
    assert!(players.is_empty(), "{players:?}");
    publisher.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_racing_fifty_publishes_of_the_held_name_admits_none() {
    let (server, back) = server_with_slow_admission("publishStream").await;
    let client = Client::new().unwrap();
    let other = client
        .publish(&server.url("/whip/other"), SyntheticMedia::default())
        .await
        .unwrap();
    let offer = client.sample_offer().await.unwrap();
    // Every publish to the app is held: the 50 publishes of "held" were already in their
    // admission hook when the hold came.
    fifty_offers_race_a_hold(
        &server,
        &back,
        "/whip/held",
        &offer,
        json!({"appKey": "defaultApp", "published": true, "holdMs": 60000, "reason": "publishing paused"}),
    )
    .await;
    assert!(server.registry.find_by_name("held").is_empty());
    other.close().await;
    server.shutdown().await;
}

fn session_id(resource: &str) -> uuid::Uuid {
    resource.rsplit('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_during_fifty_plays_leaves_every_player_refused_or_fed_by_the_live_publisher() {
    let server = InProcessServer::start("offer_rate_per_address=0\n").await;
    let client = Arc::new(Client::new().unwrap());
    let media = SyntheticMedia {
        video_bitrate_bps: 300_000,
        frames_per_second: 30,
        audio: false,
        ..SyntheticMedia::default()
    };
    let first = client
        .publish(&server.url("/whip/cam"), media)
        .await
        .unwrap();
    let warm = client.play(&server.url("/whep/cam")).await.unwrap();
    assert!(warm.wait_packets(5, WAIT).await);
    warm.hang_up().await.unwrap();
    let mut plays = tokio::task::JoinSet::new();
    for i in 0..50u64 {
        let client = client.clone();
        let url = server.url("/whep/cam");
        plays.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 4)).await;
            client.play(&url).await
        });
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    first.hang_up().await.unwrap();
    // Republish as soon as the name is free again (the first teardown takes a moment).
    let deadline = Instant::now() + WAIT;
    let second = loop {
        match client.publish(&server.url("/whip/cam"), media).await {
            Ok(session) => break session,
            Err(e) if e.status() == Some(409) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("republish: {e}"),
        }
    };
    let mut sessions = Vec::new();
    while let Some(result) = plays.join_next().await {
        match result.unwrap() {
            Ok(session) => sessions.push(session),
            Err(e) => assert!(
                matches!(e.status(), Some(404 | 409 | 503)),
                "a refusal says why: {e}"
            ),
        }
    }
    // Let the first publisher's end reach its players.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fed = 0;
    for session in &sessions {
        let id = session_id(&session.links.resource);
        if server.registry.get(id).is_none() {
            continue;
        }
        let before = session.counters.packets();
        assert!(
            session
                .wait_packets(before + 10, Duration::from_secs(5))
                .await
                || server.registry.get(id).is_none(),
            "player {id} is registered but gets no media: bound to a dead relay"
        );
        fed += 1;
    }
    eprintln!(
        "{} players admitted, {fed} fed by the second publisher",
        sessions.len()
    );
    for session in &sessions {
        session.close().await;
    }
    second.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_503_and_429_with_retry_after() {
    let server = InProcessServer::start("max_sessions=1\noffer_rate_per_address=3\n").await;
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/one"), SyntheticMedia::default())
        .await
        .unwrap();
    let offer = client.sample_offer().await.unwrap();
    let (status, body) = post_offer(&server.http_client, &server.url("/whip/two"), &offer).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the server is full"),
        "{body}"
    );
    // Bursts of twice the rate: 6 offers in all (the publish and the offer above were two),
    // then 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = server
            .http_client
            .post(server.url("/whip/two"))
            .header("content-type", "application/sdp")
            .body(offer.clone())
            .send()
            .await
            .unwrap();
        statuses.push((
            response.status().as_u16(),
            response.headers().get("retry-after").cloned(),
        ));
    }
    assert!(statuses[..4].iter().all(|(s, _)| *s == 503), "{statuses:?}");
    let (last, retry_after) = &statuses[4];
    assert_eq!(*last, 429, "{statuses:?}");
    assert!(retry_after.is_some());
    publisher.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_negotiation_leaves_no_timer_behind() {
    let server = InProcessServer::start("offer_rate_per_address=0\n").await;
    let client = Client::new().unwrap();
    let offer: String = client
        .sample_offer()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let tasks = || async {
        let runtime: Value = server.get("/rest-api/server/runtime").await;
        runtime["alive_tasks"]
            .as_u64()
            .or_else(|| runtime["aliveTasks"].as_u64())
            .unwrap()
    };
    let baseline = tasks().await;
    for _ in 0..20 {
        let (status, body) =
            post_offer(&server.http_client, &server.url("/whip/cam"), &offer).await;
        assert_eq!(status, 400, "{body}");
    }
    let started = Instant::now();
    let mut now = tasks().await;
    while now > baseline + 5 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = tasks().await;
    }
    assert!(
        now <= baseline + 5,
        "{now} tasks alive after 20 failed negotiations (baseline {baseline})"
    );
    assert!(server.registry.is_empty());
    server.shutdown().await;
}
