//! Stops that stick and say so, against a running server with real WebRTC clients: holds
//! after terminate and after keep-alive verdicts (Lua and REST), ordered exactly-once status
//! events (hook and SSE with `Last-Event-ID`), the hook circuit breaker against a real back
//! end that goes down and comes back, and the loopback-only REST API without tokens.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{InProcessServer, LOOPBACK, read_status_events, until};
use serde_json::{Value, json};
use sluice_client::{Client, ClientSession, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

/// A web back end on a loopback port: records every call, answers keep-alives with what the
/// test sets, and can be taken down (connections refused) and brought back on the same port.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    /// The keep-alive answer: status and body.
    keepalive: Arc<Mutex<(u16, Value)>>,
}

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    fn new() -> Self {
        let backend = Backend::default();
        *backend.keepalive.lock().unwrap() = (200, json!({}));
        backend
    }

    async fn serve(&self, addr: SocketAddr) -> Running {
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(backend_answer))
            .with_state(self.clone());
        // The port was ours a moment ago; a rebind may need a few tries.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Running { addr, stop, task }
    }

    fn calls(&self, method: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn answer_keepalive(&self, status: u16, body: Value) {
        *self.keepalive.lock().unwrap() = (status, body);
    }
}

impl Running {
    async fn down(self) -> SocketAddr {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.addr
    }
}

