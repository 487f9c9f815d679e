//! Keep-alive verdicts and REST hooks against a real web back end: an HTTP server started by
//! the test on a loopback port that answers 200, 403 for chosen names, 500, late, never, or
//! with a body too large; plus a port that refuses connections and one that answers garbage.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{InProcessServer, LOOPBACK, read_status_events, until};
use serde_json::{Value, json};
use sluice::registry::{NewStream, Registry};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

/// How the back end answers for a stream name.
#[derive(Clone, Debug)]
enum Answer {
    Ok,
    Forbid(&'static str),
    /// 403 for players, 200 for the publisher.
    ForbidPlayers(&'static str),
    Error500,
    Late(Duration),
    Never,
    Huge,
}

#[derive(Default)]
struct Backend {
    /// By stream name; names not listed get `Answer::Ok`. Key "*" applies to every name.
    answers: HashMap<String, Answer>,
    /// Every request: (method, body).
    seen: Vec<(String, Value)>,
}

#[derive(Clone, Default)]
struct HookServer {
    state: Arc<Mutex<Backend>>,
}

impl HookServer {
    async fn start() -> (HookServer, String) {
        let server = HookServer::default();
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(answer))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, url)
    }

    fn set(&self, name: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(name.to_string(), answer);
    }

    fn seen(&self, method: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .seen
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn answer(
    State(server): State<HookServer>,
    Path(method): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let answer_for = |name: &str| {
        let state = server.state.lock().unwrap();
        state
            .answers
            .get(name)
            .or_else(|| state.answers.get("*"))
            .cloned()
            .unwrap_or(Answer::Ok)
    };
    server
        .state
        .lock()
        .unwrap()
        .seen
        .push((method.clone(), body.clone()));
    if method == "StreamKeepAliveBatchEvent" {
        let stop: Vec<Value> = body["streams"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| match answer_for(s["name"].as_str().unwrap()) {
                Answer::Forbid(reason) => {
                    Some(json!({"mediaSessionId": s["mediaSessionId"], "reason": reason}))
                }
                _ => None,
            })
            .collect();
        return Json(json!({ "stop": stop })).into_response();
    }
    let name = body["name"].as_str().unwrap_or("").to_string();
    // The model's example script: players of "players-only" are refused, publishers kept.
    if name == "players-only" && body["published"] == false && method == "StreamKeepAliveEvent" {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": "viewing is over"})),
        )
            .into_response();
    }
    match answer_for(&name) {
        Answer::Ok => Json(json!({"custom": {"tier": "gold"}})).into_response(),
        Answer::Forbid(reason) => (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": reason, "internal": "do not show"})),
        )
            .into_response(),
        Answer::ForbidPlayers(reason) if body["published"] == false => {
            (StatusCode::FORBIDDEN, Json(json!({"reason": reason}))).into_response()
        }
        Answer::ForbidPlayers(_) => Json(json!({})).into_response(),
        Answer::Error500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Answer::Late(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Answer::Never => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::Huge => "x".repeat(10 * 1024 * 1024).into_response(),
    }
}

/// A port that accepts and answers raw garbage (not HTTP).
async fn garbage_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n").await;
            });
        }
    });
    format!("http://{addr}/api")
}

/// A loopback address where nothing listens.
fn refusing_url() -> String {
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!("http://{addr}/api")
}

async fn server(interval_ms: u64, extra: &str, apps: &str) -> InProcessServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "{LOOPBACK}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval={interval_ms}\nrest_hook_timeout=300\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("apps.toml"), apps).unwrap();
    InProcessServer::start_in(dir).await
}

fn add(registry: &Arc<Registry>, name: &str, app: &str, players: usize) -> Vec<uuid::Uuid> {
    let mut ids = vec![
        registry
            .register_synthetic(NewStream::publisher(name, app))
            .unwrap()
            .media_session_id,
    ];
    for _ in 0..players {
        ids.push(
            registry
                .register_synthetic(NewStream::player(name, app))
                .unwrap()
                .media_session_id,
        );
    }
    ids
}

/// The keep-alive calls the back end got for one stream, from the `from`-th call on.
fn keepalives_of(backend: &HookServer, id: uuid::Uuid, from: usize) -> usize {
    let id = id.to_string();
    backend.seen("StreamKeepAliveEvent")[from..]
        .iter()
        .filter(|b| b["mediaSessionId"] == id.as_str())
        .count()
}

