//! WCS's WebSocket signalling against the running server, with a real WebRTC peer behind
//! each stream: the SDK's message sequence, streams mixed with WHIP/WHEP, every stop shown
//! with the model's `info`, REST over WebSocket streams, bad input, unanswered pings, and
//! 50 connect/publish/play/stop/disconnect cycles that leave nothing behind.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};
use sluice_client::wcs::WcsConnection;
use sluice_client::{Client, ClientError, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(15);

fn ws_url(server: &TestServer) -> String {
    format!("ws://{}", server.ws.expect("ws listener"))
}

async fn connect(server: &TestServer) -> WcsConnection {
    WcsConnection::connect(&ws_url(server), "defaultApp", json!({}))
        .await
        .expect("connected")
}

/// Publishes `name` over `connection` and waits for `PUBLISHING`.
async fn publish_live(
    client: &Client,
    connection: &WcsConnection,
    name: &str,
) -> (sluice_client::ClientSession, String) {
    let (session, id) = client
        .publish_wcs(connection, name, SyntheticMedia::default())
        .await
        .unwrap_or_else(|e| panic!("publish {name}: {e}"));
    connection
        .wait_status(&id, "PUBLISHING", WAIT)
        .await
        .unwrap_or_else(|| panic!("{name}: no PUBLISHING"));
    (session, id)
}

async fn terminate(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_sequence_mixed_with_whip_and_whep() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let publishing = connect(&server).await;
    let user_data = publishing
        .wait_for(WAIT, |m| m["message"] == "getUserData")
        .await
        .unwrap();
    assert_eq!(user_data["data"][0]["status"], "ESTABLISHED", "{user_data}");
    let (publisher, publisher_id) = client
        .publish_wcs(&publishing, "cam", SyntheticMedia::default())
        .await
        .unwrap();
    let status = publishing
        .wait_status(&publisher_id, "PUBLISHING", WAIT)
        .await
        .expect("PUBLISHING");
    assert_eq!(status["name"], "cam");
    assert_eq!(status["appKey"], "defaultApp");
    // An SDK publisher plays over WHEP.
    let whep = client.play(&server.url("/whep/cam")).await.unwrap();
    assert!(whep.wait_packets(10, WAIT).await, "no media over WHEP");
    // And over the WebSocket, on another connection.
    let playing = connect(&server).await;
    let (player, player_id) = client.play_wcs(&playing, "cam").await.unwrap();
    playing
        .wait_status(&player_id, "PLAYING", WAIT)
        .await
        .expect("PLAYING");
    assert!(player.wait_packets(10, WAIT).await, "no media over WCS");
    // The same registry: REST finds the SDK's streams by the SDK's id, with their session.
    let found = server
        .http_client
        .post(server.url("/rest-api/stream/find"))
        .json(&json!({"mediaSessionId": player_id}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(found[0]["name"], "cam", "{found}");
    let session_id = found[0]["sessionId"].as_str().unwrap().to_string();
    assert!(session_id.starts_with("/127.0.0.1:"), "{found}");
    // The model's stream object, with the model's names.
    let stream = &found[0];
    for (field, expected) in [
        ("mediaProvider", json!("WebRTC")),
        ("hasVideo", json!(true)),
        ("hasAudio", json!(true)),
        ("videoCodec", json!("VP8")),
        ("audioCodec", json!("opus")),
        ("mediaType", json!("play")),
        ("record", json!(false)),
        ("audioState", json!({"muted": false})),
    ] {
        assert_eq!(stream[field], expected, "{field}: {stream}");
    }
    assert!(stream["createDate"].as_u64().unwrap() > 0, "{stream}");
    assert_eq!(stream["nodeId"], "sluice");
    // An id that names nothing is not malformed: the model's own example gives 404.
    let (status, _) = terminate(&server, json!({"mediaSessionId": "41c3f621-a847-4639"})).await;
    assert_eq!(status, 404);

    // A second stream with an id in use is refused with the model's text.
    let sdp = client.sample_offer().await.unwrap();
    playing
        .send(
            "playStream",
            json!({"mediaSessionId": player_id, "name": "cam", "sdp": sdp}),
        )
        .unwrap();
    let refused = playing
        .wait_for(WAIT, |m| m["message"] == "fail")
        .await
        .unwrap();
    assert_eq!(
        refused["data"][0]["info"], "MediaSessionId is already in use",
        "{refused}"
    );
    // Playing a name nobody publishes: FAILED, "Stream not found".
    match client.play_wcs(&playing, "nobody").await {
        Err(ClientError::StreamFailed(info)) => assert_eq!(info, "Stream not found"),
        other => panic!("played nothing: {:?}", other.map(|(_, id)| id)),
    }

    // A terminate of the player shows its reason; the publisher's stop shows the model's text.
    let (status, _) = terminate(
        &server,
        json!({"mediaSessionId": player_id, "reason": "seen enough"}),
    )
    .await;
    assert_eq!(status, 200);
    let failed = playing
        .wait_status(&player_id, "FAILED", WAIT)
        .await
        .unwrap();
    assert_eq!(failed["info"], "seen enough", "{failed}");
    player.close().await;
    // Resume on the same connection with a new id.
    let (again, again_id) = client.play_wcs(&playing, "cam").await.unwrap();
    playing
        .wait_status(&again_id, "PLAYING", WAIT)
        .await
        .unwrap();
    let (status, _) = terminate(&server, json!({"mediaSessionId": publisher_id})).await;
    assert_eq!(status, 200);
    let publisher_failed = publishing
        .wait_status(&publisher_id, "FAILED", WAIT)
        .await
        .unwrap();
    assert_eq!(publisher_failed["info"], "Stopped by rest /terminate");
    let orphan = playing
        .wait_status(&again_id, "FAILED", WAIT)
        .await
        .unwrap();
    assert_eq!(orphan["info"], "Stopped by publisher stop", "{orphan}");
    assert!(
        whep.wait_ended(WAIT).await.is_some(),
        "the WHEP player is told"
    );
    again.close().await;
    publisher.close().await;
    whep.close().await;

    // A WHIP publisher plays in the SDK's way; the client's own stops get their statuses.
    let whip = client
        .publish(&server.url("/whip/desk"), SyntheticMedia::default())
        .await
        .unwrap();
    let (viewer, viewer_id) = client.play_wcs(&playing, "desk").await.unwrap();
    assert!(viewer.wait_packets(10, WAIT).await, "no media from WHIP");
    playing.stop(&viewer_id, false).unwrap();
    playing
        .wait_status(&viewer_id, "STOPPED", WAIT)
        .await
        .expect("STOPPED");
    viewer.close().await;
    let (own, own_id) = publish_live(&client, &publishing, "mine").await;
    publishing.stop(&own_id, true).unwrap();
    publishing
        .wait_status(&own_id, "UNPUBLISHED", WAIT)
        .await
        .expect("UNPUBLISHED");
    own.close().await;
    whip.hang_up().await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_socket_ends_its_streams_and_only_its_own() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let first = connect(&server).await;
    let (a, a_id) = client
        .publish_wcs(&first, "a", SyntheticMedia::default())
        .await
        .unwrap();
    first.wait_status(&a_id, "PUBLISHING", WAIT).await.unwrap();
    let second = connect(&server).await;
    let (b, b_id) = client
        .publish_wcs(&second, "b", SyntheticMedia::default())
        .await
        .unwrap();
    second.wait_status(&b_id, "PUBLISHING", WAIT).await.unwrap();
    let (watcher, watcher_id) = client.play_wcs(&second, "a").await.unwrap();
    second
        .wait_status(&watcher_id, "PLAYING", WAIT)
        .await
        .unwrap();

    // Another connection's stream cannot be stopped from here.
    first.stop(&b_id, true).unwrap();
    let refused = first
        .wait_for(WAIT, |m| m["message"] == "fail")
        .await
        .unwrap();
    assert!(
        refused["data"][0]["info"]
            .as_str()
            .unwrap()
            .contains("on this connection"),
        "{refused}"
    );
    // Bad input gets a clear `fail` and changes nothing.
    for text in [
        "{".to_string(),
        r#"{"message":"publishStream","data":[{"name":"x"}]}"#.to_string(),
        r#"{"message":"playStream","data":"x"}"#.to_string(),
        r#"{"message":"connection","data":[{}]}"#.to_string(),
    ] {
        first.send_text(text.clone()).unwrap();
    }
    first.send("whoKnows", json!({})).unwrap();
    let mut failures = 0;
    for _ in 0..100 {
        let messages = first.messages().await;
        failures = messages.iter().filter(|m| m["message"] == "fail").count();
        if failures >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One fail for the stop and each bad message; the unknown message is only logged.
    assert_eq!(failures, 5, "{:?}", first.messages().await);
    assert_eq!(server.streams().await, 3, "nothing was touched");

    first.disconnect();
    let ended = second
        .wait_status(&watcher_id, "FAILED", WAIT)
        .await
        .unwrap();
    assert_eq!(ended["info"], "Stopped by publisher stop");
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 1 })
            .await,
        "only the other connection's publisher is left"
    );
    a.close().await;
    watcher.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_pings_close_the_connection_and_end_its_streams() {
    let server = TestServer::start("keep_alive.server_interval=200\nkeep_alive.probes=3\n");
    let client = Client::new().unwrap();
    let connection = connect(&server).await;
    let ping = connection
        .wait_for(WAIT, |m| m["message"] == "ping")
        .await
        .expect("the server pings");
    assert!(ping["data"].is_array());
    let (publisher, _) = publish_live(&client, &connection, "quiet").await;
    // Answering, it stays open well past probes × interval.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!connection.wait_closed(Duration::from_millis(10)).await);
    connection.answer_pings(false);
    assert!(
        connection.wait_closed(Duration::from_secs(5)).await,
        "not closed after unanswered pings"
    );
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_is_refused_and_the_connection_closed() {
    let server = TestServer::start("");
    match WcsConnection::connect(&ws_url(&server), "noSuchApp", json!({})).await {
        Err(ClientError::StreamFailed(info)) => assert!(info.contains("noSuchApp"), "{info}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an unknown app was taken"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_websocket_cycles_leave_nothing_behind() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    cycle(&server, &client, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.runtime().await;
    let (base_tasks, base_fds) = (
        baseline["aliveTasks"].as_u64().unwrap(),
        baseline["openFds"].as_u64().unwrap(),
    );
    for i in 1..=50 {
        cycle(&server, &client, i).await;
    }
    let settled = server
        .eventually(Duration::from_secs(15), || async {
            let now = server.runtime().await;
            now["streams"] == 0
                && now["aliveTasks"].as_u64().unwrap() <= base_tasks
                && now["openFds"].as_u64().unwrap() <= base_fds
        })
        .await;
    let now = server.runtime().await;
    assert!(settled, "baseline {baseline}, after 50 cycles {now}");
}

/// Connect, publish, play, stop (each side in turn), disconnect.
async fn cycle(server: &TestServer, client: &Client, i: usize) {
    let connection = connect(server).await;
    let name = format!("loop{}", i % 3);
    let (publisher, publisher_id) = client
        .publish_wcs(&connection, &name, SyntheticMedia::default())
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: publish: {e}"));
    let (player, player_id) = client
        .play_wcs(&connection, &name)
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: play: {e}"));
    if !player.wait_packets(5, WAIT).await {
        panic!(
            "cycle {i}: no media; {}",
            server.why_no_media(&player, &publisher).await
        );
    }
    let live = server.runtime().await;
    assert_eq!(live["streams"], 2, "cycle {i}: {live}");
    if i.is_multiple_of(2) {
        connection.stop(&player_id, false).unwrap();
        connection
            .wait_status(&player_id, "STOPPED", WAIT)
            .await
            .unwrap_or_else(|| panic!("cycle {i}: not STOPPED"));
        connection.stop(&publisher_id, true).unwrap();
        connection
            .wait_status(&publisher_id, "UNPUBLISHED", WAIT)
            .await
            .unwrap_or_else(|| panic!("cycle {i}: not UNPUBLISHED"));
    }
    // Odd cycles just hang up with both streams live.
    connection.disconnect();
    assert!(connection.wait_closed(WAIT).await, "cycle {i}: not closed");
    player.close().await;
    publisher.close().await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await,
        "cycle {i}: streams left"
    );
}

/// A web server for the connection-level hooks: records every call; `connect` refuses a
/// client whose `custom.token` is not `letmein`, with the model's `{"status", "reason"}`.
async fn hook_backend() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
) {
    use axum::extract::Path;
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = seen.clone();
    let app = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(
            move |Path(method): Path<String>, axum::Json(body): axum::Json<Value>| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push((method.clone(), body.clone()));
                    if method == "connect" && body["custom"]["token"] != "letmein" {
                        return (
                            axum::http::StatusCode::FORBIDDEN,
                            axum::Json(json!({"status": 403, "reason": "wrong token"})),
                        )
                            .into_response();
                    }
                    axum::Json(body).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_hooks_and_on_connect_decide_as_the_models_do() {
    let (url, seen) = hook_backend().await;
    let methods = [
        "connect",
        "ConnectionStatusEvent",
        "publishStream",
        "StreamStatusEvent",
    ]
    .iter()
    .map(|m| format!("[apps.guarded.methods.{m}]\n"))
    .collect::<String>();
    let server = TestServer::start_with(
        common::LOOPBACK,
        Some(&format!("[apps.guarded]\nurl = \"{url}\"\n{methods}")),
    );
    let url_ws = ws_url(&server);
    // The web server refuses: the client gets its reason, and the socket is closed.
    match WcsConnection::connect(&url_ws, "guarded", json!({"token": "guess"})).await {
        Err(ClientError::StreamFailed(info)) => assert_eq!(info, "wrong token"),
        other => panic!("let in: {:?}", other.err()),
    }
    // The right token: in, and the hooks get the model's fields.
    let client = Client::new().unwrap();
    let connection = WcsConnection::connect(&url_ws, "guarded", json!({"token": "letmein"}))
        .await
        .expect("let in");
    let (publisher, id) = publish_live(&client, &connection, "guarded-cam").await;
    connection.disconnect();
    assert!(connection.wait_closed(WAIT).await);
    publisher.close().await;
    let calls = || seen.lock().unwrap().clone();
    assert!(
        common::until(WAIT, || calls().iter().any(|(m, b)| m
            == "ConnectionStatusEvent"
            && b["status"] == "DISCONNECTED"))
        .await,
        "{:?}",
        calls()
    );
    let calls = calls();
    let body = |method: &str, pick: &dyn Fn(&Value) -> bool| {
        calls
            .iter()
            .find(|(m, b)| m == method && pick(b))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no {method} in {calls:?}"))
    };
    let connect = body("connect", &|b| b["custom"]["token"] == "letmein");
    let session_id = connect["sessionId"].as_str().unwrap().to_string();
    assert_eq!(connect["appKey"], "guarded");
    assert_eq!(connect["nodeId"], "sluice");
    assert_eq!(connect["clientVersion"], "2.0");
    let established = body("ConnectionStatusEvent", &|b| b["status"] == "ESTABLISHED");
    assert_eq!(established["sessionId"], session_id.as_str());
    for method in ["publishStream", "StreamStatusEvent"] {
        let stream = body(method, &|b| b["mediaSessionId"] == id.as_str());
        assert_eq!(
            stream["sessionId"],
            session_id.as_str(),
            "{method}: {stream}"
        );
        assert_eq!(stream["appKey"], "guarded", "{method}: {stream}");
        assert_eq!(stream["nodeId"], "sluice", "{method}: {stream}");
        assert_eq!(stream["custom"]["token"], "letmein", "{method}: {stream}");
    }

    // The app's plugin decides the same way (written under the running server).
    std::fs::create_dir_all(server.dir.path().join("plugins")).unwrap();
    std::fs::write(
        server.dir.path().join("plugins/gate.lua"),
        "local M = {}\nfunction M.on_connect(c)\n  if c.custom and c.custom.room == 'open' then return 200 end\n  return 403, 'closed room'\nend\nreturn M\n",
    )
    .unwrap();
    std::fs::write(
        server.dir.path().join("apps.toml"),
        format!(
            "[apps.guarded]\nurl = \"{url}\"\n{methods}[apps.scripted]\nplugin = \"gate.lua\"\n"
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match WcsConnection::connect(&url_ws, "scripted", json!({"room": "shut"})).await {
            Err(ClientError::StreamFailed(info)) if info == "closed room" => break,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the plugin did not refuse: {:?}",
                    other.err()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    WcsConnection::connect(&url_ws, "scripted", json!({"room": "open"}))
        .await
        .expect("the plugin lets it in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_and_stopped_over_rest() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let post = |path: &'static str, body: Value| {
        let request = server.http_client.post(server.url(path)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, _) = post("/rest-api/connection/find_all", json!({})).await;
    assert_eq!(status, 404, "none yet");
    let first = connect(&server).await;
    let second = connect(&server).await;
    let (publisher, id) = client
        .publish_wcs(&first, "by-connection", SyntheticMedia::default())
        .await
        .unwrap();
    first.wait_status(&id, "PUBLISHING", WAIT).await.unwrap();
    let (status, all) = post("/rest-api/connection/find_all", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all[0]["appKey"], "defaultApp");
    assert_eq!(all[0]["clientVersion"], "2.0");
    // The publisher's connection, by its sessionId as REST shows the stream.
    let (_, streams) = post("/rest-api/stream/find", json!({"mediaSessionId": id})).await;
    let session_id = streams[0]["sessionId"].clone();
    let (status, found) = post(
        "/rest-api/connection/find",
        json!({"sessionId": session_id}),
    )
    .await;
    assert_eq!((status, found.as_array().unwrap().len()), (200, 1));
    for (body, expected) in [
        (json!({}), 400),
        (json!({"sessionID": "x"}), 400),
        (json!({"sessionId": 5}), 400),
        (json!({"sessionId": "/nobody"}), 404),
        (json!({"appKey": "otherApp"}), 404),
    ] {
        let (status, answer) = post("/rest-api/connection/find", body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
    let (status, stopped) = post(
        "/rest-api/connection/terminate",
        json!({"sessionId": session_id}),
    )
    .await;
    assert_eq!((status, stopped.as_array().unwrap().len()), (200, 1));
    assert!(first.wait_closed(WAIT).await, "the connection is closed");
    assert!(
        !second.wait_closed(Duration::from_millis(200)).await,
        "the other stays"
    );
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await,
        "its stream ended with it"
    );
    publisher.close().await;
    let (status, all) = post("/rest-api/connection/find_all", json!({})).await;
    assert_eq!((status, all.as_array().map(Vec::len)), (200, Some(1)));
    let (status, _) = post(
        "/rest-api/connection/terminate",
        json!({"appKey": "defaultApp"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(second.wait_closed(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_oversized_frames_close_only_their_connection() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let bystander = connect(&server).await;
    let (publisher, id) = publish_live(&client, &bystander, "bystander").await;

    // A frame over the limit: the connection is closed.
    let big = connect(&server).await;
    big.send_text(format!(
        r#"{{"message":"pushLogs","data":["{}"]}}"#,
        "x".repeat(2 * 1024 * 1024)
    ))
    .unwrap();
    assert!(big.wait_closed(WAIT).await, "an oversized frame is refused");

    // A flood of messages: told why, then closed.
    let flood = connect(&server).await;
    for _ in 0..1000 {
        if flood.send("ping", json!(null)).is_err() {
            break;
        }
    }
    assert!(
        flood.wait_closed(WAIT).await,
        "a flood closes the connection"
    );
    let told = flood.messages().await.into_iter().any(|m| {
        m["message"] == "fail"
            && m["data"][0]["info"]
                .as_str()
                .is_some_and(|i| i.contains("messages a second"))
    });
    assert!(told, "the flood is told why");

    // The other connection and its stream are untouched.
    assert!(!bystander.wait_closed(Duration::from_millis(200)).await);
    assert_eq!(server.streams().await, 1);
    let viewer = client.play(&server.url("/whep/bystander")).await.unwrap();
    assert!(viewer.wait_packets(10, WAIT).await, "its media still flows");
    viewer.hang_up().await.unwrap();
    bystander.stop(&id, true).unwrap();
    bystander
        .wait_status(&id, "UNPUBLISHED", WAIT)
        .await
        .unwrap();
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_shows_its_reason_and_retry_hint_and_refuses_the_return() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let connection = connect(&server).await;
    let (publisher, id) = publish_live(&client, &connection, "held").await;
    let (status, _) = terminate(
        &server,
        json!({"name": "held", "published": true, "reason": "maintenance", "holdMs": 60_000}),
    )
    .await;
    assert_eq!(status, 200);
    let failed = connection.wait_status(&id, "FAILED", WAIT).await.unwrap();
    let info = failed["info"].as_str().unwrap();
    assert!(
        info.starts_with("maintenance; retry in ") && info.ends_with(" s"),
        "{info}"
    );
    publisher.close().await;
    // Publishing again on the same connection is refused by the hold, with its reason.
    match client
        .publish_wcs(&connection, "held", SyntheticMedia::default())
        .await
    {
        Err(ClientError::StreamFailed(info)) => {
            assert!(info.starts_with("maintenance; retry in "), "{info}")
        }
        other => panic!("the hold let it in: {:?}", other.map(|(_, id)| id)),
    }
    assert_eq!(server.streams().await, 0);
}
