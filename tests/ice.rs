//! The session resource as RFC 9725 and the WHEP draft's clients use it: `PATCH` with
//! trickled candidates and ICE restarts (`ETag`, `If-Match`, `412`/`428`), bad input
//! refused without touching any session, `Link: rel="ice-server"` from the live
//! `ice_servers`, and the WHEP server-sent-events extension (`active`, `viewercount`, and a
//! stop arriving as `inactive`).

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use futures::StreamExt;
use serde_json::Value;
use sluice_client::{Client, SyntheticMedia};

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
const CANDIDATE: &str = "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host generation 0\r\n";

async fn patch(
    server: &TestServer,
    url: &str,
    if_match: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = server
        .http_client
        .patch(url)
        .header("content-type", SDPFRAG)
        .body(body.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.unwrap()
}

async fn publishers(server: &TestServer, name: &str) -> Vec<Value> {
    let response = server
        .http_client
        .post(server.url("/rest-api/stream/find"))
        .json(&serde_json::json!({"name": name, "published": true}))
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return Vec::new();
    }
    response.json::<Vec<Value>>().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_trickles_restarts_and_refuses_bad_input_without_touching_a_session() {
    let server = TestServer::start("max_sdp_size=16384\n");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/trickled"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&server.url("/whep/trickled")).await.unwrap();
    assert!(player.wait_packets(20, Duration::from_secs(10)).await);
    let resource = publisher.links.resource.clone();
    let etag = publisher.links.etag.clone().expect("an ETag on the 201");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong tag: {etag}"
    );
    let player_etag = player.links.etag.clone().unwrap();
    assert_ne!(etag, player_etag);

    // Candidates for the current ICE session: 204, no body, no ETag.
    let answer = patch(
        &server,
        &resource,
        Some(&etag),
        &format!("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{CANDIDATE}a=end-of-candidates\r\n"),
    )
    .await;
    assert_eq!(answer.status(), 204);
    assert!(answer.headers().get("etag").is_none());

    // Each refusal is clear and changes nothing.
    let cases: Vec<(Option<&str>, &str, &str, u16, &str)> = vec![
        (None, SDPFRAG, CANDIDATE, 428, "If-Match is required"),
        (
            Some("\"stale\""),
            SDPFRAG,
            CANDIDATE,
            412,
            "current ICE session",
        ),
        // The other session's tag does not open this one.
        (
            Some(&player_etag),
            SDPFRAG,
            CANDIDATE,
            412,
            "current ICE session",
        ),
        (
            Some(&etag),
            "application/sdp",
            CANDIDATE,
            415,
            "trickle-ice-sdpfrag",
        ),
        (
            Some(&etag),
            SDPFRAG,
            "this is not sdp\r\n",
            400,
            "not an SDP line",
        ),
        (
            Some(&etag),
            SDPFRAG,
            "a=candidate:1 1 udp\r\n",
            400,
            "unreadable candidate",
        ),
        (
            Some(&etag),
            SDPFRAG,
            "a=ice-ufrag:abcd\r\n",
            400,
            "a=ice-pwd",
        ),
    ];
    for (if_match, content_type, body, status, text) in cases {
        let mut request = server
            .http_client
            .patch(&resource)
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(
            answer.status(),
            status,
            "{if_match:?} {content_type} {body:?}"
        );
        let said = answer.text().await.unwrap();
        assert!(said.contains(text), "{status}: {said}");
    }
    let oversized = format!("{CANDIDATE}a={}\r\n", "x".repeat(17000));
    assert_eq!(
        patch(&server, &resource, Some(&etag), &oversized)
            .await
            .status(),
        413
    );
    let nobody = server.url(&format!("/session/{}", uuid::Uuid::new_v4()));
    assert_eq!(
        patch(&server, &nobody, Some("*"), CANDIDATE).await.status(),
        404
    );
    assert_eq!(
        patch(
            &server,
            &server.url("/session/not-a-session"),
            Some("*"),
            CANDIDATE
        )
        .await
        .status(),
        404
    );
    let before = player.counters.packets();
    assert!(
        player
            .wait_packets(before + 20, Duration::from_secs(5))
            .await,
        "media flows on"
    );
    assert_eq!(server.streams().await, 2);

    // New credentials restart ICE: 200, the server's new fragment, a new ETag; the old
    // tag no longer matches. (This client does not follow, so only the answer is checked
    // here; tests/cors.rs restarts a real publisher in Chromium.)
    let answer = patch(
        &server,
        &resource,
        Some("*"),
        &format!("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=ice-ufrag:rstr\r\na=ice-pwd:restartpasswordrestartpw\r\n{CANDIDATE}"),
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], SDPFRAG);
    let new_etag = answer.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let fragment = answer.text().await.unwrap();
    let old_ufrag = publisher
        .pc
        .remote_description()
        .await
        .unwrap()
        .sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:").map(str::to_string))
        .unwrap();
    let new_ufrag = fragment
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("a new ufrag");
    assert_ne!(new_ufrag, old_ufrag, "{fragment}");
    assert!(
        fragment.contains("a=candidate:") && fragment.contains("a=end-of-candidates"),
        "{fragment}"
    );
    assert!(fragment.contains("a=mid:"), "{fragment}");
    assert_eq!(
        patch(&server, &resource, Some(&etag), CANDIDATE)
            .await
            .status(),
        412
    );
    assert_eq!(
        publishers(&server, "trickled").await.len(),
        1,
        "still one publisher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_are_offered_as_links_and_follow_the_live_setting() {
    let properties = |servers: &str| format!("{}ice_servers={servers}\n", common::LOOPBACK);
    let server = TestServer::start_with(
        &properties(
            "stun:stun.example.net:3478, turn://alice:s3cret@turn.example.net:3478?transport=udp",
        ),
        None,
    );
    let client = Client::new().unwrap();
    let offer = client.sample_offer().await.unwrap();
    let links = |response: &reqwest::Response| -> Vec<String> {
        response
            .headers()
            .get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let answer = server
        .http_client
        .post(server.url("/whip/linked"))
        .header("content-type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let got = links(&answer);
    assert!(
        got.contains(&"<stun:stun.example.net:3478>; rel=\"ice-server\"".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; username=\"alice\"; credential=\"s3cret\"; credential-type=\"password\"".to_string()), "{got:?}");
    assert_eq!(answer.headers()["accept-patch"], SDPFRAG);
    // The credentials are not shown by the config view.
    let config: Value = server
        .http_client
        .get(server.url("/rest-api/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!config.to_string().contains("s3cret"), "{config}");

    // A TURN server without credentials is refused; the good list stays.
    let file = server.dir.path().join("server.properties");
    std::fs::write(&file, properties("turn:turn.example.net:3478")).unwrap();
    assert!(
        server
            .eventually(Duration::from_secs(10), || async {
                let config: Value = server
                    .http_client
                    .get(server.url("/rest-api/config"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                config.to_string().contains("needs credentials")
            })
            .await,
        "the bad list is reported"
    );
    let offer2 = client.sample_offer().await.unwrap();
    let answer = server
        .http_client
        .post(server.url("/whip/linked2"))
        .header("content-type", "application/sdp")
        .body(offer2)
        .send()
        .await
        .unwrap();
    assert_eq!(
        links(&answer).len(),
        3,
        "events, and the two servers still in force"
    );

    // Emptied, no ice-server link is sent.
    std::fs::write(&file, properties("")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let offer = client.sample_offer().await.unwrap();
        let name = format!("linked-{}", uuid::Uuid::new_v4().simple());
        let answer = server
            .http_client
            .post(server.url(&format!("/whip/{name}")))
            .header("content-type", "application/sdp")
            .body(offer)
            .send()
            .await
            .unwrap();
        if links(&answer).len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the emptied list did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads server-sent events (`event:` and one `data:` line each, as the draft asks) until
/// `until` says stop or the stream ends.
async fn read_events(
    response: reqwest::Response,
    timeout: Duration,
    mut until: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.trim().to_string());
                }
            }
            if data.is_empty() {
                continue;
            }
            assert_eq!(data.len(), 1, "one data line per event: {block}");
            events.push((name, serde_json::from_str(&data[0]).expect("JSON data")));
            if until(&events) {
                return events;
            }
        }
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => return events,
            Err(_) => panic!("events so far: {events:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whep_events_extension_tells_active_viewers_and_the_stop() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let _publisher = client
        .publish(&server.url("/whip/evented"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&server.url("/whep/evented")).await.unwrap();
    // The Link of the WHEP 201, as the draft's clients read it.
    let link = player.links.events.clone().expect("the events Link");
    let raw = server
        .http_client
        .post(&link)
        .header("content-type", "application/json")
        .body(r#"["active","inactive","viewercount"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 201);
    let location = raw.headers()["location"].to_str().unwrap().to_string();
    let stream_url = server.url(&location);
    let events = server.http_client.get(&stream_url).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    // Bad subscriptions are refused and make nothing.
    let bad = server
        .http_client
        .post(&link)
        .body(r#"["layers"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("unknown event 'layers'"));
    let nobody = server.url(&format!("/session/{}/events", uuid::Uuid::new_v4()));
    assert_eq!(
        server
            .http_client
            .post(&nobody)
            .body("[]")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A second player joins, then the server stops the first one with a reason.
    let second_player = tokio::spawn({
        let url = server.url("/whep/evented");
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Client::new().unwrap().play(&url).await.unwrap()
        }
    });
    let terminate = tokio::spawn({
        let http = server.http_client.clone();
        let url = server.url("/rest-api/stream/terminate");
        let id = player
            .links
            .resource
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        async move {
            tokio::time::sleep(Duration::from_millis(2000)).await;
            http.post(url)
                .json(&serde_json::json!({"mediaSessionId": id, "reason": "viewing time is over"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let got = read_events(events, Duration::from_secs(15), |_| false).await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"active"), "{got:?}");
    assert_eq!(got[0].1, serde_json::json!({}));
    assert!(
        got.contains(&("viewercount".into(), serde_json::json!({"viewercount": 1}))),
        "{got:?}"
    );
    assert!(
        got.contains(&("viewercount".into(), serde_json::json!({"viewercount": 2}))),
        "{got:?}"
    );
    let (last, data) = got.last().unwrap();
    assert_eq!(last, "inactive", "{got:?}");
    assert_eq!(data["reason"], "viewing time is over", "{got:?}");
    assert_eq!(terminate.await.unwrap(), 200);
    // The ended session's event stream is gone.
    assert_eq!(
        server
            .http_client
            .get(&stream_url)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // DELETE ends an event stream of a live session.
    let second = second_player.await.unwrap();
    let link = second.links.events.clone().unwrap();
    let created = server.http_client.post(&link).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let url = server.url(created.headers()["location"].to_str().unwrap());
    let reading = server.http_client.get(&url).send().await.unwrap();
    let first = read_events(reading, Duration::from_secs(5), |e| e.len() >= 2).await;
    assert_eq!(first[0].0, "active", "{first:?}");
    assert_eq!(
        server
            .http_client
            .delete(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server.http_client.get(&url).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        server
            .http_client
            .delete(&url)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Trickles, ICE restarts and WHEP event streams leave nothing behind: after fifteen
/// cycles of publish, play, PATCH (candidates, then a restart), an event stream read and
/// both hang-ups, the process is back to its tasks and file descriptors, with no peer
/// connection or event stream left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_event_streams_leave_nothing_behind() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let settle = || async {
        assert!(
            server
                .eventually(Duration::from_secs(15), || async {
                    server.streams().await == 0
                })
                .await
        );
    };
    leak_cycle(&server, &client, 0).await;
    settle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.runtime().await;
    for i in 1..=15 {
        let live = leak_cycle(&server, &client, i).await;
        assert_eq!(live["peerConnections"], 2, "cycle {i}: {live}");
        assert!(
            live["eventStreams"].as_u64().unwrap() >= 1,
            "cycle {i}: {live}"
        );
    }
    let settled = server
        .eventually(Duration::from_secs(15), || async {
            let now = server.runtime().await;
            now["streams"] == 0
                && now["peerConnections"] == 0
                && now["aliveTasks"].as_u64() <= baseline["aliveTasks"].as_u64()
                && now["openFds"].as_u64() <= baseline["openFds"].as_u64()
        })
        .await;
    // Event streams of ended sessions go at the next subscription or read.
    let publisher = client
        .publish(&server.url("/whip/after"), SyntheticMedia::default())
        .await
        .unwrap();
    let created = server
        .http_client
        .post(publisher.links.events.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let now = server.runtime().await;
    assert!(settled, "baseline {baseline}, after the cycles {now}");
    assert_eq!(now["eventStreams"], 1, "only the live session's: {now}");
}

async fn leak_cycle(server: &TestServer, client: &Client, i: usize) -> Value {
    let name = format!("leak{}", i % 3);
    let (publisher, player) = server.publisher_and_player(client, &name, 5).await;
    let etag = player.links.etag.clone().unwrap();
    assert_eq!(
        patch(server, &player.links.resource, Some(&etag), CANDIDATE)
            .await
            .status(),
        204
    );
    let restart =
        format!("a=ice-ufrag:lk{i:02}\r\na=ice-pwd:leakpasswordleakpassword{i:02}\r\n{CANDIDATE}");
    assert_eq!(
        patch(server, &player.links.resource, Some("*"), &restart)
            .await
            .status(),
        200
    );
    let created = server
        .http_client
        .post(player.links.events.clone().unwrap())
        .body(r#"["viewercount"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "cycle {i}");
    let url = server.url(created.headers()["location"].to_str().unwrap());
    let reading = server.http_client.get(&url).send().await.unwrap();
    let first = read_events(reading, Duration::from_secs(5), |e| !e.is_empty()).await;
    assert_eq!(first[0].0, "viewercount", "cycle {i}");
    let live = server.runtime().await;
    assert_eq!(player.hang_up().await.unwrap(), 200);
    assert_eq!(publisher.hang_up().await.unwrap(), 200);
    live
}