async fn backend_answer(
    State(backend): State<Backend>,
    Path(method): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    backend.calls.lock().unwrap().push((method.clone(), body));
    if method == "StreamKeepAliveEvent" {
        let (status, body) = backend.keepalive.lock().unwrap().clone();
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    Json(json!({})).into_response()
}

async fn server_with(properties: &str, apps: &str, plugins: &[(&str, &str)]) -> InProcessServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!("{LOOPBACK}{properties}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("apps.toml"), apps).unwrap();
    if !plugins.is_empty() {
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for (file, source) in plugins {
            std::fs::write(dir.path().join("plugins").join(file), source).unwrap();
        }
    }
    InProcessServer::start_in(dir).await
}

async fn publish(client: &Client, server: &InProcessServer, path: &str) -> ClientSession {
    client
        .publish(&server.url(path), SyntheticMedia::default())
        .await
        .unwrap_or_else(|e| panic!("publish {path}: {e}"))
}

/// A raw WHIP POST: status, `Retry-After`, JSON body.
async fn whip_raw(
    client: &Client,
    server: &InProcessServer,
    path: &str,
) -> (u16, Option<u64>, Value) {
    let response = server
        .http_client
        .post(server.url(path))
        .header("content-type", "application/sdp")
        .body(client.sample_offer().await.unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status == 201 {
        // Not meant to be kept: end it so the test leaves nothing behind.
        server.registry.find(|_| true).iter().for_each(|r| {
            server
                .registry
                .stop(r.media_session_id, sluice::registry::StopReason::ClientLeft);
        });
    }
    (status, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_with_hold_refuses_the_return_until_it_expires_and_says_so() {
    let server = server_with("", "[apps.defaultApp]\n", &[]).await;
    let client = Client::new().unwrap();
    let publisher = publish(&client, &server, "/whip/cam").await;
    let events_url = publisher.links.events.clone().unwrap();

    let started = Instant::now();
    let (status, answer) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"name": "cam", "reason": "maintenance", "holdMs": 1500}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let hold_id = answer["holdId"].as_u64().expect("a hold id");
    assert!(answer["heldUntil"].as_u64().is_some());

    // The encoder reconnects at once: refused, with why, until when and Retry-After.
    let (status, retry_after, body) = whip_raw(&client, &server, "/whip/cam").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(retry_after, Some(2), "1500 ms rounds up to 2 s");
    assert_eq!(body["reason"], "maintenance");
    assert_eq!(body["holdId"], hold_id);
    assert_eq!(body["hint"]["action"], "retry");
    assert!(body["hint"]["retryAfterMs"].as_u64().unwrap() <= 1500);
    // A player of the same name is held too (the filter was the name); another name is not.
    let (status, _, _) = whip_raw(&client, &server, "/whep/cam").await;
    assert_eq!(status, 403);
    let other = publish(&client, &server, "/whip/other").await;
    other.hang_up().await.unwrap();

    // The stopped publisher's final event tells it when to come back.
    let events = read_status_events(&server.http_client, &events_url, WAIT).await;
    let last = events.last().expect("the final event is still readable");
    assert_eq!(last["status"], "FAILED");
    assert_eq!(last["info"], "Stopped by server: maintenance");
    assert_eq!(last["hint"]["action"], "retry");

    let holds = server.get("/rest-api/stream/holds").await;
    assert_eq!(holds.as_array().unwrap().len(), 1, "{holds}");
    assert_eq!(holds[0]["filter"]["name"], "cam");
    assert!(holds[0]["remainingMs"].as_u64().unwrap() <= 1500);
    let audit = server.get("/rest-api/stream/terminations").await;
    assert_eq!(audit.as_array().unwrap().last().unwrap()["holdId"], hold_id);

    // After the hold, the same publish is accepted.
    assert!(
        until(WAIT, || server
            .registry
            .held("cam", true, "defaultApp")
            .is_none())
        .await,
        "the hold expires"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let back = publish(&client, &server, "/whip/cam").await;
    assert_eq!(
        server.get("/rest-api/stream/holds").await,
        json!([]),
        "expired holds are not listed"
    );
    back.hang_up().await.unwrap();
    assert!(until(WAIT, || server.registry.is_empty()).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_released_by_request_and_survive_a_config_reload() {
    let server = server_with("", "[apps.defaultApp]\n[apps.liveApp]\n", &[]).await;
    let client = Client::new().unwrap();
    let a = publish(&client, &server, "/whip/a").await;
    let b = publish(&client, &server, "/whip/b?app=liveApp").await;
    let id_of = |name: &str| server.registry.find_by_name(name)[0].media_session_id;
    let (status, answer) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"mediaSessionIds": [id_of("a"), id_of("b")], "holdMs": 600000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(until(WAIT, || server.registry.is_empty()).await);
    a.close().await;
    b.close().await;
    // An id filter holds what it stopped: those publishers, not their players, not other names.
    let holds = server.get("/rest-api/stream/holds").await;
    assert_eq!(holds[0]["filter"]["streams"].as_array().unwrap().len(), 2);
    assert_eq!(whip_raw(&client, &server, "/whip/a").await.0, 403);
    assert_eq!(
        whip_raw(&client, &server, "/whip/b?app=liveApp").await.0,
        403
    );
    assert_eq!(
        whip_raw(&client, &server, "/whip/b").await.0,
        201,
        "b in defaultApp is another stream"
    );

    // A reload (an edit of server.properties) leaves holds alone.
    let config = server.server.as_ref().unwrap().config.clone();
    let reloads = config.counts().0;
    std::fs::write(
        server.dir.path().join("server.properties"),
        format!("{LOOPBACK}node_id=edited\n"),
    )
    .unwrap();
    assert!(
        until(WAIT, || config.counts().0 > reloads).await,
        "reloaded"
    );
    assert_eq!(whip_raw(&client, &server, "/whip/a").await.0, 403);

    // Bad release bodies change nothing.
    for body in [
        json!({}),
        json!({"holdId": "x"}),
        json!({"nmae": "a"}),
        json!({"all": true, "name": "a"}),
    ] {
        let (status, answer) = server.post("/rest-api/stream/release", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, _) = server
        .post("/rest-api/stream/release", json!({"name": "nothing-held"}))
        .await;
    assert_eq!(status, 404);
    let (status, answer) = server
        .post("/rest-api/stream/release", json!({"name": "a"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["released"].as_array().unwrap().len(), 1);
    assert_eq!(whip_raw(&client, &server, "/whip/a").await.0, 201);
    assert!(until(WAIT, || server.registry.is_empty()).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_verdicts_can_hold_from_lua_and_from_a_web_server() {
    let backend = Backend::new();
    let running = backend.serve("127.0.0.1:0".parse().unwrap()).await;
    backend.answer_keepalive(403, json!({"reason": "quota used up", "holdMs": 60000}));
    let plugin = "local M = {}\nfunction M.on_keepalive(s)\n  if s.name == 'lua-held' then return 403, 'come back later', {hold_ms = 60000} end\n  return 200\nend\nreturn M\n";
    let apps = format!(
        "[apps.defaultApp]\nplugin = \"hold.lua\"\n[apps.hookApp]\nurl = \"http://{}/api\"\n[apps.hookApp.methods.StreamKeepAliveEvent]\n",
        running.addr
    );
    let server = server_with(
        "keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=200\nstreaming_sessions_keep_alive_app_keys=defaultApp,hookApp\n",
        &apps,
        &[("hold.lua", plugin)],
    )
    .await;
    let client = Client::new().unwrap();
    let by_lua = publish(&client, &server, "/whip/lua-held").await;
    let by_hook = publish(&client, &server, "/whip/hook-held?app=hookApp").await;
    assert!(
        until(WAIT, || server.registry.find_by_name("lua-held").is_empty()).await,
        "Lua's 403 stops it"
    );
    assert!(
        until(WAIT, || server
            .registry
            .find_by_name("hook-held")
            .is_empty())
        .await,
        "the hook's 403 stops it"
    );
    by_lua.close().await;
    by_hook.close().await;

    let (status, retry_after, body) = whip_raw(&client, &server, "/whip/lua-held").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("come back later"))
    );
    assert!(retry_after.unwrap() > 50, "{retry_after:?}");
    let (status, _, body) = whip_raw(&client, &server, "/whip/hook-held?app=hookApp").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("keep-alive: quota used up"))
    );
    let holds = server.get("/rest-api/stream/holds").await;
    let sources: Vec<&str> = holds
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["source"]["by"].as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 2, "{holds}");
    assert!(
        sources.contains(&"plugin") && sources.contains(&"hook"),
        "{sources:?}"
    );
    server.shutdown().await;
    running.down().await;
}

/// Checks one stream's events: `seq` 1, 2, … with no gap or repeat, `eventId` increasing,
/// exactly one final event and it is the last.
fn assert_ordered_exactly_once(id: &str, events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "{id}: seq in order, no gap, no repeat");
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["eventId"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{id}: eventId increases: {ids:?}"
    );
    let finals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            matches!(
                e["status"].as_str(),
                Some("FAILED" | "STOPPED" | "UNPUBLISHED")
            )
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        finals,
        vec![events.len() - 1],
        "{id}: one final event, last: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_arrive_in_order_exactly_once_under_concurrent_stops() {
    let backend = Backend::new();
    let running = backend.serve("127.0.0.1:0".parse().unwrap()).await;
    let apps = format!(
        "[apps.defaultApp]\nurl = \"http://{}/api\"\n[apps.defaultApp.methods.StreamStatusEvent]\n",
        running.addr
    );
    let server = server_with("", &apps, &[]).await;
    let client = Arc::new(Client::new().unwrap());
    const NAMES: usize = 4;
    const PLAYERS: usize = 3;
    const ROUNDS: usize = 2;
    let mut expected_streams = 0;
    for round in 0..ROUNDS {
        let mut publishers = Vec::new();
        for n in 0..NAMES {
            publishers.push(publish(&client, &server, &format!("/whip/s{n}")).await);
        }
        let mut players = Vec::new();
        for n in 0..NAMES {
            for _ in 0..PLAYERS {
                players.push(
                    client
                        .play(&server.url(&format!("/whep/s{n}")))
                        .await
                        .unwrap(),
                );
            }
        }
        expected_streams += NAMES * (1 + PLAYERS);
        // All at once: a terminate of every player of s0, players hanging up, publishers
        // stopping (cascading to their remaining players), and a terminate racing them.
        let terminate_players = server.post(
            "/rest-api/stream/terminate",
            json!({"name": "s0", "published": false, "reason": "race"}),
        );
        let hangups =
            futures::future::join_all(players.iter().skip(PLAYERS).step_by(2).map(|p| p.hang_up()));
        let publisher_stops =
            futures::future::join_all(publishers.iter().skip(2).map(|p| p.hang_up()));
        let terminate_publishers = server.post(
            "/rest-api/stream/terminate",
            json!({"appKey": "defaultApp", "published": true, "reason": "round over"}),
        );
        let _ = tokio::join!(
            terminate_players,
            hangups,
            publisher_stops,
            terminate_publishers
        );
        assert!(
            until(WAIT, || server.registry.is_empty()).await,
            "round {round}: every stream ends"
        );
        for p in players.iter().chain(&publishers) {
            p.close().await;
        }
    }
    // Every stream's events reached the web server in order, each end exactly once.
    assert!(
        until(WAIT, || {
            let calls = backend.calls("StreamStatusEvent");
            calls.iter().filter(|c| c["final"] == true).count() >= expected_streams
        })
        .await,
        "every final event is delivered"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = backend.calls("StreamStatusEvent");
    let mut by_stream: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for call in &calls {
        by_stream
            .entry(call["mediaSessionId"].as_str().unwrap().to_string())
            .or_default()
            .push(call.clone());
    }
    assert_eq!(by_stream.len(), expected_streams);
    for (id, events) in &by_stream {
        assert_ordered_exactly_once(id, events);
    }
    let ids: Vec<u64> = calls
        .iter()
        .map(|c| c["eventId"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "one app's events arrive in eventId order"
    );
    server.shutdown().await;
    running.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_with_last_event_id_and_misses_nothing() {
    let server = server_with("", "[apps.defaultApp]\n", &[]).await;
    let client = Client::new().unwrap();
    let publisher = publish(&client, &server, "/whip/cam").await;
    let player = client.play(&server.url("/whep/cam")).await.unwrap();
    let events_url = player.links.events.clone().unwrap();
    // Read the events so far, as a client would before its connection drops.
    let first =
        read_status_events(&server.http_client, &events_url, Duration::from_millis(300)).await;
    assert!(!first.is_empty());
    let seen = first.last().unwrap()["eventId"].as_u64().unwrap();
    // While it is away, the stream ends.
    let (status, _) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"name": "cam", "published": false, "reason": "gone"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(player.wait_ended(WAIT).await.is_some());
    // It comes back with Last-Event-ID: only what it missed, ending with the final event.
    let response = server
        .http_client
        .get(&events_url)
        .header("last-event-id", seen.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .unwrap()
        .unwrap();
    let missed: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(!missed.is_empty());
    assert!(
        missed.iter().all(|e| e["eventId"].as_u64().unwrap() > seen),
        "no repeats"
    );
    let mut all = first.clone();
    all.extend(missed.iter().cloned());
    assert_ordered_exactly_once("player", &all);
    assert_eq!(missed.last().unwrap()["info"], "Stopped by server: gone");
    assert_eq!(missed.last().unwrap()["hint"]["action"], "do-not-reconnect");
    // Resuming after the end gives nothing more; a bad Last-Event-ID is a 400.
    let last = missed.last().unwrap()["eventId"].as_u64().unwrap();
    let after_end = server
        .http_client
        .get(&events_url)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!after_end.contains("data:"), "{after_end}");
    let bad = server
        .http_client
        .get(&events_url)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    publisher.hang_up().await.unwrap();
    assert!(until(WAIT, || server.registry.is_empty()).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_failing_web_server_skips_it_and_closes_when_it_is_back() {
    let backend = Backend::new();
    let running = backend.serve("127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;
    let apps = format!(
        "[apps.defaultApp]\nurl = \"http://{addr}/api\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n"
    );
    let server = server_with(
        "keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=100\nrest_hook_timeout=300\nrest_hook_breaker_failures=3\nrest_hook_breaker_cooldown=1000\n",
        &apps,
        &[],
    )
    .await;
    let client = Client::new().unwrap();
    let publisher = publish(&client, &server, "/whip/cam").await;
    let breaker =
        || async { server.get("/rest-api/config").await["breakers"]["defaultApp"].clone() };
    let keepalives = || backend.calls("StreamKeepAliveEvent").len();
    assert!(until(WAIT, || keepalives() >= 2).await, "verdicts go out");
    assert_eq!(breaker().await["state"], "closed");

    // The back end answers 500: after three failures in a row the breaker opens, and no call
    // reaches the back end during the cool-down, while verdicts go on failing at once.
    backend.answer_keepalive(500, json!({}));
    let opened = Instant::now();
    let mut state = Value::Null;
    while opened.elapsed() < WAIT {
        state = breaker().await;
        if state["state"] == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state["state"], "open", "{state}");
    let calls_when_open = keepalives();
    let failed_before =
        server.get("/rest-api/keepalive").await["verdicts"]["hook"]["results"]["failed"]
            .as_u64()
            .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(keepalives(), calls_when_open, "no call while open");
    let failed_after =
        server.get("/rest-api/keepalive").await["verdicts"]["hook"]["results"]["failed"]
            .as_u64()
            .unwrap();
    assert!(
        failed_after >= failed_before + 3,
        "restOnError applied meanwhile: {failed_before} -> {failed_after}"
    );
    assert!(
        server.registry.len() == 1,
        "restOnError = LOG keeps the stream"
    );

    // Now the back end goes down for real (connections refused): probes fail, it stays open.
    let addr = running.down().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = breaker().await;
    assert_ne!(state["state"], "closed", "{state}");
    assert!(
        state["opens"].as_u64().unwrap() >= 2,
        "a failed probe opens it again: {state}"
    );

    // It comes back on the same port, answering: the next probe closes the breaker.
    backend.answer_keepalive(200, json!({}));
    let running = backend.serve(addr).await;
    let back = Instant::now();
    let mut closed = false;
    while back.elapsed() < WAIT {
        if breaker().await["state"] == "closed" {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "closes after the back end returns: {}",
        breaker().await
    );
    eprintln!(
        "breaker closed {:?} after the back end came back",
        back.elapsed()
    );
    let calls = keepalives();
    assert!(
        until(WAIT, || keepalives() > calls + 2).await,
        "verdicts flow again"
    );
    let hooks = server.get("/rest-api/keepalive").await;
    let circuit_open: u64 = hooks["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["errors"]["circuit_open"].as_u64())
        .sum();
    assert!(
        circuit_open > 0,
        "calls skipped while open are counted: {hooks}"
    );
    publisher.hang_up().await.unwrap();
    server.shutdown().await;
    running.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_rest_api_answers_only_on_loopback() {
    use tower::ServiceExt;
    let server = server_with("", "[apps.defaultApp]\n", &[]).await;
    let router = server.server.as_ref().unwrap().router.clone();
    let call = |peer: &str, path: &str, token: Option<&str>| {
        let mut request = axum::http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request.body(axum::body::Body::from("{}")).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    // A caller from another host, with no token configured: refused, and told why.
    let (status, body) = call("192.0.2.7:40000", "/rest-api/stream/find_all", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback"), "{body}");
    let (status, _) = call("[2001:db8::7]:40000", "/rest-api/config", None).await;
    assert_eq!(status, 403);
    // The same call from this host is served (404: no streams), and so is real loopback HTTP.
    assert_eq!(
        call("127.0.0.1:40000", "/rest-api/stream/find_all", None)
            .await
            .0,
        404
    );
    assert_eq!(call("[::1]:40000", "/rest-api/config", None).await.0, 200);
    let (status, _) = server.post("/rest-api/stream/find_all", json!({})).await;
    assert_eq!(status, 404);
    // WHIP/WHEP stay reachable from anywhere: only /rest-api/ is restricted.
    let (status, _) = call("192.0.2.7:40000", "/whep/nothing", None).await;
    assert_ne!(status, 403);
    // A token in the query string is refused even on loopback.
    let (status, body) = call("127.0.0.1:40000", "/rest-api/config?token=abc", None).await;
    assert_eq!(status, 400, "{body}");

    // With tokens set, another host with the right token is served; without, 401.
    std::fs::write(
        server.dir.path().join("server.properties"),
        format!("{LOOPBACK}rest_api_tokens=s3cret-token\n"),
    )
    .unwrap();
    let config = server.server.as_ref().unwrap().config.clone();
    assert!(until(WAIT, || !config.load().settings.rest_api_tokens.is_empty()).await);
    assert_eq!(
        call("192.0.2.7:40000", "/rest-api/config", Some("s3cret-token"))
            .await
            .0,
        200
    );
    assert_eq!(
        call("192.0.2.7:40000", "/rest-api/config", None).await.0,
        401
    );
    let (status, body) = call("192.0.2.7:40000", "/rest-api/config", Some("s3cret-token")).await;
    assert_eq!(status, 200);
    assert!(!body.contains("s3cret-token"), "tokens never in answers");
    server.shutdown().await;
}

/// Runs `openssl s_client` against `addr` with one protocol version; true when the
/// handshake completed.
fn handshake(addr: SocketAddr, version_flag: &str) -> bool {
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), version_flag])
        // Let the client offer old versions, so that only the server can refuse them.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_tls_1_2_and_1_3_only() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        panic!("openssl is needed for this test (.ci/run installs it)");
    }
    let server = server_with("", "[apps.defaultApp]\n", &[]).await;
    let addr = server.https.unwrap();
    let results = tokio::task::spawn_blocking(move || {
        ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"].map(|v| (v, handshake(addr, v)))
    })
    .await
    .unwrap();
    assert_eq!(
        results,
        [
            ("-tls1", false),
            ("-tls1_1", false),
            ("-tls1_2", true),
            ("-tls1_3", true)
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_until_admitted_lasts_until_the_admission_policy_says_yes() {
    let plugin = "local M = {}\nfunction M.on_publish(stream, request)\n  for _, name in ipairs(files.lines('allowed.txt')) do\n    if name == stream.name then return 200 end\n  end\n  return 403, 'not on the list'\nend\nreturn M\n";
    let server = server_with(
        "",
        "[apps.defaultApp]\nplugin = \"list.lua\"\n[apps.open]\n",
        &[("list.lua", plugin), ("allowed.txt", "cam\n")],
    )
    .await;
    let allowed = server.dir.path().join("plugins/allowed.txt");
    let client = Client::new().unwrap();
    let cam = publish(&client, &server, "/whip/cam").await;
    let (status, answer) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"name": "cam", "reason": "licence check", "holdMs": 600000, "holdUntilAdmitted": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(until(WAIT, || server.registry.is_empty()).await);
    cam.close().await;
    // Off the list: the policy refuses, and the hold stays.
    std::fs::write(&allowed, "someone-else\n").unwrap();
    let (status, _, body) = whip_raw(&client, &server, "/whip/cam").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("not on the list"))
    );
    assert_eq!(
        server
            .get("/rest-api/stream/holds")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Back on the list: admitted, and the hold is lifted.
    std::fs::write(&allowed, "cam\n").unwrap();
    let (status, _, body) = whip_raw(&client, &server, "/whip/cam").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.get("/rest-api/stream/holds").await, json!([]));
    assert!(until(WAIT, || server.registry.is_empty()).await);

    // In an app with no admission policy, such a hold is a plain hold.
    let open = publish(&client, &server, "/whip/free?app=open").await;
    let (status, _) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"appKey": "open", "holdMs": 600000, "holdUntilAdmitted": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(until(WAIT, || server.registry.is_empty()).await);
    open.close().await;
    let (status, retry_after, _) = whip_raw(&client, &server, "/whip/free?app=open").await;
    assert_eq!((status, retry_after.is_some()), (403, true));
    let (status, _) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"name": "x", "holdUntilAdmitted": true}),
        )
        .await;
    assert_eq!(status, 400, "holdUntilAdmitted needs holdMs");
    server.shutdown().await;
}
