//! The official Flashphoner Web SDK (`@flashphoner/websdk@2.0.276`, fetched by
//! `scripts/test` into `target/websdk/package`) in real headless Chromium, its own example
//! pages served unchanged, against the running server's WCS WebSocket signalling:
//! `examples/min/streaming.html` connects, publishes, plays (frames decoded) and
//! unpublishes; `examples/demo/streaming/player/player.html` plays a WHIP publisher, shows
//! `FAILED` / `Stopped by publisher stop` within a second of a REST terminate, plays again
//! with one click, and shows a keep-alive 403's reason from a real axum hook back end.
//! Screenshots of each state go to `test-artifacts/websdk/`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use browser::{Browser, WAIT, browser_test_runs};
use common::{LOOPBACK, TestServer};
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

const SDK_VERSION: &str = "2.0.276";

/// Where `scripts/test` unpacked the SDK; the test fails, saying how to get it, without it.
fn sdk_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/websdk/package");
    let version =
        std::fs::read_to_string(root.parent().unwrap().join("version")).unwrap_or_default();
    assert!(
        root.join("flashphoner.js").is_file() && version.trim() == SDK_VERSION,
        "the Flashphoner Web SDK {SDK_VERSION} is not in {}: run scripts/test, which fetches \
         it with `npm pack @flashphoner/websdk@{SDK_VERSION}`",
        root.display()
    );
    root
}

