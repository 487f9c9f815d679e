//! Lua plugins: the shipped policies offline, then plugins in a running server with real
//! and synthetic streams — verdicts, hot edits under live streams, a broken edit, runaway
//! plugins, deletion, named terminate filters and admission.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{InProcessServer, read_status_events, until};
use serde_json::{Value, json};
use sluice::policy::{AdmissionRequest, OfflineCall, StreamView, test_offline};
use sluice::registry::NewStream;
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins")
            .join(name),
    )
    .unwrap()
}

/// A copy of a shipped plugin with one constant changed, in `dir`.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let text = shipped(name);
    assert!(text.contains(from), "{name} has '{from}'");
    let path = dir.join(name);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

fn view(json: Value) -> StreamView {
    serde_json::from_value(json).unwrap()
}

#[test]
fn shipped_policies_do_what_their_headers_say() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");

    let limit = plugins.join("viewing_time_limit.lua");
    let ka = |path: &Path, v: Value| test_offline(path, OfflineCall::KeepAlive(view(v))).unwrap();
    assert_eq!(
        ka(&limit, json!({"published": false, "age_ms": 3_600_001}))["code"],
        403
    );
    assert_eq!(
        ka(&limit, json!({"published": false, "age_ms": 10}))["code"],
        200
    );
    assert_eq!(
        ka(&limit, json!({"published": true, "age_ms": 9_999_999}))["code"],
        200
    );
    let older = |ms: u64, age: u64| {
        test_offline(
            &limit,
            OfflineCall::Filter {
                name: "older_than".into(),
                args: json!({"ms": ms}),
                view: view(json!({"age_ms": age})),
            },
        )
        .unwrap()["match"]
            .clone()
    };
    assert_eq!(
        (older(100, 200), older(100, 50)),
        (json!(true), json!(false))
    );

    let tokens = variant(
        dir.path(),
        "token_list.lua",
        "\"tokens.txt\"",
        "\"tokens.txt\"",
    );
    std::fs::write(dir.path().join("tokens.txt"), "# allowed\nalpha\nbeta\n").unwrap();
    let admit = |token: Option<&str>| {
        test_offline(
            &tokens,
            OfflineCall::Admit {
                view: view(json!({"published": true})),
                request: AdmissionRequest {
                    token: token.map(String::from),
                    ..AdmissionRequest::default()
                },
                players: 0,
            },
        )
        .unwrap()
    };
    assert_eq!(admit(Some("beta"))["code"], 200);
    assert_eq!(admit(Some("gamma"))["reason"], "token not allowed");
    assert_eq!(admit(None)["reason"], "a bearer token is required");

    let max = plugins.join("max_players.lua");
    let play = |players: usize| {
        test_offline(
            &max,
            OfflineCall::Admit {
                view: view(json!({"name": "cam", "published": false})),
                request: AdmissionRequest::default(),
                players,
            },
        )
        .unwrap()["code"]
            .clone()
    };
    assert_eq!((play(99), play(100)), (json!(200), json!(403)));

    // Open for the current hour only; closed for the next one; closed for the one that has
    // just ended (TO excluded). Hours wrap at midnight (23 → 0: the window spans midnight).
    // The plugin reads the clock at each call, so the hour is read before and after the
    // calls, and they are made again if an hour began in between (they take milliseconds).
    let hour_now = || (sluice::registry::now_ms() / 3_600_000) % 24;
    let hours = |from: u64, to: u64| {
        let path = variant(
            dir.path(),
            "allowed_hours.lua",
            "local FROM_HOUR = 8\nlocal TO_HOUR = 22",
            &format!("local FROM_HOUR = {from}\nlocal TO_HOUR = {to}"),
        );
        ka(&path, json!({}))
    };
    let (hour, open, closed, ended) = (0..3)
        .find_map(|_| {
            let hour = hour_now();
            let open = hours(hour, (hour + 1) % 24);
            let closed = hours((hour + 1) % 24, (hour + 2) % 24);
            let ended = hours((hour + 23) % 24, hour);
            (hour_now() == hour).then_some((hour, open, closed, ended))
        })
        .expect("three tries in a row each crossed an hour: the clock is jumping");
    assert_eq!(
        open["code"],
        200,
        "open {hour}-{} at {hour} h: {open}",
        (hour + 1) % 24
    );
    let answer = closed;
    assert_eq!(answer["code"], 403, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .starts_with("streaming is open")
    );
    assert_eq!(
        answer["reason"],
        format!(
            "streaming is open {:02}:00-{:02}:00 UTC (now {hour:02} h)",
            (hour + 1) % 24,
            (hour + 2) % 24
        )
    );
    assert_eq!(
        ended["code"],
        403,
        "open {}-{hour} (TO excluded) at {hour} h: {ended}",
        (hour + 23) % 24
    );
}

