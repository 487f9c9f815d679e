//! Codecs as clients send them: Chromium's fake camera and microphone published as VP8, VP9,
//! H.264 (constrained baseline, packetization-mode 1) and Opus, each played by Chromium
//! (frames or samples decoded, in the codec sent) and by aiortc (decoded where aiortc can;
//! refused with both codecs named where it cannot, as for VP9).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{Browser, WAIT, browser_test_runs, under_ci};
use common::TestServer;
use serde_json::{Value, json};

/// Publishes with one video codec (by `setCodecPreferences`) or audio only, and plays back.
const PAGE: &str = r#"<!DOCTYPE html>
<html><body><video id="video" autoplay muted playsinline></video>
<script>
window.result = {};
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise(done => {
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
    setTimeout(done, 3000);
  });
}
async function exchange(url, pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
  if (answer.status !== 201) throw new Error('answered ' + answer.status + ': ' + await answer.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await answer.text()});
}
window.publish = async function (url, video) {
  try {
    const media = await navigator.mediaDevices.getUserMedia({video: !!video, audio: true});
    const pc = new RTCPeerConnection();
    for (const track of media.getTracks()) {
      const transceiver = pc.addTransceiver(track, {direction: 'sendonly'});
      if (track.kind !== 'video') continue;
      const codecs = RTCRtpSender.getCapabilities('video').codecs.filter(c =>
        c.mimeType.toLowerCase() === video.mime.toLowerCase() && (c.sdpFmtpLine || '').includes(video.fmtp));
      if (!codecs.length) throw new Error('this Chromium cannot send ' + video.mime + ' ' + video.fmtp);
      transceiver.setCodecPreferences(codecs);
    }
    await exchange(url, pc);
    window.publisher = pc;
    window.result.published = true;
  } catch (e) {
    window.result.error = String(e);
  }
};
window.play = async function (url) {
  try {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', {direction: 'recvonly'});
    pc.addTransceiver('audio', {direction: 'recvonly'});
    pc.ontrack = e => { document.getElementById('video').srcObject = e.streams[0]; };
    await exchange(url, pc);
    window.player = pc;
    window.result.playing = true;
  } catch (e) {
    window.result.error = String(e);
  }
};
window.inbound = async function () {
  const out = {};
  if (!window.player) return out;
  const stats = await window.player.getStats();
  for (const s of stats.values()) {
    if (s.type !== 'inbound-rtp') continue;
    const codec = s.codecId ? stats.get(s.codecId) : null;
    out[s.kind] = {codec: codec ? codec.mimeType : null, fmtp: codec ? (codec.sdpFmtpLine || '') : null,
      frames: s.framesDecoded || 0, samples: s.totalSamplesReceived || 0};
  }
  return out;
};
</script></body></html>"#;

/// One test at a time: two Chromium codecs and an aiortc decoder fill two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serve_page() -> SocketAddr {
    let app = axum::Router::new().route(
        "/codecs.html",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The aiortc of `scripts/test` (a virtualenv under `target/`), or `None` where the test
/// may be skipped (never under CI).
fn aiortc_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/aiortc-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        !under_ci() && std::env::var_os("SLUICE_SKIP_BROWSER").is_some(),
        "{} is missing: scripts/test installs aiortc there (or set SLUICE_SKIP_BROWSER=1 outside CI)",
        python.display()
    );
    None
}

