//! Codecs as clients send them: VP8, VP9, H.264 (constrained baseline and High,
//! packetization-mode 1) and Opus published by Chromium's fake devices, by aiortc and by
//! GStreamer's webrtcbin (VP8, VP9, H.264 and High), each played by Chromium (frames or
//! samples decoded, in the codec sent) and by aiortc — decoded where the player can; where
//! it cannot (aiortc and VP9, both and H.264 High), refused with a `406` naming both sides —
//! and High by Sluice's own client, whose offer takes it.

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
      frames: s.framesDecoded || 0, samples: s.totalSamplesReceived || 0,
      // For a failure's message: a starved encoder shows few packets; a missing key frame,
      // packets but no key frame decoded and PLIs sent.
      packets: s.packetsReceived || 0, lost: s.packetsLost || 0, keyFrames: s.keyFramesDecoded || 0,
      framesReceived: s.framesReceived || 0, framesDropped: s.framesDropped || 0,
      pli: s.pliCount || 0, nack: s.nackCount || 0};
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

/// Who publishes.
#[derive(Clone, Copy)]
enum Source {
    /// Chromium's fake camera in this video codec (mime, fmtp), or audio only.
    Chromium(Option<(&'static str, &'static str)>),
    /// aiortc's generated video in this codec, and audio.
    Aiortc(&'static str),
    /// GStreamer test patterns with this encoder of `gst_whip_publish.py`, and audio.
    Gstreamer(&'static str),
}

/// What the players should see: the video codec (mime, a piece of its fmtp), or none for
/// audio only; whether Chromium and aiortc can take it.
struct Expect {
    video: Option<(&'static str, &'static str)>,
    chromium_plays: bool,
    aiortc_plays: bool,
}

fn support(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

/// Debian's Python with GStreamer's introspection (what `scripts/test` installs).
fn gstreamer_python() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    let ready = std::process::Command::new(&python)
        .args([
            "-c",
            "import gi; gi.require_version('GstWebRTC', '1.0'); gi.require_version('Nice', '0.1')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "GStreamer's webrtcbin for Python is missing: scripts/test installs it (python3-gi, gir1.2-gst-plugins-bad-1.0, gir1.2-nice-0.1, gstreamer1.0-plugins-*)"
    );
    python
}

/// Starts a publisher process and waits for its `201`; the process lives until dropped.
async fn start_publisher(program: PathBuf, args: Vec<String>) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the publisher");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the publisher answers within 30 s")
        .unwrap()
        .unwrap_or_default();
    let said: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("publisher said {line:?}"));
    assert_eq!(said["status"], 201, "{said}");
    child
}

