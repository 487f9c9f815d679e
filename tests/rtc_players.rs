//! Players on the sans-I/O engine (`media_rtc_players`): webrtc-rs clients receive the
//! publisher's media through it, a player's key frame request and NACK are answered and its
//! sender reports match its media, a player's BYE and the publisher's end stop them, and a stop leaves no task,
//! socket, route or peer behind.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::TestServer;
use sluice_client::{Client, ClientSession, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);
const RTC_PLAYERS: &str = "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_rtc_players=true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_the_sansio_engine_receive_and_stop() {
    let server = TestServer::start_with(RTC_PLAYERS, None);
    let client = Client::new().unwrap();
    let counting = Client::counting().unwrap();
    let publisher = client
        .publish(&server.url("/whip/rtc"), SyntheticMedia::default())
        .await
        .unwrap();
    let players = [
        client.play(&server.url("/whep/rtc")).await.unwrap(),
        counting.play(&server.url("/whep/rtc")).await.unwrap(),
        client.play(&server.url("/whep/rtc")).await.unwrap(),
    ];
    for player in &players {
        assert!(
            player.wait_packets(100, WAIT).await,
            "{}",
            server.why_no_media(player, &publisher).await
        );
    }
    for player in &players {
        let answer = player.pc.remote_description().await.expect("an answer").sdp;
        assert!(
            answer.contains("a=ice-lite"),
            "not the sans-I/O engine's answer: {answer}"
        );
    }
    let live = server.runtime().await;
    assert_eq!(live["peerConnections"], 4, "{live}");
    let found = server.streams_found().await;
    assert_eq!(found.matches("PLAYING").count(), 3, "{found}");
    // A player that leaves (its BYE and DTLS close) ends its stream alone.
    players[0].hang_up().await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 3 })
            .await,
        "{}",
        server.streams_found().await
    );
    // The publisher's end stops the others, and they hear of it (the server's BYE).
    publisher.hang_up().await.unwrap();
    for player in &players[1..] {
        assert!(player.wait_ended(WAIT).await.is_some(), "player not told");
    }
    nothing_left(&server).await;
}

/// Players on direct connections (`media_direct_players`, the default: ICE-lite, DTLS and
/// SRTP driven by the server itself) answer with the server's one certificate, the same
/// fingerprint for every player, where the `rtc` peer connection makes one per player; both
/// receive the publisher's media and end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_direct_connections_share_the_servers_certificate_and_receive() {
    let peer_connection = format!("{RTC_PLAYERS}media_direct_players=false\n");
    for (direct, settings) in [(true, RTC_PLAYERS), (false, peer_connection.as_str())] {
        let server = TestServer::start_with(settings, None);
        let client = Client::new().unwrap();
        let publisher = client
            .publish(&server.url("/whip/direct"), SyntheticMedia::default())
            .await
            .unwrap();
        let mut fingerprints = Vec::new();
        let mut players = Vec::new();
        for _ in 0..2 {
            let player = client.play(&server.url("/whep/direct")).await.unwrap();
            assert!(
                player.wait_packets(50, WAIT).await,
                "direct={direct}: {}",
                server.why_no_media(&player, &publisher).await
            );
            let answer = player.pc.remote_description().await.expect("an answer").sdp;
            fingerprints.push(fingerprint(&answer));
            players.push(player);
        }
        assert_eq!(
            fingerprints[0] == fingerprints[1],
            direct,
            "direct={direct}: {fingerprints:?}"
        );
        publisher.hang_up().await.unwrap();
        for player in &players {
            assert!(
                player.wait_ended(WAIT).await.is_some(),
                "direct={direct}: player not told"
            );
        }
        nothing_left(&server).await;
    }
}