/// Runs the aiortc WHEP player against `url`; its one line of JSON.
async fn aiortc_play(python: &PathBuf, url: &str, frames: u64, samples: u64) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/whep_play.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg(url)
        .args([
            "--frames",
            &frames.to_string(),
            "--samples",
            &samples.to_string(),
        ])
        .args(["--seconds", "15"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the aiortc player");
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the aiortc player ends within its time")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("aiortc printed no result: {text:?} ({:?})", output.status))
}

async fn wait_for(page: &Browser, key: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = page.js("return window.result;").await;
        assert!(result.get("error").is_none(), "{result}");
        if result[key] == true {
            return;
        }
        assert!(Instant::now() < deadline, "no {key}: {result}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn record(server: &TestServer, name: &str, published: bool) -> Value {
    let found: Vec<Value> = server
        .http_client
        .post(server.url("/rest-api/stream/find"))
        .json(&json!({"name": name, "published": published}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    found[0].clone()
}

/// Publishes `video` (`None`: audio only) from Chromium, plays it in Chromium and aiortc.
async fn check(label: &str, video: Option<(&str, &str)>, aiortc_decodes: bool) {
    if !browser_test_runs(label) {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let python = aiortc_python();
    let server = TestServer::start("rest_api_https_port=0\n");
    let origin = serve_page().await;
    let name = label.to_string();
    let (whip, whep) = (
        server.url(&format!("/whip/{name}")),
        server.url(&format!("/whep/{name}")),
    );
    let page = Browser::start().await;
    page.page()
        .goto(&format!("http://{origin}/codecs.html"))
        .await
        .unwrap();
    let codec = video.map(|(mime, fmtp)| json!({"mime": mime, "fmtp": fmtp}));
    page.js(&format!(
        "window.publish({whip:?}, {}); return 0;",
        codec.clone().unwrap_or(Value::Null)
    ))
    .await;
    wait_for(&page, "published").await;
    page.js(&format!("window.play({whep:?}); return 0;")).await;
    wait_for(&page, "playing").await;

    // Chromium decodes, in the codec that was sent.
    let deadline = Instant::now() + WAIT;
    let inbound = loop {
        let inbound = page.js("return window.inbound();").await;
        let done = match video {
            Some(_) => inbound["video"]["frames"].as_u64().unwrap_or(0) >= 30,
            None => inbound["audio"]["samples"].as_u64().unwrap_or(0) >= 48_000,
        };
        if done {
            break inbound;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium decoded too little: {inbound}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let publisher = record(&server, &name, true).await;
    let player = record(&server, &name, false).await;
    match video {
        Some((mime, fmtp)) => {
            assert!(
                inbound["video"]["codec"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case(mime),
                "{inbound}"
            );
            assert!(
                inbound["video"]["fmtp"].as_str().unwrap().contains(fmtp),
                "{inbound}"
            );
            let short = mime.split('/').nth(1).unwrap();
            assert_eq!(publisher["videoCodec"], short, "{publisher}");
            assert_eq!(player["videoCodec"], short, "{player}");
            page.wait_decoding_in("#video").await;
        }
        None => {
            assert_eq!(inbound["audio"]["codec"], "audio/opus", "{inbound}");
            assert!(inbound.get("video").is_none(), "audio only: {inbound}");
            assert_eq!(player["audioCodec"], "opus", "{player}");
        }
    }
    page.screenshot_in("codecs", label).await;

    // aiortc decodes what it can; what it cannot, it is told.
    let Some(python) = python else { return };
    let (frames, samples) = if video.is_some() {
        (30, 0)
    } else {
        (0, 48_000)
    };
    let played = aiortc_play(&python, &whep, frames, samples).await;
    if aiortc_decodes {
        assert_eq!(played["status"], 201, "{played}");
        if video.is_some() {
            assert!(
                played["video"]["frames"].as_u64().unwrap() >= 30,
                "{played}"
            );
            assert!(played["video"]["width"].as_u64().unwrap() > 0, "{played}");
        } else {
            assert!(
                played["audio"]["samples"].as_u64().unwrap() >= 48_000,
                "{played}"
            );
        }
    } else {
        assert_eq!(played["status"], 406, "{played}");
        let (mime, _) = video.unwrap();
        let said = played["error"].as_str().unwrap();
        let short = mime.split('/').nth(1).unwrap();
        assert!(said.contains(&format!("sends video as {short}")), "{said}");
        assert!(said.contains("does not accept"), "{said}");
    }
    // Chromium's player is untouched by aiortc's refusal or departure.
    let before = page.js("return window.inbound();").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = page.js("return window.inbound();").await;
    let kind = if video.is_some() { "video" } else { "audio" };
    let field = if video.is_some() { "frames" } else { "samples" };
    assert!(
        after[kind][field].as_u64() > before[kind][field].as_u64(),
        "{before} {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_from_chromium_plays_in_chromium_and_aiortc() {
    check("vp8", Some(("video/VP8", "")), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_from_chromium_plays_in_chromium_and_aiortc_is_told_it_cannot() {
    check("vp9", Some(("video/VP9", "profile-id=0")), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_from_chromium_plays_in_chromium_and_aiortc() {
    check(
        "h264",
        Some(("video/H264", "packetization-mode=1;profile-level-id=42e01f")),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_from_chromium_plays_in_chromium_and_aiortc() {
    check("opus", None, true).await;
}