async fn plugins_view(server: &InProcessServer) -> Value {
    server
        .http_client
        .get(server.url("/rest-api/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_stops_real_players_after_their_time() {
    let limited = shipped("viewing_time_limit.lua")
        .replace("local LIMIT_MS = 3600000", "local LIMIT_MS = 1500");
    let server = InProcessServer::with_plugins(
        300,
        "[apps.defaultApp]\nplugin = \"limit.lua\"\n",
        &[("limit.lua", &limited)],
        "",
    )
    .await;
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&server.url("/whep/show")).await.unwrap();
    let started = Instant::now();
    assert!(player.wait_packets(10, WAIT).await);
    let url = player.links.events.clone().unwrap();
    let http = server.http_client.clone();
    let events = tokio::spawn(async move { read_status_events(&http, &url, WAIT).await });
    assert!(player.wait_ended(WAIT).await.is_some());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(1500 + 300 + 500),
        "stopped after {took:?}"
    );
    let last = events.await.unwrap().last().cloned().unwrap();
    assert_eq!(
        last["info"],
        "Stopped by server: viewing time limit of 1 s reached"
    );
    assert!(publisher.ended.borrow().is_none(), "the publisher is kept");
    let t = server.registry.terminations();
    assert_eq!(serde_json::to_value(&t[0].source).unwrap()["by"], "plugin");
    publisher.hang_up().await.unwrap();
    player.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_edits_change_verdicts_drop_nothing_and_a_broken_edit_keeps_the_old_version() {
    let keep_all = "local M = {}\nfunction M.on_keepalive(s) return 200 end\nreturn M\n";
    let server = InProcessServer::with_plugins(
        300,
        "[apps.defaultApp]\nplugin = \"policy.lua\"\n",
        &[("policy.lua", keep_all)],
        "",
    )
    .await;
    let r = server.registry.clone();
    let mut publishers = Vec::new();
    let mut players = Vec::new();
    for i in 0..10 {
        publishers.push(
            r.register_synthetic(NewStream::publisher(&format!("s{i}"), "defaultApp"))
                .unwrap()
                .media_session_id,
        );
        players.push(
            r.register_synthetic(NewStream::player(&format!("s{i}"), "defaultApp"))
                .unwrap()
                .media_session_id,
        );
    }
    let plugin = server.dir.path().join("plugins/policy.lua");
    assert_eq!(plugins_view(&server).await[0]["version"], 1);
    // Two rounds of verdicts (each stream is asked once per interval), all of them answered.
    let calls = |status: &Value| status["calls"].as_u64().unwrap();
    let from = calls(&server.plugin_status("defaultApp").await);
    let status = server
        .wait_plugin("defaultApp", WAIT, "two rounds of verdicts", |s| {
            calls(s) >= from + 2 * 20
        })
        .await;
    assert_eq!(status["errors"], 0, "{status}");
    assert_eq!(r.len(), 20, "keep-all keeps all");

    // A syntax error: the old version stays, the error is shown, nothing is dropped.
    std::fs::write(
        &plugin,
        "local M = {\nfunction M.on_keepalive(s) return 403 end\n",
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let view = plugins_view(&server).await;
        if view[0]["lastError"].is_string() {
            break view;
        }
        assert!(Instant::now() < deadline, "no load error shown: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view[0]["version"], 1, "{view}");
    assert_eq!(view[0]["loaded"], true);
    assert!(
        view[0]["lastError"]
            .as_str()
            .unwrap()
            .contains("policy.lua"),
        "{view}"
    );
    // The old version goes on answering: two more rounds of its verdicts.
    let from = calls(&view[0]);
    let status = server
        .wait_plugin(
            "defaultApp",
            WAIT,
            "two rounds of verdicts after the broken edit",
            |s| calls(s) >= from + 2 * 20,
        )
        .await;
    assert_eq!(
        (&status["version"], &status["errors"]),
        (&json!(1), &json!(0)),
        "{status}"
    );
    assert_eq!(r.len(), 20, "the broken edit changed no verdict");

    // The real edit: players go within one interval (plus the reload); publishers stay.
    std::fs::write(&plugin, "local M = {}\nfunction M.on_keepalive(s)\n  if not s.published then return 403, 'edited' end\n  return 200\nend\nreturn M\n").unwrap();
    let saved = Instant::now();
    assert!(until(WAIT, || players.iter().all(|id| r.get(*id).is_none())).await);
    let took = saved.elapsed();
    eprintln!("edit -> players stopped: {took:?}");
    assert!(took < Duration::from_millis(300 + 200), "{took:?}");
    assert!(
        publishers.iter().all(|id| r.get(*id).is_some()),
        "no publisher dropped"
    );
    let view = plugins_view(&server).await;
    assert_eq!(view[0]["version"], 2);
    assert!(view[0]["lastError"].is_null());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_plugins_are_cut_off_and_the_server_keeps_serving() {
    let looping = "local M = {}\nfunction M.on_keepalive(s) while true do end end\nreturn M\n";
    let bomb = "local M = {}\nfunction M.on_keepalive(s) local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 4096) end end\nreturn M\n";
    let globals = "local M = {}\nfunction M.on_keepalive(s) leaked = (leaked or 0) + 1 return 200 end\nreturn M\n";
    let apps = "[apps.loopLog]\nplugin = \"loop.lua\"\n[apps.loopLog.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n\
                [apps.bombFail]\nplugin = \"bomb.lua\"\n\
                [apps.globals]\nplugin = \"globals.lua\"\n";
    let server = InProcessServer::with_plugins(
        300,
        apps,
        &[("loop.lua", looping), ("bomb.lua", bomb), ("globals.lua", globals)],
        "streaming_sessions_keep_alive_app_keys=loopLog,bombFail,globals\nkeep_alive_failures_to_stop=2\nplugin_instruction_budget=100000\nplugin_memory_limit=8388608\n",
    )
    .await;
    let r = server.registry.clone();
    let survivor = r
        .register_synthetic(NewStream::publisher("looped", "loopLog"))
        .unwrap()
        .media_session_id;
    let doomed = r
        .register_synthetic(NewStream::publisher("bombed", "bombFail"))
        .unwrap()
        .media_session_id;
    let fine = r
        .register_synthetic(NewStream::publisher("globals", "globals"))
        .unwrap()
        .media_session_id;
    assert!(
        until(WAIT, || r.get(doomed).is_none()).await,
        "FAIL: stopped after two failed verdicts"
    );
    let record = r
        .terminations()
        .into_iter()
        .find(|t| t.streams[0].media_session_id == doomed)
        .unwrap();
    assert!(
        record
            .reason
            .starts_with("keep-alive failed 2 times in a row"),
        "{}",
        record.reason
    );
    // The server kept serving while the plugins ran away.
    let started = Instant::now();
    let (status, _) = server.post("/rest-api/stream/find_all", json!({})).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    // The verdicts ran: the looping plugin failed for its only stream more times in a row
    // than FAIL allows (so the second failure was applied before the third call), and the
    // globals plugin answered its only stream as many times.
    server
        .wait_plugin("loopLog", WAIT, "3 failed verdicts", |s| {
            s["errors"].as_u64().unwrap() >= 3
        })
        .await;
    server
        .wait_plugin("globals", WAIT, "3 verdicts", |s| {
            s["calls"].as_u64().unwrap() >= 3
        })
        .await;
    assert!(
        r.get(survivor).is_some(),
        "LOG: kept despite failing verdicts"
    );
    assert!(
        r.get(fine).is_some(),
        "globals across calls are the plugin's own business"
    );
    let view = plugins_view(&server).await;
    let by_app = |app: &str| {
        view.as_array()
            .unwrap()
            .iter()
            .find(|p| p["appKey"] == app)
            .unwrap()
            .clone()
    };
    assert!(
        by_app("loopLog")["lastError"]
            .as_str()
            .unwrap()
            .contains("budget"),
        "{view}"
    );
    assert!(by_app("loopLog")["errors"].as_u64().unwrap() >= 2);
    assert!(by_app("bombFail")["errors"].as_u64().unwrap() >= 2);
    assert_eq!(by_app("globals")["errors"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_admission_and_deleting_a_plugin() {
    let policy = r#"
local M = {}
M.filters = {}
function M.filters.named_like(stream, args) return string.find(stream.name, args.prefix, 1, true) == 1 end
function M.on_publish(stream, request)
  if request.query.room == "closed" then return 403, "room closed" end
  if request.token ~= nil and request.token ~= "good" then return 401, "bad token" end
  return nil
end
function M.on_keepalive(stream) return nil end
return M
"#;
    let (hits_tx, hits) = std::sync::mpsc::channel::<Value>();
    let hits_tx = std::sync::Mutex::new(hits_tx);
    let hits_tx = std::sync::Arc::new(hits_tx);
    let app = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let hits_tx = hits_tx.clone();
            async move {
                let _ = hits_tx.lock().unwrap().send(body);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let apps = format!(
        "[apps.defaultApp]\nplugin = \"policy.lua\"\nurl = \"{url}\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\n"
    );
    let server = InProcessServer::with_plugins(300, &apps, &[("policy.lua", policy)], "").await;
    let r = server.registry.clone();
    for name in ["lobby-1", "lobby-2", "stage"] {
        r.register_synthetic(NewStream::publisher(name, "defaultApp"))
            .unwrap();
    }
    // Abstaining plugin: the REST hook gets the verdicts.
    assert!(
        until(WAIT, || hits.try_recv().is_ok()).await,
        "the hook is asked when the plugin abstains"
    );

    let (status, answer) = server
        .post(
            "/rest-api/stream/find",
            json!({"filter": "named_like", "args": {"prefix": "lobby"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer.as_array().unwrap().len(), 2);
    let (status, answer) = server
        .post("/rest-api/stream/terminate", json!({"filter": "named_like", "args": {"prefix": "lobby"}, "published": true, "reason": "lobby closes"}))
        .await;
    assert_eq!(
        (status, answer["mediaSessionIds"].as_array().unwrap().len()),
        (200, 2)
    );
    assert_eq!(r.len(), 1);
    let (status, answer) = server
        .post("/rest-api/stream/find", json!({"filter": "no_such_filter"}))
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("filter")));

    let client = Client::new().unwrap();
    let offer = client.sample_offer().await.unwrap();
    let whip = |query: &str, token: Option<&str>| {
        let mut request = server
            .http_client
            .post(server.url(&format!("/whip/new{query}")))
            .header("content-type", "application/sdp")
            .body(offer.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = whip("?room=closed", None).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &body["reason"]), (403, &json!("room closed")));
    assert_eq!(body["hint"]["action"], "do-not-reconnect");
    let (status, body) = whip("", Some("evil")).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &body["error"]), (401, &json!("bad token")));
    let (status, _) = whip("", Some("good")).await;
    assert_eq!(status, 201);

    // Deleting the file unloads the plugin; its filter is gone and the hook decides alone.
    std::fs::remove_file(server.dir.path().join("plugins/policy.lua")).unwrap();
    let mut unloaded = false;
    for _ in 0..200 {
        let view = plugins_view(&server).await;
        if view[0]["loaded"] == false {
            unloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unloaded);
    let (status, _) = server
        .post(
            "/rest-api/stream/find",
            json!({"filter": "named_like", "args": {"prefix": "s"}}),
        )
        .await;
    assert_eq!(status, 400);
    server.shutdown().await;
}