/// A player whose offer carries a data channel is not served by a direct connection (it has
/// no SCTP): the `rtc` peer connection answers it — its own certificate, not the one every
/// direct player's answer names — and it receives the publisher's media all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_with_a_data_channel_keeps_the_peer_connection_and_receives() {
    use webrtc::api::APIBuilder;
    use webrtc::api::interceptor_registry::register_default_interceptors;
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::ice::mdns::MulticastDnsMode;
    use webrtc::ice::network_type::NetworkType;
    use webrtc::interceptor::registry::Registry;
    use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
    use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;

    let (server, _client, publisher, direct) = publisher_and_player("datachannel", 20).await;
    let direct_answer = direct.pc.remote_description().await.unwrap().sdp;

    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let interceptors = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(interceptors)
        .with_setting_engine(settings)
        .build();
    let pc = api.new_peer_connection(Default::default()).await.unwrap();
    for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: Vec::new(),
        };
        pc.add_transceiver_from_kind(kind, Some(init))
            .await
            .unwrap();
    }
    pc.create_data_channel("chat", None).await.unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(64);
    pc.on_track(Box::new(move |track, _, _| {
        let arrived = arrived_tx.clone();
        Box::pin(async move {
            // Bounded: a few packets are enough, and the track ends with the session.
            for _ in 0..20 {
                if track.read_rtp().await.is_err() || arrived.send(()).await.is_err() {
                    return;
                }
            }
        })
    }));
    let links =
        sluice_client::whep_offer(&server.http_client, &pc, &server.url("/whep/datachannel"))
            .await
            .unwrap();
    let answer = pc.remote_description().await.unwrap().sdp;
    assert!(answer.contains("m=application"), "{answer}");
    assert_ne!(
        fingerprint(&answer),
        fingerprint(&direct_answer),
        "answered on the server's direct certificate: {answer}"
    );
    for _ in 0..10 {
        let packet = tokio::time::timeout(WAIT, arrived.recv()).await;
        assert!(
            matches!(packet, Ok(Some(()))),
            "no media for the player with a data channel"
        );
    }
    server
        .http_client
        .delete(&links.resource)
        .send()
        .await
        .unwrap();
    pc.close().await.unwrap();
    publisher.hang_up().await.unwrap();
    nothing_left(&server).await;
}

/// Twenty publish/play/stop cycles on the sans-I/O engine leave no more tokio tasks and
/// file descriptors than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sansio_cycles_leave_nothing_behind() {
    let server = TestServer::start_with(RTC_PLAYERS, None);
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
    let name = format!("cycle{}", i % 3);
    let publisher = client
        .publish(
            &server.url(&format!("/whip/{name}")),
            SyntheticMedia::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: publish: {e}"));
    let player = client
        .play(&server.url(&format!("/whep/{name}")))
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: play: {e}"));
    assert!(
        player.wait_packets(5, WAIT).await,
        "cycle {i}: {}",
        server.why_no_media(&player, &publisher).await
    );
    if i.is_multiple_of(2) {
        player.hang_up().await.unwrap();
    }
    publisher.hang_up().await.unwrap();
    if !i.is_multiple_of(2) {
        assert!(
            player.wait_ended(WAIT).await.is_some(),
            "cycle {i}: not told"
        );
        player.close().await;
    }
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await,
        "cycle {i}: streams left"
    );
}

/// Players fed by the fan-out shards: a joining player makes the server ask the publisher
/// for a key frame, every player of several shards receives, and what the players count
/// is what the server says it forwarded (a packet written before a player's SRTP was keyed
/// is not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_players_get_a_key_frame_request_and_are_counted_exactly() {
    use std::sync::atomic::Ordering;
    let server = TestServer::start_with(RTC_PLAYERS, None);
    let client = Client::new().unwrap();
    let counting = Client::counting().unwrap();
    let publisher = client
        .publish(&server.url("/whip/sharded"), SyntheticMedia::default())
        .await
        .unwrap();
    // More players than one shard per core holds, so that several shards feed them.
    let mut players = Vec::new();
    for _ in 0..12 {
        players.push(counting.play(&server.url("/whep/sharded")).await.unwrap());
    }
    for player in &players {
        assert!(
            player.wait_packets(200, WAIT).await,
            "{}",
            server.why_no_media(player, &publisher).await
        );
    }
    assert!(
        publisher.counters.keyframe_requests.load(Ordering::Relaxed) > 0,
        "a joining player makes the server ask the publisher for a key frame"
    );
    publisher.hang_up().await.unwrap();
    for player in &players {
        assert!(player.wait_ended(WAIT).await.is_some(), "player not told");
    }
    // The BYE can overtake the last packets still queued in the players' reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted: u64 = players.iter().map(|p| p.counters.packets()).sum();
    let forwarded = server.forwarded_packets().await;
    assert!(
        (counted as f64) <= forwarded && counted as f64 >= forwarded * 0.99,
        "players counted {counted}, the server forwarded {forwarded}"
    );
    nothing_left(&server).await;
}