/// The bounds of the count of verdicts one stream gets in `elapsed` when it is asked once
/// per `interval`: the whole intervals in it, give or take the one a window edge cuts.
fn verdicts_in(elapsed: Duration, interval: u64) -> std::ops::RangeInclusive<usize> {
    let intervals = elapsed.as_millis() as f64 / interval as f64;
    (intervals.floor() as usize).saturating_sub(1)..=intervals.ceil() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_stops_the_chosen_streams_within_one_interval() {
    let (backend, url) = HookServer::start().await;
    let interval = 500;
    let apps = format!(
        "[apps.defaultApp]\nurl = \"{url}\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\nrestPolicy = \"OVERWRITE\"\nrestOverwrite = \"custom\"\n"
    );
    let server = server(interval, "", &apps).await;
    let r = server.registry.clone();
    let good = add(&r, "good", "defaultApp", 2);
    let bad = add(&r, "bad", "defaultApp", 2);
    // Verdicts flow: every stream is asked within one interval.
    assert!(until(WAIT, || backend.seen("StreamKeepAliveEvent").len() >= 12).await);
    let first = &backend.seen("StreamKeepAliveEvent")[0];
    for field in [
        "nodeId",
        "appKey",
        "sessionId",
        "mediaSessionId",
        "name",
        "published",
        "status",
        "info",
        "custom",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    // OVERWRITE: the web server's custom map is applied.
    assert_eq!(
        r.get(good[0])
            .unwrap()
            .custom
            .get("tier")
            .map(String::as_str),
        Some("gold")
    );

    backend.set("bad", Answer::Forbid("banned"));
    let changed = Instant::now();
    // Every call from here on is answered 403.
    let from = backend.seen("StreamKeepAliveEvent").len();
    assert!(until(WAIT, || bad.iter().all(|id| r.get(*id).is_none())).await);
    let took = changed.elapsed();
    eprintln!("403 took effect in {took:?} (interval {interval} ms)");
    assert!(
        took <= Duration::from_millis(interval + 100),
        "took {took:?}"
    );
    // Whatever the timing: each stream went at the first 403 it got, not a later one.
    for id in &bad {
        assert!(
            keepalives_of(&backend, *id, from) <= 1,
            "{id} was asked {} times after the change",
            keepalives_of(&backend, *id, from)
        );
    }
    assert!(
        good.iter().all(|id| r.get(*id).is_some()),
        "the others keep going"
    );
    let records = r.terminations();
    let record = records
        .iter()
        .find(|t| t.streams.iter().any(|s| s.media_session_id == bad[0]))
        .unwrap();
    assert_eq!(record.reason, "keep-alive: banned");
    let source = serde_json::to_value(&record.source).unwrap();
    assert_eq!(
        source,
        json!({"kind": "keepAlive", "appKey": "defaultApp", "by": "hook", "method": "StreamKeepAliveEvent"})
    );

    // The switch applies live: off, and no more verdicts go out.
    std::fs::write(
        server.dir.path().join("server.properties"),
        format!("{LOOPBACK}keep_alive_streaming_sessions_enabled=false\nstreaming_sessions_keep_alive_interval={interval}\n"),
    )
    .unwrap();
    assert!(
        until(WAIT, || !server.registry.is_empty()
            && !server_enabled(&server))
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = backend.seen("StreamKeepAliveEvent").len();
    tokio::time::sleep(Duration::from_millis(2 * interval)).await;
    assert_eq!(
        backend.seen("StreamKeepAliveEvent").len(),
        before,
        "switched off live"
    );
    server.shutdown().await;
}

fn server_enabled(server: &InProcessServer) -> bool {
    server
        .server
        .as_ref()
        .unwrap()
        .config
        .load()
        .settings
        .keep_alive_streaming_sessions_enabled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_players_only_keeps_the_publisher_as_the_model_script_does() {
    let (backend, url) = HookServer::start().await;
    let apps = format!(
        "[apps.defaultApp]\nurl = \"{url}\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\n"
    );
    let server = server(300, "", &apps).await;
    let r = server.registry.clone();
    let ids = add(&r, "players-only", "defaultApp", 3);
    assert!(until(WAIT, || ids[1..].iter().all(|id| r.get(*id).is_none())).await);
    // The publisher is asked again, twice, after its players went.
    let from = backend.seen("StreamKeepAliveEvent").len();
    assert!(
        until(WAIT, || keepalives_of(&backend, ids[0], from) >= 2).await,
        "the publisher's verdicts go on"
    );
    assert!(r.get(ids[0]).is_some(), "the publisher is kept");
    server.shutdown().await;
}

/// Each failing back end with each `restOnError`: LOG keeps streams, FAIL stops them after
/// `keep_alive_failures_to_stop` failures in a row; a healthy app's verdicts are not delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_back_ends_follow_rest_on_error_and_do_not_delay_other_apps() {
    let (backend, url) = HookServer::start().await;
    let (healthy, healthy_url) = HookServer::start().await;
    backend.set("late", Answer::Late(Duration::from_secs(2)));
    backend.set("never", Answer::Never);
    backend.set("e500", Answer::Error500);
    backend.set("huge", Answer::Huge);
    let garbage = garbage_server().await;
    let refused = refusing_url();
    let mut apps = format!(
        "[apps.healthy]\nurl = \"{healthy_url}\"\n[apps.healthy.methods.StreamKeepAliveEvent]\n"
    );
    for policy in ["LOG", "FAIL"] {
        for (app, app_url) in [("slow", &url), ("garbage", &garbage), ("refused", &refused)] {
            apps += &format!(
                "[apps.{app}{policy}]\nurl = \"{app_url}\"\n[apps.{app}{policy}.methods.StreamKeepAliveEvent]\nrestOnError = \"{policy}\"\n"
            );
        }
    }
    let keys = "healthy,slowLOG,garbageLOG,refusedLOG,slowFAIL,garbageFAIL,refusedFAIL";
    let server = server(
        400,
        &format!("streaming_sessions_keep_alive_app_keys={keys}\nkeep_alive_failures_to_stop=2\n"),
        &apps,
    )
    .await;
    let r = server.registry.clone();
    let mut by_app: BTreeMap<String, Vec<uuid::Uuid>> = BTreeMap::new();
    for policy in ["LOG", "FAIL"] {
        for name in ["late", "never", "e500", "huge"] {
            by_app
                .entry(format!("slow{policy}"))
                .or_default()
                .extend(add(
                    &r,
                    &format!("{name}{policy}"),
                    &format!("slow{policy}"),
                    1,
                ));
        }
        for app in ["garbage", "refused"] {
            by_app
                .entry(format!("{app}{policy}"))
                .or_default()
                .extend(add(
                    &r,
                    &format!("{app}-stream{policy}"),
                    &format!("{app}{policy}"),
                    1,
                ));
        }
    }
    let _ = by_app.insert("healthy".into(), add(&r, "fine", "healthy", 4));
    // The names answer per the backend: late/never time out (300 ms), e500, huge (10 MB).
    for (name, a) in [
        ("lateLOG", Answer::Late(Duration::from_secs(2))),
        ("neverLOG", Answer::Never),
        ("e500LOG", Answer::Error500),
        ("hugeLOG", Answer::Huge),
    ] {
        backend.set(name, a);
    }
    for (name, a) in [
        ("lateFAIL", Answer::Late(Duration::from_secs(2))),
        ("neverFAIL", Answer::Never),
        ("e500FAIL", Answer::Error500),
        ("hugeFAIL", Answer::Huge),
    ] {
        backend.set(name, a);
    }
    // FAIL streams go after two failed verdicts (about two intervals plus the timeout).
    let fail_ids: Vec<_> = by_app
        .iter()
        .filter(|(k, _)| k.ends_with("FAIL"))
        .flat_map(|(_, v)| v.clone())
        .collect();
    let started = Instant::now();
    assert!(
        until(WAIT, || fail_ids.iter().all(|id| r.get(*id).is_none())).await,
        "FAIL streams still live: {:?}",
        fail_ids.iter().filter(|id| r.get(**id).is_some()).count()
    );
    eprintln!("FAIL streams stopped after {:?}", started.elapsed());
    let log_ids: Vec<_> = by_app
        .iter()
        .filter(|(k, _)| k.ends_with("LOG"))
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert!(
        log_ids.iter().all(|id| r.get(*id).is_some()),
        "LOG streams survive"
    );
    assert!(by_app["healthy"].iter().all(|id| r.get(*id).is_some()));
    let reasons: BTreeSet<String> = r
        .terminations()
        .iter()
        .filter(|t| t.reason.starts_with("keep-alive failed 2 times in a row"))
        .flat_map(|t| t.streams.iter().map(|s| s.name.clone()))
        .collect();
    assert_eq!(reasons.len(), fail_ids.len() / 2, "{reasons:?}");

    // Meanwhile the healthy app got its verdicts on time: about one per stream per interval,
    // counted over the time that really passed (a loaded machine may sleep longer), while the
    // LOG apps' back ends went on failing.
    let failed = |view: &Value| {
        view["verdicts"]["hook"]["results"]["failed"]
            .as_u64()
            .unwrap()
    };
    let failed_before = failed(&server.get("/rest-api/keepalive").await);
    let healthy_start = healthy.seen("StreamKeepAliveEvent").len();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_millis(5 * 400)).await;
    let seen = healthy.seen("StreamKeepAliveEvent");
    let elapsed = window.elapsed();
    let healthy_verdicts = seen.len() - healthy_start;
    let per_stream = verdicts_in(elapsed, 400);
    let streams = by_app["healthy"].len();
    assert!(
        (per_stream.start() * streams..=per_stream.end() * streams).contains(&healthy_verdicts),
        "healthy app: {healthy_verdicts} verdicts in {elapsed:?} (interval 400 ms) for {streams} streams"
    );
    for id in &by_app["healthy"] {
        let asked = seen[healthy_start..]
            .iter()
            .filter(|b| b["mediaSessionId"] == id.to_string().as_str())
            .count();
        assert!(
            per_stream.contains(&asked),
            "healthy stream {id}: {asked} verdicts in {elapsed:?}, expected {per_stream:?}"
        );
    }

    let view = server.get("/rest-api/keepalive").await;
    let log_streams = log_ids.len() as u64;
    assert!(
        failed(&view) >= failed_before + log_streams,
        "the LOG apps' back ends kept failing meanwhile: {failed_before} -> {}",
        failed(&view)
    );
    let errors: BTreeSet<String> = view["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| {
            h["errors"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    for kind in ["timeout", "too_large", "connect", "garbage"] {
        assert!(errors.contains(kind), "{kind} counted: {errors:?}");
    }
    let answered_500 = view["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["statuses"]["500"].as_u64().is_some());
    assert!(answered_500, "500 answers counted: {view}");
    assert!(
        view["verdicts"]["hook"]["results"]["failed"]
            .as_u64()
            .unwrap()
            > 0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_keepalive_is_one_request_per_app_per_interval() {
    let (backend, url) = HookServer::start().await;
    let apps = format!(
        "[apps.defaultApp]\nurl = \"{url}\"\n[apps.defaultApp.methods.StreamKeepAliveBatchEvent]\nrestExclude = \"custom\"\n"
    );
    let interval = 300;
    let server = server(interval, "", &apps).await;
    let r = server.registry.clone();
    let mut keep = Vec::new();
    for i in 0..50 {
        keep.extend(add(&r, &format!("b{i}"), "defaultApp", 1));
    }
    let doomed = add(&r, "doomed", "defaultApp", 2);
    backend.set("doomed", Answer::Forbid("batch says no"));
    assert!(until(WAIT, || doomed.iter().all(|id| r.get(*id).is_none())).await);
    assert!(keep.iter().all(|id| r.get(*id).is_some()));
    let before = backend.seen("StreamKeepAliveBatchEvent").len();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_millis(5 * interval)).await;
    let batches = backend.seen("StreamKeepAliveBatchEvent");
    let elapsed = window.elapsed();
    // One batch per interval of the time that really passed.
    assert!(
        verdicts_in(elapsed, interval).contains(&(batches.len() - before)),
        "{} batches in {elapsed:?} (interval {interval} ms)",
        batches.len() - before
    );
    let last = batches.last().unwrap();
    assert_eq!(last["streams"].as_array().unwrap().len(), 100);
    assert!(
        last["streams"][0].get("custom").is_none(),
        "restExclude applies"
    );
    assert!(backend.seen("StreamKeepAliveEvent").is_empty());
    let t = r.terminations();
    assert_eq!(t.last().unwrap().reason, "keep-alive: batch says no");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_hooks_and_status_events_with_real_clients() {
    let (backend, url) = HookServer::start().await;
    backend.set("denied", Answer::Forbid("no ticket"));
    let refused = refusing_url();
    let apps = format!(
        "[apps.defaultApp]\nurl = \"{url}\"\n\
         [apps.defaultApp.methods.publishStream]\nclientExclude = \"internal\"\nrestPolicy = \"OVERWRITE\"\nrestOverwrite = [\"custom\"]\n\
         [apps.defaultApp.methods.playStream]\n\
         [apps.defaultApp.methods.StreamStatusEvent]\n\
         [apps.defaultApp.methods.StreamKeepAliveEvent]\n\
         [apps.downFail]\nurl = \"{refused}\"\n[apps.downFail.methods.publishStream]\n\
         [apps.downLog]\nurl = \"{refused}\"\n[apps.downLog.methods.publishStream]\nrestOnError = \"LOG\"\n"
    );
    let server = server(300, "", &apps).await;
    let client = Client::new().unwrap();

    let (status, body) = client
        .post_raw(
            &server.url("/whip/denied"),
            "application/sdp",
            client.sample_offer().await.unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "no ticket");
    assert!(body.get("internal").is_none(), "clientExclude applies");
    let denied = client
        .publish(
            &server.url("/whip/other?app=downFail"),
            SyntheticMedia::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        denied.status(),
        Some(503),
        "restOnError FAIL: a hook that is down refuses"
    );
    let admitted = client
        .publish(
            &server.url("/whip/other?app=downLog"),
            SyntheticMedia::default(),
        )
        .await
        .expect("restOnError LOG: a hook that is down admits");
    admitted.hang_up().await.unwrap();
    assert!(server.registry.is_empty() || until(WAIT, || server.registry.is_empty()).await);

    // Admitted, with the web server's custom map; the player is refused by keep-alive later.
    let publisher = client
        .publish(&server.url("/whip/show?room=1"), SyntheticMedia::default())
        .await
        .unwrap();
    let publish_hook = backend
        .seen("publishStream")
        .into_iter()
        .find(|b| b["name"] == "show")
        .unwrap();
    assert_eq!(publish_hook["custom"]["room"], "1");
    assert_eq!(publish_hook["status"], "NEW");
    let id = publisher
        .links
        .resource
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        publish_hook["mediaSessionId"],
        id.as_str(),
        "the hook names the id the session gets"
    );
    let record = server.registry.get(id.parse().unwrap()).unwrap();
    assert_eq!(
        record.custom.get("tier").map(String::as_str),
        Some("gold"),
        "OVERWRITE"
    );
    let player = client.play(&server.url("/whep/show")).await.unwrap();
    assert!(player.wait_packets(10, WAIT).await);
    let events_url = player.links.events.clone().unwrap();
    let http = server.http_client.clone();
    let events = tokio::spawn(async move { read_status_events(&http, &events_url, WAIT).await });
    backend.set("show", Answer::ForbidPlayers("your time is up"));
    assert!(
        player.wait_ended(WAIT).await.is_some(),
        "the player is closed actively"
    );
    let events = events.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["status"], "FAILED");
    assert_eq!(
        last["info"],
        "Stopped by server: keep-alive: your time is up"
    );
    // The publisher's verdicts go on: twice more after its player was stopped.
    let from = backend.seen("StreamKeepAliveEvent").len();
    let publisher_id: uuid::Uuid = id.parse().unwrap();
    assert!(
        until(WAIT, || keepalives_of(&backend, publisher_id, from) >= 2).await,
        "the publisher is asked again"
    );
    assert!(
        server.registry.get(publisher_id).is_some(),
        "the publisher was kept"
    );
    assert!(publisher.ended.borrow().is_none(), "the publisher was kept");
    publisher.hang_up().await.unwrap();

    // StreamStatusEvent: each stream's changes in order, one final status each.
    assert!(
        until(WAIT, || {
            backend
                .seen("StreamStatusEvent")
                .iter()
                .filter(|e| e["name"] == "show" && e["published"] == true)
                .any(|e| e["status"] == "UNPUBLISHED")
        })
        .await
    );
    let events = backend.seen("StreamStatusEvent");
    let publisher_events: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "show" && e["published"] == true)
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        publisher_events,
        vec!["PENDING", "PUBLISHING", "UNPUBLISHED"]
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["eventId"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    player.close().await;
    server.shutdown().await;
}