/// Serves the SDK's package root as the web root, as the pages' relative paths expect.
async fn serve_sdk() -> SocketAddr {
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(sdk_root()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Waits until `script` returns `true`; says what it last returned otherwise.
async fn until_true(page: &Browser, script: &str, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let value = page.js(script).await;
        if value == Value::Bool(true) {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "{what}: the page says {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text_of(selector: &str) -> String {
    format!("((document.querySelector({selector:?}) || {{}}).textContent || '')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_html_connects_publishes_plays_and_unpublishes() {
    if !browser_test_runs("streaming_html_connects_publishes_plays_and_unpublishes") {
        return;
    }
    let server = TestServer::start("rest_api_https_port=0\n");
    let pages = serve_sdk().await;
    // Over wss, with the server's self-signed certificate (the one HTTPS would use).
    let page = Browser::start_with(&["--ignore-certificate-errors"]).await;
    page.page()
        .goto(&format!("http://{pages}/examples/min/streaming.html"))
        .await
        .unwrap();
    let wss = server.wss.expect("wss");
    page.js(&format!(
        "document.getElementById('urlServer').value = 'wss://{wss}'; document.getElementById('streamName').value = 'sdkcam'; return 0;"
    ))
    .await;
    page.click("connect").await;
    until_true(
        &page,
        "const s = Flashphoner.getSessions()[0]; return !!s && s.status() === 'ESTABLISHED';",
        "connect",
    )
    .await;
    page.click("publish").await;
    until_true(
        &page,
        &format!(
            "return {}.includes('Status: PUBLISHING');",
            text_of("#sdkcam-PUBLISH")
        ),
        "publish",
    )
    .await;
    page.click("play").await;
    until_true(
        &page,
        &format!(
            "return {}.includes('Status: PLAYING');",
            text_of("#sdkcam-PLAY")
        ),
        "play",
    )
    .await;
    page.wait_decoding_in("#sdkcam-PLAY video").await;
    page.screenshot_in("websdk", "1-streaming-publishing-and-playing")
        .await;

    // The SDK's publisher is a stream like any other: REST finds it, WHEP plays it.
    let found: Value = server
        .http_client
        .post(server.url("/rest-api/stream/find"))
        .json(&json!({"name": "sdkcam", "published": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let whep = Client::new()
        .unwrap()
        .play(&server.url("/whep/sdkcam"))
        .await
        .unwrap();
    assert!(
        whep.wait_packets(20, WAIT).await,
        "no media over WHEP from the SDK"
    );

    // Unpublish: the publisher's tile goes (UNPUBLISHED), the player's too (FAILED).
    page.js("document.querySelector('#sdkcam-PUBLISH input[type=button]').click(); return 0;")
        .await;
    until_true(
        &page,
        "return !document.getElementById('sdkcam-PUBLISH') && !document.getElementById('sdkcam-PLAY');",
        "unpublish",
    )
    .await;
    assert!(
        whep.wait_ended(WAIT).await.is_some(),
        "the WHEP player is told"
    );
    whep.close().await;
    page.screenshot_in("websdk", "2-streaming-unpublished")
        .await;
    page.click("disconnect").await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
}

/// A keep-alive back end: `200` until told to refuse, then `403` with its reason.
async fn keepalive_backend(refuse: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(move |Json(body): Json<Value>| {
            let refuse = refuse.clone();
            async move {
                let refused = refuse.load(Ordering::SeqCst) && body["published"] == false;
                let answer: Response = if refused {
                    (
                        StatusCode::FORBIDDEN,
                        Json(json!({"status": 403, "reason": "Your viewing time is over"})),
                    )
                        .into_response()
                } else {
                    Json(body).into_response()
                };
                answer
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_html_shows_server_side_stops_and_plays_again() {
    if !browser_test_runs("player_html_shows_server_side_stops_and_plays_again") {
        return;
    }
    let refuse = Arc::new(AtomicBool::new(false));
    let hooks = keepalive_backend(refuse.clone()).await;
    let server = TestServer::start_with(
        &format!(
            "{LOOPBACK}rest_api_https_port=0\nkeep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=500\n"
        ),
        Some(&format!(
            "[apps.defaultApp]\nurl = \"{hooks}\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\nrestOnError = \"FAIL\"\nrestExclude = \"sdp\"\n"
        )),
    );
    let pages = serve_sdk().await;
    // The project's own WHIP page publishes Chromium's camera; the SDK's player plays it.
    let publisher = Browser::start().await;
    publisher
        .publish_with_page(&server.url("/publish.html"), "sdkplay")
        .await;
    let page = Browser::start().await;
    page.page()
        .goto(&format!(
            "http://{pages}/examples/demo/streaming/player/player.html?streamName=sdkplay"
        ))
        .await
        .unwrap();
    let ws = server.ws.expect("ws");
    page.js(&format!(
        "document.getElementById('url').value = 'ws://{ws}'; return 0;"
    ))
    .await;
    let status_is = |status: &str| format!("return {} === '{status}';", text_of("#status"));
    page.click("playBtn").await;
    until_true(&page, &status_is("PLAYING"), "play").await;
    page.wait_decoding_in("#remoteVideo video").await;
    page.screenshot_in("websdk", "3-player-playing").await;

    // The operator stops the publisher: the page shows FAILED and why, within a second.
    let started = Instant::now();
    let answer = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&json!({"name": "sdkplay", "published": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    until_true(
        &page,
        &format!(
            "return {} === 'FAILED' && {} === 'Stopped by publisher stop';",
            text_of("#status"),
            text_of("#info")
        ),
        "publisher terminated",
    )
    .await;
    let shown_after = started.elapsed();
    assert!(
        shown_after < Duration::from_secs(1),
        "shown after {shown_after:?}"
    );
    eprintln!("player.html showed 'Stopped by publisher stop' {shown_after:?} after the terminate");
    page.screenshot_in("websdk", "4-player-stopped-by-publisher-stop")
        .await;

    // The publisher is back; one click on Start plays again, on the same session.
    publisher.wait_status("FAILED").await;
    publisher.click("start").await;
    publisher.wait_status("PUBLISHING").await;
    let label = page.js(&format!("return {};", text_of("#playBtn"))).await;
    assert_eq!(label, "Start");
    page.click("playBtn").await;
    until_true(&page, &status_is("PLAYING"), "play again").await;
    page.wait_decoding_in("#remoteVideo video").await;
    page.screenshot_in("websdk", "5-player-playing-again").await;

    // The app's web server refuses the player's keep-alive: the page shows its reason.
    refuse.store(true, Ordering::SeqCst);
    until_true(
        &page,
        &format!(
            "return ({s} === 'FAILED' && {i} === 'Your viewing time is over') || [{s}, {i}];",
            s = text_of("#status"),
            i = text_of("#info")
        ),
        "keep-alive 403",
    )
    .await;
    page.screenshot_in("websdk", "6-player-stopped-by-keepalive")
        .await;
    refuse.store(false, Ordering::SeqCst);

    // A publisher of the project's own WHIP client (synthetic media) plays in the SDK too.
    publisher.click("stop").await;
    publisher.wait_status("UNPUBLISHED").await;
    let synthetic = Client::new()
        .unwrap()
        .publish(&server.url("/whip/sdkplay"), SyntheticMedia::default())
        .await
        .unwrap();
    page.click("playBtn").await;
    until_true(&page, &status_is("PLAYING"), "play the WHIP client").await;
    until_true(
        &page,
        "const v = document.querySelector('#remoteVideo video'); return !!v && !!v.srcObject && v.srcObject.getTracks().length === 2;",
        "tracks of the WHIP client",
    )
    .await;
    synthetic.hang_up().await.unwrap();
    until_true(&page, &status_is("FAILED"), "WHIP client gone").await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
}
