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

/// A page that publishes its camera to `?whip=` and plays `?whep=` back, by `fetch`, as the
/// ecosystem's clients do: each offer goes out at once, before ICE gathering ends, and the
/// candidates follow by `PATCH` (`If-Match` with the `ETag` of the `201`). `restart()` does
/// an ICE restart of the publisher (`restart('player')`, of the player) as RFC 9725 §4.3.2
/// describes, and `subscribe()` opens the
/// player's WHEP event stream as the draft's clients do.
const PAGE: &str = r#"<!DOCTYPE html>
<html><body><video id="video" autoplay muted playsinline></video>
<script>
const params = new URLSearchParams(location.search);
window.result = {patches: [], events: [], playerStates: []};
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise(done => {
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
    setTimeout(done, 3000);
  });
}
const ice = sdp => ({ufrag: /a=ice-ufrag:(.*)/.exec(sdp)[1].trim(), pwd: /a=ice-pwd:(.*)/.exec(sdp)[1].trim()});
function firstSection(sdp) {
  const lines = sdp.split('\r\n');
  const m = lines.findIndex(l => l.startsWith('m='));
  const next = lines.findIndex((l, i) => i > m && l.startsWith('m='));
  return lines.slice(m, next < 0 ? undefined : next);
}
// RFC 8840: the credentials, the first (bundle-tagged) section, its candidates.
function fragment(sdp, candidates) {
  const {ufrag, pwd} = ice(sdp);
  const section = firstSection(sdp);
  const mid = section.find(l => l.startsWith('a=mid:'));
  return [`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`, section[0], mid,
    ...candidates.map(c => 'a=' + c), 'a=end-of-candidates', ''].join('\r\n');
}
// The server's fragment applied to the answer in force: new credentials and candidates.
function restartedAnswer(answer, frag) {
  const {ufrag, pwd} = ice(frag);
  const candidates = frag.split('\r\n').filter(l => l.startsWith('a=candidate:'));
  const out = [];
  let sections = 0;
  const close = () => {
    if (sections === 0) return;
    out.push(`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`);
    if (sections === 1) out.push(...candidates, 'a=end-of-candidates');
  };
  for (const line of answer.split('\r\n')) {
    if (!line) continue;
    if (line.startsWith('m=')) { close(); sections++; }
    if (/^a=(ice-ufrag|ice-pwd|candidate):/.test(line) || line === 'a=end-of-candidates') continue;
    out.push(line);
  }
  close();
  return out.join('\r\n') + '\r\n';
}
async function exchange(url, pc) {
  const candidates = [];
  pc.addEventListener('icecandidate', e => e.candidate && e.candidate.candidate && e.candidate.sdpMLineIndex === 0 && candidates.push(e.candidate.candidate));
  await pc.setLocalDescription(await pc.createOffer());
  window.result.offeredBeforeGathered = (window.result.offeredBeforeGathered ?? true) && pc.iceGatheringState !== 'complete';
  const answer = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
  if (answer.status !== 201) throw new Error('answered ' + answer.status);
  const session = {
    location: new URL(answer.headers.get('Location'), url).href,
    etag: answer.headers.get('ETag'),
    link: answer.headers.get('Link'),
  };
  await pc.setRemoteDescription({type: 'answer', sdp: await answer.text()});
  await gathered(pc);
  window.result.trickled = (window.result.trickled || 0) + candidates.length;
  const patched = await fetch(session.location, {method: 'PATCH',
    headers: {'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': session.etag},
    body: fragment(pc.localDescription.sdp, candidates)});
  window.result.patches.push(patched.status);
  return session;
}
window.run = async function () {
  try {
    const camera = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
    const publisher = new RTCPeerConnection();
    window.publisher = publisher;
    camera.getTracks().forEach(t => publisher.addTransceiver(t, {direction: 'sendonly'}));
    window.publishSession = await exchange(params.get('whip'), publisher);
    window.result.publishLocation = new URL(window.publishSession.location).pathname;
    await new Promise(r => setTimeout(r, 1500));
    const player = new RTCPeerConnection();
    window.player = player;
    player.addTransceiver('video', {direction: 'recvonly'});
    player.addTransceiver('audio', {direction: 'recvonly'});
    player.ontrack = e => { document.getElementById('video').srcObject = e.streams[0]; };
    player.onconnectionstatechange = () => window.result.playerStates.push(player.connectionState);
    window.playSession = await exchange(params.get('whep'), player);
    window.result.playLocation = new URL(window.playSession.location).pathname;
    window.result.done = true;
  } catch (e) {
    window.result.error = String(e);
  }
};
async function transport(pc) {
  for (const s of (await pc.getStats()).values())
    if (s.type === 'transport') return {ufrag: s.iceLocalUsernameFragment, state: s.iceState, sent: s.bytesSent, received: s.bytesReceived};
  return {};
}
window.restart = async function (which = 'publisher') {
  try {
    const pc = window[which], session = which === 'player' ? window.playSession : window.publishSession;
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const offer = pc.localDescription.sdp;
    const candidates = firstSection(offer).filter(l => l.startsWith('a=candidate:')).map(l => l.slice(2));
    const answer = await fetch(session.location, {method: 'PATCH',
      headers: {'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*'},
      body: fragment(offer, candidates)});
    if (answer.status !== 200) throw new Error('restart answered ' + answer.status + ': ' + await answer.text());
    const frag = await answer.text();
    session.etag = answer.headers.get('ETag');
    await pc.setRemoteDescription({type: 'answer', sdp: restartedAnswer(pc.currentRemoteDescription.sdp, frag)});
    window.result.restart = {ufrag: ice(offer).ufrag, serverUfrag: ice(frag).ufrag, etag: session.etag};
  } catch (e) {
    window.result.restartError = String(e);
  }
};
window.publisherTransport = () => transport(window.publisher);
window.playerTransport = () => transport(window.player);
window.subscribe = async function () {
  try {
    const link = window.playSession.link.split(',').map(l => l.trim())
      .find(l => l.includes('rel="urn:ietf:params:whep:ext:core:server-sent-events"'));
    const url = new URL(/<([^>]*)>/.exec(link)[1], window.playSession.location).href;
    const created = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(['active', 'inactive', 'viewercount'])});
    if (created.status !== 201) throw new Error('subscribe answered ' + created.status);
    const source = new EventSource(new URL(created.headers.get('Location'), url).href);
    for (const name of ['active', 'inactive', 'viewercount'])
      source.addEventListener(name, e => window.result.events.push([name, JSON.parse(e.data)]));
    source.onerror = () => source.close();
  } catch (e) {
    window.result.subscribeError = String(e);
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
    // Both offers went out before gathering ended; the candidates followed by PATCH.
    assert_eq!(result["offeredBeforeGathered"], true, "{result}");
    assert_eq!(result["patches"], serde_json::json!([204, 204]), "{result}");
    assert!(result["trickled"].as_u64().unwrap() >= 2, "{result}");
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

async fn find(server: &TestServer, filter: Value) -> Vec<Value> {
    let response = server
        .http_client
        .post(server.url("/rest-api/stream/find"))
        .json(&filter)
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return Vec::new();
    }
    response.json().await.unwrap()
}

