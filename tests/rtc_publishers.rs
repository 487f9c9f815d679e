//! Publishers on the sans-I/O engine (`media_rtc_publishers`, the default with the mux
//! socket): a webrtc-rs publisher's media reaches players through it; the server asks it for
//! key frames, NACKs the packets it lost (and counts them lost), sends it receiver reports;
//! its RTCP BYE alone ends it, a terminate tells it with the server's BYE, and an end leaves
//! no stream, peer, task or descriptor behind.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::TestServer;
use sluice_client::{Client, ClientSession, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);
const RTC_PUBLISHERS: &str =
    "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_rtc_publishers=true\n";

/// The SSRCs `session` sends.
async fn sending_ssrcs(session: &ClientSession) -> Vec<u32> {
    let mut ssrcs = Vec::new();
    for sender in session.pc.get_senders().await {
        ssrcs.extend(
            sender
                .get_parameters()
                .await
                .encodings
                .iter()
                .map(|e| e.ssrc),
        );
    }
    ssrcs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_on_the_sansio_engine_is_relayed_asked_for_key_frames_and_nacked() {
    let server = TestServer::start_with(RTC_PUBLISHERS, None);
    let client = Client::new().unwrap();
    // One video packet in 40 never leaves the publisher: the server must see the gaps.
    let media = SyntheticMedia {
        lose_every: 40,
        ..SyntheticMedia::default()
    };
    let publisher = client
        .publish(&server.url("/whip/ingest"), media)
        .await
        .unwrap();
    let answer = publisher.pc.remote_description().await.unwrap().sdp;
    assert!(
        answer.contains("a=ice-lite"),
        "not the sans-I/O engine's answer: {answer}"
    );
    let player = client.play(&server.url("/whep/ingest")).await.unwrap();
    assert!(
        player.wait_packets(300, WAIT).await,
        "{}",
        server.why_no_media(&player, &publisher).await
    );
    let found = server.streams_found().await;
    assert!(found.contains("PUBLISHING"), "{found}");
    assert_eq!(server.runtime().await["peerConnections"], 2);
    let counters = &publisher.counters;
    let fed_back = server
        .eventually(WAIT, || async {
            counters.keyframe_requests.load(Ordering::Relaxed) > 0
                && counters.nacked.load(Ordering::Relaxed) > 0
                && counters.receiver_reports.load(Ordering::Relaxed) > 0
        })
        .await;
    assert!(
        fed_back,
        "key frame requests {}, packets NACKed {}, receiver reports {}",
        counters.keyframe_requests.load(Ordering::Relaxed),
        counters.nacked.load(Ordering::Relaxed),
        counters.receiver_reports.load(Ordering::Relaxed)
    );
    // Never sent again (the publisher never sent them): lost, as the relay counts.
    let lost = server.metric("sluice_relay_lost_packets_total").await;
    let left_out = counters.lost_on_purpose.load(Ordering::Relaxed) as f64;
    assert!(
        lost >= 1.0 && lost <= left_out,
        "the relay counted {lost} lost, the publisher left out {left_out}"
    );
    // The publisher's own key frame request path: a player's PLI reaches it.
    let before = counters.keyframe_requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let video_ssrc = player.counters.video.newest().expect("video seen").ssrc;
    player.request_keyframe(video_ssrc).await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async {
                counters.keyframe_requests.load(Ordering::Relaxed) > before
            })
            .await,
        "the player's PLI did not reach the publisher"
    );
    // The publisher's BYE alone (no DELETE, the connection left open) ends it, and its
    // player hears of the end.
    let ssrc = sending_ssrcs(&publisher).await[0];
    publisher.say_goodbye(ssrc).await.unwrap();
    assert!(player.wait_ended(WAIT).await.is_some(), "player not told");
    nothing_left(&server).await;
    publisher.close().await;
}

/// A terminate from the REST API tells the publisher (the server's BYE) and ends its player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_publisher_on_the_sansio_engine_is_told_and_leaves_nothing() {
    let server = TestServer::start_with(RTC_PUBLISHERS, None);
    let client = Client::new().unwrap();
    let (publisher, player) = server.publisher_and_player(&client, "ended", 50).await;
    let terminated = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&serde_json::json!({ "name": "ended", "published": true }))
        .send()
        .await
        .unwrap();
    assert!(terminated.status().is_success(), "{terminated:?}");
    assert!(
        publisher.wait_ended(WAIT).await.is_some(),
        "publisher not told"
    );
    assert!(player.wait_ended(WAIT).await.is_some(), "player not told");
    nothing_left(&server).await;
}

/// Twenty publish/play/stop cycles, the publisher leaving by `DELETE`, by BYE alone and by
/// a terminate in turn, leave no more tokio tasks and file descriptors than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_publisher_cycles_leave_nothing_behind() {
    let server = TestServer::start_with(RTC_PUBLISHERS, None);
    let client = Client::new().unwrap();
    cycle(&server, &client, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.runtime().await;
    for i in 1..=20 {
        cycle(&server, &client, i).await;
    }
    let settled = server.back_to(&baseline, Duration::from_secs(15)).await;
    assert!(
        settled,
        "baseline {baseline}, after {}",
        server.runtime().await
    );
}

async fn cycle(server: &TestServer, client: &Client, i: usize) {
    let name = format!("pub{}", i % 3);
    let (publisher, player) = server.publisher_and_player(client, &name, 5).await;
    match i % 3 {
        0 => {
            publisher.hang_up().await.unwrap();
        }
        1 => {
            let ssrc = sending_ssrcs(&publisher).await[0];
            publisher.say_goodbye(ssrc).await.unwrap();
        }
        _ => {
            server
                .http_client
                .post(server.url("/rest-api/stream/terminate"))
                .json(&serde_json::json!({ "name": name, "published": true }))
                .send()
                .await
                .unwrap();
        }
    }
    assert!(
        player.wait_ended(WAIT).await.is_some(),
        "cycle {i}: player not told"
    );
    publisher.close().await;
    player.close().await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await,
        "cycle {i}: streams left: {}",
        server.streams_found().await
    );
}

/// Waits until the server holds no stream and no peer connection.
async fn nothing_left(server: &TestServer) {
    assert!(
        server
            .eventually(WAIT, || async {
                let now = server.runtime().await;
                now["streams"] == 0 && now["peerConnections"] == 0
            })
            .await,
        "{}",
        server.runtime().await
    );
}
