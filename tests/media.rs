//! The media core against the real server: WHIP publish, WHEP play, relay, stops from each
//! side, republish, status streams, bad input, and fifty cycles that leave nothing behind.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestServer, read_status_events};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_play_stop_from_each_side_and_republish() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(
            &server.url("/whip/cam?app=defaultApp&room=42"),
            SyntheticMedia::default(),
        )
        .await
        .expect("publish");
    assert!(publisher.links.resource.contains("/session/"));
    let publisher_events = publisher
        .links
        .events
        .clone()
        .expect("Link to the status stream");

    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(client.play(&server.url("/whep/cam")).await.expect("play"));
    }
    for player in &players {
        assert!(
            player.wait_packets(100, WAIT).await,
            "player got {} packets",
            player.counters.packets()
        );
        assert!(
            player
                .counters
                .audio_packets
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
    assert!(
        server
            .eventually(WAIT, || async {
                publisher
                    .counters
                    .keyframe_requests
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            })
            .await,
        "a joining player makes the server ask the publisher for a key frame"
    );
    assert_eq!(server.streams().await, 4);

    // A player leaves: it ends STOPPED, the others keep playing.
    let leaving = players.remove(0);
    let leaving_events = leaving.links.events.clone().unwrap();
    let watcher = {
        let http = server.http_client.clone();
        tokio::spawn(async move { read_status_events(&http, &leaving_events, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(leaving.hang_up().await.unwrap(), 200);
    let events = watcher.await.unwrap();
    assert_eq!(events.last().unwrap()["status"], "STOPPED", "{events:?}");
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 3 })
            .await
    );
    let before = players[0].counters.packets();
    assert!(
        players[0].wait_packets(before + 50, WAIT).await,
        "others keep playing"
    );

    // The publisher leaves: it ends UNPUBLISHED, its players FAILED / Stopped by publisher stop,
    // and they learn it from the server's BYE.
    let player_events = players[0].links.events.clone().unwrap();
    let publisher_watch = {
        let http = server.http_client.clone();
        tokio::spawn(async move { read_status_events(&http, &publisher_events, WAIT).await })
    };
    let player_watch = {
        let http = server.http_client.clone();
        tokio::spawn(async move { read_status_events(&http, &player_events, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(publisher.hang_up().await.unwrap(), 200);
    let events = publisher_watch.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["status"], "UNPUBLISHED", "{events:?}");
    assert_eq!(last["name"], "cam");
    let events = player_watch.await.unwrap();
    assert_eq!(events.last().unwrap()["status"], "FAILED");
    assert_eq!(events.last().unwrap()["info"], "Stopped by publisher stop");
    for player in &players {
        assert!(
            player.wait_ended(WAIT).await.is_some(),
            "player saw the server's BYE"
        );
    }
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
    for player in &players {
        player.close().await;
    }

    // Resume: the same name publishes again at once, and plays again.
    let again = client
        .publish(&server.url("/whip/cam"), SyntheticMedia::default())
        .await
        .expect("republish");
    let player = client
        .play(&server.url("/whep/cam"))
        .await
        .expect("play again");
    assert!(player.wait_packets(50, WAIT).await);
    player.hang_up().await.unwrap();
    again.hang_up().await.unwrap();
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stream_shows_the_lifecycle() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/lifecycle"), SyntheticMedia::default())
        .await
        .unwrap();
    let url = publisher.links.events.clone().unwrap();
    let http = server.http_client.clone();
    let watcher = tokio::spawn(async move { read_status_events(&http, &url, WAIT).await });
    assert!(
        server
            .eventually(WAIT, || async {
                let r = server.runtime().await;
                r["streams"] == 1
            })
            .await
    );
    // PUBLISHING is reached once media flows; a player can then join.
    let player = client.play(&server.url("/whep/lifecycle")).await.unwrap();
    assert!(player.wait_packets(10, WAIT).await);
    publisher.hang_up().await.unwrap();
    let events = watcher.await.unwrap();
    let statuses: Vec<_> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect();
    assert!(statuses.contains(&"PUBLISHING".to_string()), "{statuses:?}");
    assert_eq!(statuses.last().unwrap(), "UNPUBLISHED");
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["eventId"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids increase: {ids:?}"
    );
    player.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = TestServer::start("max_sdp_size=8192\n");
    let client = Client::new().unwrap();
    let whip = server.url("/whip/bad");
    let offer = client.sample_offer().await.unwrap();

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "wrong content type",
            "text/plain",
            offer.clone(),
            415,
            "application/sdp",
        ),
        ("not SDP", "application/sdp", "hello".into(), 400, "not SDP"),
        (
            "unparsable",
            "application/sdp",
            "v=0\r\nnonsense\r\n".into(),
            400,
            "SDP",
        ),
        (
            "no media",
            "application/sdp",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".into(),
            400,
            "no audio or video",
        ),
        (
            "too big",
            "application/sdp",
            "v=0\r\n".to_string() + &"a=x\r\n".repeat(4000),
            413,
            "",
        ),
    ];
    for (what, content_type, body, status, says) in cases {
        let (got, text) = client.post_raw(&whip, content_type, body).await.unwrap();
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(says), "{what}: '{text}' should say '{says}'");
    }
    let (status, text) = client
        .post_raw(
            &server.url("/whip/bad?app=nope"),
            "application/sdp",
            offer.clone(),
        )
        .await
        .unwrap();
    assert_eq!((status, text.trim()), (400, "unknown app 'nope'"));
    let err = client
        .play(&server.url("/whep/nobody"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(404), "{err}");
    let gone = server
        .http_client
        .delete(server.url("/session/00000000-0000-0000-0000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let gone = server
        .http_client
        .delete(server.url("/session/garbage"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(server.streams().await, 0, "bad requests registered nothing");

    // A second publisher on a live name is refused and the first keeps publishing.
    let first = client
        .publish(&whip, SyntheticMedia::default())
        .await
        .unwrap();
    let second = client
        .publish(&whip, SyntheticMedia::default())
        .await
        .err()
        .unwrap();
    assert_eq!(second.status(), Some(409), "{second}");
    assert_eq!(server.streams().await, 1);
    let player = client.play(&server.url("/whep/bad")).await.unwrap();
    assert!(player.wait_packets(10, WAIT).await);
    player.hang_up().await.unwrap();
    first.hang_up().await.unwrap();
}

/// The mux socket's output batched, as by default (GSO runs and `sendmmsg`): ICE, DTLS and
/// media all leave through the batching queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_over_one_muxed_udp_port_and_pages_over_https() {
    mux_media_and_pages("").await;
}

/// The same with one system call per datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_over_one_muxed_udp_port_sent_one_by_one() {
    mux_media_and_pages("media_udp_batch=false\n").await;
}

async fn mux_media_and_pages(extra: &str) {
    let server = TestServer::start_with(
        &format!("ice_loopback_only=true\nmedia_udp_mux_port=0\n{extra}"),
        None,
    );
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/mux"), SyntheticMedia::default())
        .await
        .unwrap();
    let players = [
        client.play(&server.url("/whep/mux")).await.unwrap(),
        client.play(&server.url("/whep/mux")).await.unwrap(),
    ];
    for player in &players {
        assert!(player.wait_packets(50, WAIT).await);
    }
    let https = server.https.expect("https listener");
    let page = server
        .http_client
        .get(format!("https://{https}/publish.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("sluice.js"));
    publisher.hang_up().await.unwrap();
    for player in &players {
        assert!(player.wait_ended(WAIT).await.is_some());
    }
}

/// The defect of the system we model is a session that outlives its stop. After fifty
/// publish/play/stop cycles, the registry is empty and the process holds no more tokio tasks
/// and file descriptors than before. On webrtc-rs players with a socket per session, whose
/// tasks and sockets are each player's own (`tests/rtc_players.rs` has the same for the
/// default players).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cycles_leave_nothing_behind() {
    let server = TestServer::start("media_udp_mux_port=\n");
    let client = Client::new().unwrap();
    // One warm-up cycle so that lazily created process-wide resources exist before the baseline.
    cycle(&server, &client, 0).await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.runtime().await;
    let (base_tasks, base_fds) = (
        baseline["aliveTasks"].as_u64().unwrap(),
        baseline["openFds"].as_u64().unwrap(),
    );
    for i in 1..=50 {
        let live = cycle(&server, &client, i).await;
        // The measure sees live sessions, so it would see one that outlived its stop.
        assert!(
            live["aliveTasks"].as_u64().unwrap() > base_tasks + 4,
            "cycle {i}: {live}"
        );
        assert!(
            live["openFds"].as_u64().unwrap() > base_fds,
            "cycle {i}: {live}"
        );
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

/// One publish/play/stop cycle; returns what the server held while both streams were live.
async fn cycle(server: &TestServer, client: &Client, i: usize) -> serde_json::Value {
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
    if !player.wait_packets(5, WAIT).await {
        panic!(
            "cycle {i}: no media; {}",
            server.why_no_media(&player, &publisher).await
        );
    }
    let live = server.runtime().await;
    // Alternate who leaves first: the player, or the publisher taking the player down.
    if i.is_multiple_of(2) {
        player.hang_up().await.unwrap();
    }
    publisher.hang_up().await.unwrap();
    if !i.is_multiple_of(2) {
        assert!(
            player.wait_ended(WAIT).await.is_some(),
            "cycle {i}: player not told"
        );
        player.close().await;
    }
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await,
        "cycle {i}: streams left"
    );
    live
}

/// No answer leaves before the server's ICE agent holds the offer's credentials: checks that
/// arrive earlier are discarded, and a webrtc-rs client (an edge, the load generator) gives
/// a pair up after seven unanswered checks, which under load left players `Connecting` for
/// good. The server's debug log gives, for every answer, the ICE state it left in. webrtc-rs
/// sessions (an ICE-lite `rtc` session answers checks from the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_leaves_before_ice_holds_the_offers_credentials() {
    const PLAYS: usize = 40;
    let server = TestServer::start_logged(
        &format!(
            "{}media_rtc_players=false\nmedia_rtc_publishers=false\n",
            common::LOOPBACK
        ),
        &format!("{},sluice::media=debug", common::QUIET_LOG),
        &[],
    );
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/early"), SyntheticMedia::default())
        .await
        .unwrap();
    // The players stay: a server busy relaying to them is where the agent's task runs late.
    let mut players = Vec::new();
    for i in 0..PLAYS {
        let player = client
            .play(&server.url("/whep/early"))
            .await
            .unwrap_or_else(|e| panic!("play {i}: {e}"));
        players.push(player);
    }
    for player in &players {
        player.hang_up().await.unwrap();
    }
    publisher.hang_up().await.unwrap();
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    let answers: Vec<&str> = log.lines().filter(|l| l.contains("answer ready")).collect();
    assert_eq!(answers.len(), PLAYS + 1, "{log}");
    let early: Vec<&&str> = answers.iter().filter(|l| l.contains("ice=new")).collect();
    assert!(
        early.is_empty(),
        "{} answers left early: {early:?}",
        early.len()
    );
}

/// The load generator's players (`Client::counting`) count their media from the clear
/// header, in batched reads, without handing it to webrtc-rs — and still count what the
/// server forwarded to them, and still see its BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_players_count_what_the_server_forwarded_unopened() {
    let server = TestServer::start("");
    let client = Client::counting().unwrap();
    let publisher = client
        .publish(&server.url("/whip/counted"), SyntheticMedia::default())
        .await
        .unwrap();
    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(client.play(&server.url("/whep/counted")).await.unwrap());
    }
    for player in &players {
        assert!(
            player.wait_packets(300, WAIT).await,
            "{}",
            server.why_no_media(player, &publisher).await
        );
    }
    publisher.hang_up().await.unwrap();
    for player in &players {
        assert!(
            player.wait_ended(WAIT).await.is_some(),
            "the BYE still arrives"
        );
    }
    // The BYE can overtake the last packets still queued in the players' reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted: u64 = players.iter().map(|p| p.counters.packets()).sum();
    let unopened: u64 = players
        .iter()
        .map(|p| p.counters.counted_unopened.load(Ordering::Relaxed))
        .sum();
    // Through webrtc-rs: each player's first packet of each kind, and any before it attached.
    assert!(
        unopened * 100 >= counted * 95,
        "{unopened} of {counted} counted unopened"
    );
    assert!(
        client.counting_syscalls() < unopened,
        "{} reads for {unopened} packets: not batched",
        client.counting_syscalls()
    );
    let forwarded = server.forwarded_packets().await;
    // Loopback loses nothing: every packet the server counts as forwarded arrives (which
    // it did not while packets written before a player's SRTP was keyed were counted).
    assert!(
        (counted as f64) <= forwarded && counted as f64 >= forwarded * 0.99,
        "players counted {counted}, the server forwarded {forwarded}"
    );
}