async fn wait_publishing(server: &TestServer, name: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = server
            .http_client
            .post(server.url("/rest-api/stream/find"))
            .json(&json!({"name": name, "published": true}))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let found: Vec<Value> = response.json().await.unwrap();
            if found[0]["status"] == "PUBLISHING" {
                return found[0].clone();
            }
        }
        assert!(Instant::now() < deadline, "'{name}' is not publishing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes from `source` and plays in Chromium and aiortc as `expect` says.
async fn check(label: &str, source: Source, expect: Expect) {
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
    let _publisher = match source {
        Source::Chromium(video) => {
            let codec = video.map(|(mime, fmtp)| json!({"mime": mime, "fmtp": fmtp}));
            page.js(&format!(
                "window.publish({whip:?}, {}); return 0;",
                codec.unwrap_or(Value::Null)
            ))
            .await;
            wait_for(&page, "published").await;
            None
        }
        Source::Aiortc(codec) => {
            let Some(python) = python.clone() else { return };
            let args = vec![
                support("whip_publish.py").display().to_string(),
                whip.clone(),
                "--video-codec".into(),
                codec.into(),
                "--seconds".into(),
                "60".into(),
            ];
            Some(start_publisher(python, args).await)
        }
        Source::Gstreamer(encoder) => {
            let args = vec![
                support("gst_whip_publish.py").display().to_string(),
                whip.clone(),
                "--video".into(),
                encoder.into(),
                "--seconds".into(),
                "60".into(),
            ];
            Some(start_publisher(gstreamer_python(), args).await)
        }
    };
    let publisher = wait_publishing(&server, &name).await;
    // Every section the publisher offered is a track of its stream: GStreamer's max-bundle
    // offer gives its second section port 0 with `a=bundle-only`, which is not a rejection.
    let kinds = if expect.video.is_some() {
        json!(["audio", "video"])
    } else {
        json!(["audio"])
    };
    let mut published = publisher["mediaKinds"].clone();
    if let Some(list) = published.as_array_mut() {
        list.sort_by_key(|k| k.to_string());
    }
    assert_eq!(published, kinds, "{publisher}");
    if let Some((mime, _)) = expect.video {
        assert_eq!(
            publisher["videoCodec"],
            mime.split('/').nth(1).unwrap(),
            "{publisher}"
        );
    }
    page.js(&format!("window.play({whep:?}); return 0;")).await;

    // Chromium decodes it, in the codec that was sent, or is told it cannot.
    if expect.chromium_plays {
        wait_for(&page, "playing").await;
        // Software encoders and decoders on both ends share two cores: more than WAIT.
        let deadline = Instant::now() + WAIT * 2;
        let inbound = loop {
            let inbound = page.js("return window.inbound();").await;
            let audio = inbound["audio"]["samples"].as_u64().unwrap_or(0) >= 48_000;
            let video =
                expect.video.is_none() || inbound["video"]["frames"].as_u64().unwrap_or(0) >= 30;
            if audio && video {
                break inbound;
            }
            if Instant::now() >= deadline {
                // What the server answered and what it registered, to tell a negotiation
                // that left a kind out from a stream that stalled.
                let answer = page
                    .js("return window.player.currentRemoteDescription.sdp;")
                    .await;
                let player = record(&server, &name, false).await;
                panic!(
                    "{label}: Chromium decoded too little: {inbound}\nplayer record: {player}\nanswer: {}",
                    answer.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(inbound["audio"]["codec"], "audio/opus", "{inbound}");
        let player = record(&server, &name, false).await;
        assert_eq!(player["audioCodec"], "opus", "{player}");
        match expect.video {
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
                assert_eq!(
                    player["videoCodec"],
                    mime.split('/').nth(1).unwrap(),
                    "{player}"
                );
                page.wait_decoding_in("#video").await;
            }
            None => assert!(inbound.get("video").is_none(), "audio only: {inbound}"),
        }
    } else {
        let deadline = Instant::now() + WAIT;
        let error = loop {
            let result = page.js("return window.result;").await;
            if let Some(error) = result["error"].as_str() {
                break error.to_string();
            }
            assert!(
                result["playing"] != true,
                "Chromium should have been refused: {result}"
            );
            assert!(Instant::now() < deadline, "no answer to Chromium: {result}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            error.contains("answered 406") && error.contains("does not accept"),
            "{error}"
        );
    }
    page.screenshot_in("codecs", label).await;

    // aiortc decodes what it can; what it cannot, it is told.
    let Some(python) = python else { return };
    let frames = if expect.video.is_some() { 30 } else { 0 };
    let played = aiortc_play(&python, &whep, frames, 48_000).await;
    if expect.aiortc_plays {
        assert_eq!(played["status"], 201, "{played}");
        assert!(
            played["audio"]["samples"].as_u64().unwrap() >= 48_000,
            "{played}"
        );
        if expect.video.is_some() {
            assert!(
                played["video"]["frames"].as_u64().unwrap() >= 30,
                "{played}"
            );
            assert!(played["video"]["width"].as_u64().unwrap() > 0, "{played}");
        }
    } else {
        assert_eq!(played["status"], 406, "{played}");
        let (mime, _) = expect.video.unwrap();
        let said = played["error"].as_str().unwrap();
        assert!(
            said.contains(&format!(
                "sends video as {}",
                mime.split('/').nth(1).unwrap()
            )),
            "{said}"
        );
        assert!(said.contains("does not accept"), "{said}");
    }
    if expect.chromium_plays {
        // Chromium's player is untouched by aiortc's refusal or departure.
        let before = page.js("return window.inbound();").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = page.js("return window.inbound();").await;
        assert!(
            after["audio"]["samples"].as_u64() > before["audio"]["samples"].as_u64(),
            "{before} {after}"
        );
    }
}

const VP8: (&str, &str) = ("video/VP8", "");
const VP9: (&str, &str) = ("video/VP9", "profile-id=0");
const H264: (&str, &str) = ("video/H264", "packetization-mode=1;profile-level-id=42e01f");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_from_chromium_plays_in_chromium_and_aiortc() {
    check(
        "vp8",
        Source::Chromium(Some(VP8)),
        Expect {
            video: Some(VP8),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_from_chromium_plays_in_chromium_and_aiortc_is_told_it_cannot() {
    check(
        "vp9",
        Source::Chromium(Some(VP9)),
        Expect {
            video: Some(VP9),
            chromium_plays: true,
            aiortc_plays: false,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_from_chromium_plays_in_chromium_and_aiortc() {
    check(
        "h264",
        Source::Chromium(Some(H264)),
        Expect {
            video: Some(H264),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_from_chromium_plays_in_chromium_and_aiortc() {
    check(
        "opus",
        Source::Chromium(None),
        Expect {
            video: None,
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_and_h264_from_aiortc_play_in_chromium_and_aiortc() {
    check(
        "aiortc-vp8",
        Source::Aiortc("video/VP8"),
        Expect {
            video: Some(("video/VP8", "")),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
    check(
        "aiortc-h264",
        Source::Aiortc("video/H264"),
        Expect {
            video: Some(("video/H264", "packetization-mode=1")),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_and_h264_from_gstreamer_play_in_chromium_and_aiortc() {
    check(
        "gst-vp8",
        Source::Gstreamer("VP8"),
        Expect {
            video: Some(("video/VP8", "")),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
    check(
        "gst-h264",
        Source::Gstreamer("H264"),
        Expect {
            video: Some(("video/H264", "packetization-mode=1")),
            chromium_plays: true,
            aiortc_plays: true,
        },
    )
    .await;
}

/// VP9 from GStreamer's `vp9enc`: Chromium decodes it; aiortc, which has no VP9, is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_from_gstreamer_plays_in_chromium_and_aiortc_is_told_it_cannot() {
    check(
        "gst-vp9",
        Source::Gstreamer("VP9"),
        Expect {
            video: Some(("video/VP9", "")),
            chromium_plays: true,
            aiortc_plays: false,
        },
    )
    .await;
}

/// H.264 High from GStreamer: neither Chromium here nor aiortc offers to receive High, so
/// both are refused with the reason; Sluice's own client, whose offer takes High, plays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_high_from_gstreamer_plays_where_the_offer_takes_high_and_is_refused_elsewhere() {
    check(
        "gst-h264-high",
        Source::Gstreamer("H264-high"),
        Expect {
            video: Some(("video/H264", "")),
            chromium_plays: false,
            aiortc_plays: false,
        },
    )
    .await;
    // The rest of this test has its turn too: a second encoder beside another test's
    // Chromium and GStreamer starves them on two cores.
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("");
    let args = vec![
        support("gst_whip_publish.py").display().to_string(),
        server.url("/whip/high"),
        "--video".into(),
        "H264-high".into(),
        "--seconds".into(),
        "60".into(),
    ];
    let _publisher = start_publisher(gstreamer_python(), args).await;
    wait_publishing(&server, "high").await;
    let player = sluice_client::Client::new()
        .unwrap()
        .play(&server.url("/whep/high"))
        .await
        .unwrap();
    assert!(
        player.wait_packets(100, Duration::from_secs(10)).await,
        "High reaches a player that takes it"
    );
    assert!(
        player
            .counters
            .video_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let record = record(&server, "high", false).await;
    assert_eq!(record["videoCodec"], "H264", "{record}");
}