/// What the page's `restart()` reports once it has finished.
async fn restarted(page: &Browser) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = page.js("return window.result;").await;
        assert!(result.get("restartError").is_none(), "{result}");
        if let Some(restart) = result.get("restart") {
            return restart.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the restart did not finish: {result}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the page's `transport` (`publisherTransport` or `playerTransport`) runs on the
/// restart's credentials, connected, its byte `counter` past `before`'s, with 30 frames
/// decoded since `frames_before`; the transport as it is when not yet.
async fn on_new_session(
    page: &Browser,
    transport: &str,
    counter: &str,
    before: &Value,
    restart: &Value,
    frames_before: u64,
) -> Result<(), Value> {
    let now = page.js(&format!("return window.{transport}();")).await;
    if now["ufrag"] == restart["ufrag"]
        && now["state"] == "connected"
        && now[counter].as_u64() > before[counter].as_u64()
        && frames(page).await > frames_before + 30
    {
        Ok(())
    } else {
        Err(now)
    }
}

/// Frames the page's player has decoded so far.
async fn frames(page: &Browser) -> u64 {
    page.js("return document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames;")
        .await
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_restarts_ice_mid_stream_and_keeps_its_stream_and_its_player() {
    if !browser_test_runs("a_publisher_restarts_ice_mid_stream_and_keeps_its_stream_and_its_player")
    {
        return;
    }
    let origin = serve_page().await;
    let server = TestServer::start("rest_api_https_port=0\n");
    let page = Browser::start().await;
    let result = run_page(&page, origin, &server, "restarted").await;
    assert_eq!(result["done"], true, "{result}");
    page.wait_decoding_in("#video").await;
    page.js("window.subscribe(); return 0;").await;
    let publisher = find(
        &server,
        serde_json::json!({"name": "restarted", "published": true}),
    )
    .await;
    assert_eq!(publisher.len(), 1);
    let publisher_id = publisher[0]["mediaSessionId"].clone();
    let player = find(
        &server,
        serde_json::json!({"name": "restarted", "published": false}),
    )
    .await;
    let player_id = player[0]["mediaSessionId"].clone();
    let before = page.js("return window.publisherTransport();").await;
    let frames_before = frames(&page).await;

    page.js("window.restart(); return 0;").await;
    let restart = restarted(&page).await;
    assert_ne!(restart["ufrag"], before["ufrag"], "{restart} {before}");
    // The new ICE session carries the media: the publisher's transport runs on the new
    // credentials, and the stream, its id and its player stay throughout.
    let deadline = Instant::now() + WAIT;
    loop {
        let publishers = find(
            &server,
            serde_json::json!({"name": "restarted", "published": true}),
        )
        .await;
        assert_eq!(publishers.len(), 1, "one publisher throughout");
        assert_eq!(publishers[0]["mediaSessionId"], publisher_id);
        let players = find(
            &server,
            serde_json::json!({"name": "restarted", "published": false}),
        )
        .await;
        assert_eq!(players.len(), 1, "the player never drops");
        assert_eq!(players[0]["mediaSessionId"], player_id);
        let Err(now) = on_new_session(
            &page,
            "publisherTransport",
            "sent",
            &before,
            &restart,
            frames_before,
        )
        .await
        else {
            break;
        };
        assert!(
            Instant::now() < deadline,
            "media did not continue on the new ICE session: {now} (before {before}, restart {restart})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Media still arrives after the switch: more frames decoded, time moving on.
    let frames_after = frames(&page).await;
    page.wait_decoding_in("#video").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        frames(&page).await > frames_after,
        "frames keep coming after the restart"
    );
    let result = page.js("return window.result;").await;
    assert!(
        !result["playerStates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s != "connecting" && s != "connected"),
        "the player never left connected: {result}"
    );
    page.screenshot_in("cors", "2-after-ice-restart").await;

    // The player's WHEP event stream: active, one viewer, then the publisher's stop.
    let answer = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&serde_json::json!({"mediaSessionId": publisher_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let deadline = Instant::now() + WAIT;
    let events = loop {
        let result = page.js("return window.result;").await;
        assert!(result.get("subscribeError").is_none(), "{result}");
        let events = result["events"].as_array().unwrap().clone();
        if events.iter().any(|e| e[0] == "inactive") {
            break events;
        }
        assert!(Instant::now() < deadline, "no inactive event: {result}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(events[0], serde_json::json!(["active", {}]), "{events:?}");
    assert!(
        events.contains(&serde_json::json!(["viewercount", {"viewercount": 1}])),
        "{events:?}"
    );
    let inactive = events.iter().find(|e| e[0] == "inactive").unwrap();
    assert_eq!(
        inactive[1]["reason"], "Stopped by publisher stop",
        "{events:?}"
    );
}

/// A Chromium player on the sans-I/O engine restarts its ICE mid-stream by `PATCH`: its
/// transport moves to the new credentials, stays connected, and frames keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_the_sansio_engine_restarts_ice_mid_stream() {
    if !browser_test_runs("a_player_on_the_sansio_engine_restarts_ice_mid_stream") {
        return;
    }
    let origin = serve_page().await;
    let server =
        TestServer::start("rest_api_https_port=0\nmedia_udp_mux_port=0\nmedia_rtc_players=true\n");
    let page = Browser::start().await;
    let result = run_page(&page, origin, &server, "replayed").await;
    assert_eq!(result["done"], true, "{result}");
    page.wait_decoding_in("#video").await;
    let before = page.js("return window.playerTransport();").await;
    let frames_before = frames(&page).await;
    page.js("window.restart('player'); return 0;").await;
    let restart = restarted(&page).await;
    assert_ne!(restart["ufrag"], before["ufrag"], "{restart} {before}");
    let deadline = Instant::now() + WAIT;
    loop {
        let Err(now) = on_new_session(
            &page,
            "playerTransport",
            "received",
            &before,
            &restart,
            frames_before,
        )
        .await
        else {
            break;
        };
        assert!(
            Instant::now() < deadline,
            "media did not continue on the new ICE session: {now} (before {before}, restart {restart})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let frames_after = frames(&page).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        frames(&page).await > frames_after,
        "frames keep coming after the restart"
    );
    assert_eq!(
        server.streams().await,
        2,
        "{}",
        server.streams_found().await
    );
}