/// `PATCH` reaches a player on the sans-I/O engine (it answered 404 before): trickled
/// candidates for the current ICE session (204), an ICE restart (200, the engine's new
/// credentials and candidates in the fragment, a new `ETag`; the old one is refused with
/// 412), and the player's session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_the_sansio_engine_trickles_and_restarts_ice() {
    const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
    const CANDIDATE: &str = "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host generation 0\r\n";
    let (server, _client, publisher, player) = publisher_and_player("patched", 20).await;
    let patch = |if_match: String, body: String| {
        let request = server
            .http_client
            .patch(&player.links.resource)
            .header("content-type", SDPFRAG)
            .header("if-match", if_match)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    let etag = player.links.etag.clone().expect("an ETag on the 201");
    let trickled = patch(
        etag.clone(),
        format!("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{CANDIDATE}a=end-of-candidates\r\n"),
    )
    .await;
    assert_eq!(trickled.status(), 204, "{:?}", trickled.text().await);
    let answer_ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| {
                l.trim_end()
                    .strip_prefix("a=ice-ufrag:")
                    .map(str::to_string)
            })
            .expect("a ufrag")
    };
    let old_ufrag = answer_ufrag(&player.pc.remote_description().await.unwrap().sdp);
    let restarted = patch(
        "*".into(),
        format!("a=ice-ufrag:rstr\r\na=ice-pwd:restartpasswordrestartpw\r\n{CANDIDATE}"),
    )
    .await;
    assert_eq!(restarted.status(), 200);
    let new_etag = restarted.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let fragment = restarted.text().await.unwrap();
    assert_ne!(answer_ufrag(&fragment), old_ufrag, "{fragment}");
    assert!(
        fragment.contains("a=candidate:") && fragment.contains("a=mid:"),
        "{fragment}"
    );
    assert_eq!(patch(etag, CANDIDATE.into()).await.status(), 412);
    assert_eq!(patch(new_etag, CANDIDATE.into()).await.status(), 204);
    assert_eq!(
        server.streams().await,
        2,
        "{}",
        server.streams_found().await
    );
    publisher.hang_up().await.unwrap();
    nothing_left(&server).await;
}

/// A player whose client never connects costs the server nothing while it waits for it
/// (until the connect timeout stops it): its task sleeps until its next deadline, rather
/// than waking at every tick of the runtime's clock once a deadline has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_never_connects_leaves_the_server_idle() {
    let server = TestServer::start_with(RTC_PLAYERS, None);
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/idle"), SyntheticMedia::default())
        .await
        .unwrap();
    // The server's threads' context switches over two seconds: each wake-up of a task that
    // finds the runtime asleep is one.
    let pid = server.pid();
    let switches = move || -> u64 {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        threads
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .flat_map(|status| {
                let lines: Vec<u64> = status
                    .lines()
                    .filter(|l| l.starts_with("voluntary_ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .collect();
                lines
            })
            .sum()
    };
    let window = || async move {
        let before = switches();
        tokio::time::sleep(Duration::from_secs(2)).await;
        switches() - before
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publishing = window().await;
    // An offer whose peer is never told the answer: no ICE check ever comes.
    let offer = client
        .sample_offer()
        .await
        .unwrap()
        .replace("a=sendonly", "a=recvonly");
    let (status, body) = client
        .post_raw(&server.url("/whep/idle"), "application/sdp", offer)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    // Past the first sender-report deadline (1 s), with the player still waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = window().await;
    assert!(
        waiting < publishing + 600,
        "{waiting} context switches in 2 s with a player waiting, {publishing} without"
    );
    publisher.hang_up().await.unwrap();
    nothing_left(&server).await;
}

/// The RTCP a browser sends reaches the player's task: a key frame request is passed to the
/// publisher, and a BYE alone (no `DELETE`, the connection open) ends the player's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_players_key_frame_request_and_bye_reach_the_server() {
    let (server, _client, publisher, player) = publisher_and_player("rtcp", 100).await;
    let ssrc = player.counters.video.newest().expect("video came").ssrc;
    let requests = &publisher.counters.keyframe_requests;
    // The join's own request is past, and so is the publisher's spacing of them (300 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = requests.load(Ordering::Relaxed);
    player.request_keyframe(ssrc).await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async { requests.load(Ordering::Relaxed) > before })
            .await,
        "the player's PLI did not reach the publisher"
    );
    player.say_goodbye(ssrc).await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 1 })
            .await,
        "the player's BYE did not end it: {}",
        server.streams_found().await
    );
    publisher.hang_up().await.unwrap();
    nothing_left(&server).await;
}

