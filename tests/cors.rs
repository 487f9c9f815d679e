//! CORS on WHIP, WHEP and the session resources: a page served from a second origin (another
//! loopback port) publishes with `fetch` + `RTCPeerConnection` in real headless Chromium and
//! plays it back, frames decoded, reading `Location` from the answer; the same page from an
//! origin not in `cors_allowed_origins` is refused; the list applies live; the REST API stays
//! same-origin.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use browser::{Browser, WAIT, browser_test_runs};
use common::{LOOPBACK, TestServer};
use serde_json::Value;

/// A page that publishes its camera to `?whip=` and plays `?whep=` back, by `fetch`.
const PAGE: &str = r#"<!DOCTYPE html>
<html><body><video id="video" autoplay muted playsinline></video>
<script>
const params = new URLSearchParams(location.search);
window.result = {};
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise(done => {
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
    setTimeout(done, 2000);
  });
}
async function exchange(url, pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
  if (answer.status !== 201) throw new Error('answered ' + answer.status);
  const location = answer.headers.get('Location');
  await pc.setRemoteDescription({type: 'answer', sdp: await answer.text()});
  return location;
}
window.run = async function () {
  try {
    const camera = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
    const publisher = new RTCPeerConnection();
    camera.getTracks().forEach(t => publisher.addTransceiver(t, {direction: 'sendonly'}));
    window.result.publishLocation = await exchange(params.get('whip'), publisher);
    await new Promise(r => setTimeout(r, 1500));
    const player = new RTCPeerConnection();
    player.addTransceiver('video', {direction: 'recvonly'});
    player.addTransceiver('audio', {direction: 'recvonly'});
    player.ontrack = e => { document.getElementById('video').srcObject = e.streams[0]; };
    window.result.playLocation = await exchange(params.get('whep'), player);
    window.result.done = true;
  } catch (e) {
    window.result.error = String(e);
  }
};
</script></body></html>"#;

async fn serve_page() -> SocketAddr {
    let app = axum::Router::new().route(
        "/cross.html",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn run_page(page: &Browser, origin: SocketAddr, server: &TestServer, name: &str) -> Value {
    let http = server.http;
    page.page()
        .goto(&format!(
            "http://{origin}/cross.html?whip=http://{http}/whip/{name}&whep=http://{http}/whep/{name}"
        ))
        .await
        .unwrap();
    page.js("window.run(); return 0;").await;
    let started = Instant::now();
    loop {
        let result = page.js("return window.result;").await;
        if result["done"] == true || result.get("error").is_some() {
            return result;
        }
        assert!(
            started.elapsed() < WAIT,
            "the page did not finish: {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn preflight(server: &TestServer, path: &str, origin: &str) -> reqwest::Response {
    server
        .http_client
        .request(reqwest::Method::OPTIONS, server.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_publishes_and_plays_and_a_forbidden_one_cannot() {
    if !browser_test_runs("a_page_on_another_origin_publishes_and_plays_and_a_forbidden_one_cannot")
    {
        return;
    }
    let allowed = serve_page().await;
    let forbidden = serve_page().await;
    let properties = |origins: &str| {
        format!("{LOOPBACK}rest_api_https_port=0\ncors_allowed_origins={origins}\n")
    };
    let server = TestServer::start_with(&properties(&format!("http://{allowed}")), None);

    // The preflight as browsers send it, and a plain OPTIONS (RFC 9725).
    let answer = preflight(&server, "/whip/x", &format!("http://{allowed}")).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    let headers = answer.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        format!("http://{allowed}").as_str()
    );
    assert_eq!(headers["accept-post"], "application/sdp");
    let allowed_headers = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for needed in ["authorization", "content-type", "if-match"] {
        assert!(allowed_headers.contains(needed), "{allowed_headers}");
    }
    let answer = preflight(&server, "/whip/x", &format!("http://{forbidden}")).await;
    assert_eq!(answer.status(), 403);
    assert!(answer.text().await.unwrap().contains("is not allowed"));
    let plain = server
        .http_client
        .request(reqwest::Method::OPTIONS, server.url("/whep/x"))
        .send()
        .await
        .unwrap();
    assert!(plain.status().is_success(), "{}", plain.status());
    assert_eq!(plain.headers()["accept-post"], "application/sdp");
    // The REST API stays same-origin.
    let answer = preflight(
        &server,
        "/rest-api/stream/find",
        &format!("http://{allowed}"),
    )
    .await;
    assert_eq!(answer.status(), 403);

    // The allowed page publishes and plays back, reading Location (exposed).
    let page = Browser::start().await;
    let result = run_page(&page, allowed, &server, "crosscam").await;
    assert_eq!(result["done"], true, "{result}");
    assert!(
        result["publishLocation"]
            .as_str()
            .unwrap()
            .starts_with("/session/"),
        "{result}"
    );
    page.wait_decoding_in("#video").await;
    page.screenshot_in("cors", "1-other-origin-plays").await;

    // The forbidden page cannot even send its offer.
    let refused = Browser::start().await;
    let result = run_page(&refused, forbidden, &server, "blocked").await;
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError")),
        "{result}"
    );
    assert_eq!(server.streams().await, 2, "only the allowed page's streams");

    // The list is live: allow the second origin too.
    std::fs::write(
        server.dir.path().join("server.properties"),
        properties(&format!("http://{allowed},http://{forbidden}")),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while !preflight(&server, "/whip/x", &format!("http://{forbidden}"))
        .await
        .status()
        .is_success()
    {
        assert!(
            Instant::now() < deadline,
            "the new list did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