/// A player's NACK has the packets it names sent again, from the relay's history, and every
/// second each track's sender report says what was sent: its count, and an RTP time that
/// matches the newest frame the player has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_players_nack_is_answered_and_its_sender_reports_match_its_media() {
    let (server, _client, publisher, player) = publisher_and_player("nack", 100).await;
    let video = &player.counters.video;
    let before = video.repeated();
    let newest = video.newest().expect("video came");
    // Five packets the player has had, a few frames back, then one never sent.
    let first = newest.sequence.wrapping_sub(20);
    player.request_resend(newest.ssrc, first, 5).await.unwrap();
    let resent = server
        .eventually(WAIT, || async { video.repeated() >= before + 5 })
        .await;
    assert!(resent, "{} of 5 sent again", video.repeated() - before);
    player
        .request_resend(newest.ssrc, newest.sequence.wrapping_add(5000), 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(video.repeated() - before, 5, "only what was asked and sent");

    assert!(
        server
            .eventually(WAIT, || async { video.reports().len() >= 2 })
            .await,
        "no sender reports"
    );
    let reports = video.reports();
    let (report, newest) = reports.last().cloned().unwrap();
    let newest = newest.expect("video before its report");
    assert_eq!(report.ssrc, newest.ssrc);
    // Within 100 ms (9 000 ticks at 90 kHz) of the newest frame at 30 frames a second.
    let apart = report.rtp_time.wrapping_sub(newest.timestamp) as i32;
    assert!(
        apart.abs() < 9_000,
        "RTP time {apart} ticks from the media's"
    );
    let received = player.counters.video_packets.load(Ordering::Relaxed);
    assert!(
        report.packet_count > 0 && u64::from(report.packet_count) <= received,
        "report counts {} packets, the player has {received}",
        report.packet_count
    );
    // The NTP times of two reports a second apart are about a second apart.
    let (earlier, _) = &reports[reports.len() - 2];
    let seconds = (report.ntp_time - earlier.ntp_time) as f64 / 2f64.powi(32);
    assert!((0.8..1.5).contains(&seconds), "reports {seconds} s apart");
    publisher.hang_up().await.unwrap();
    nothing_left(&server).await;
}

/// A server with its players on the sans-I/O engine, a publisher of stream `name`, and one
/// reading player that has had `packets` of its media (and the client that made both).
async fn publisher_and_player(
    name: &str,
    packets: u64,
) -> (TestServer, Client, ClientSession, ClientSession) {
    let server = TestServer::start_with(RTC_PLAYERS, None);
    let client = Client::new().unwrap();
    let (publisher, player) = server.publisher_and_player(&client, name, packets).await;
    (server, client, publisher, player)
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

/// The first certificate fingerprint of an SDP.
fn fingerprint(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| {
            l.trim_end()
                .strip_prefix("a=fingerprint:")
                .map(str::to_owned)
        })
        .expect("a fingerprint")
}
