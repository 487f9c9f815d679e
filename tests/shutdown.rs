//! Graceful shutdown of the real `sluice` binary on SIGTERM under 20 live streams: every
//! client is told why (`Server shutdown`) on its status stream, the web back end gets every
//! stream's final `StreamStatusEvent`, and the process exits within `shutdown_timeout`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LOOPBACK, TestServer, read_status_events};
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_twenty_streams_tells_every_client_why_and_flushes_the_hooks() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                // A back end that takes its time: the shutdown must still wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                record.lock().unwrap().push(body);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = TestServer::start_with(
        &format!("{LOOPBACK}shutdown_timeout=8000\noffer_rate_per_address=0\n"),
        Some(&format!(
            "[apps.defaultApp]\nurl = \"{url}\"\n[apps.defaultApp.methods.StreamStatusEvent]\n"
        )),
    );
    let client = Client::new().unwrap();
    let media = SyntheticMedia {
        video_bitrate_bps: 200_000,
        frames_per_second: 15,
        audio: false,
        ..SyntheticMedia::default()
    };
    let mut sessions = Vec::new();
    for i in 0..10 {
        let publisher = client
            .publish(&server.url(&format!("/whip/cam{i}")), media)
            .await
            .unwrap();
        sessions.push(publisher);
        let player = client
            .play(&server.url(&format!("/whep/cam{i}")))
            .await
            .unwrap();
        assert!(player.wait_packets(3, Duration::from_secs(10)).await);
        sessions.push(player);
    }
    // And a publisher and its player over WCS signalling, on one connection.
    let wcs = sluice_client::wcs::WcsConnection::connect(
        &format!("ws://{}", server.ws.expect("ws")),
        "defaultApp",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    let (wcs_publisher, wcs_publisher_id) = client.publish_wcs(&wcs, "wcam", media).await.unwrap();
    let (wcs_player, wcs_player_id) = client.play_wcs(&wcs, "wcam").await.unwrap();
    assert!(wcs_player.wait_packets(3, Duration::from_secs(10)).await);
    assert_eq!(server.streams().await, 22);
    let mut readers = tokio::task::JoinSet::new();
    for session in &sessions {
        let events = session.links.events.clone().expect("a status stream link");
        let http = server.http_client.clone();
        readers.spawn(
            async move { read_status_events(&http, &events, Duration::from_secs(20)).await },
        );
    }
    // Every reader is connected once the back end has seen the streams start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut server = server;
    let exit = loop {
        if let Some(status) = server.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(9), "took {took:?}");
    let mut told = 0;
    while let Some(events) = readers.join_next().await {
        let events = events.unwrap();
        let last = events.last().cloned().unwrap_or(Value::Null);
        assert_eq!(last["status"], "FAILED", "{events:?}");
        assert!(
            last["info"]
                .as_str()
                .unwrap_or("")
                .contains("Server shutdown"),
            "{last}"
        );
        told += 1;
    }
    assert_eq!(told, 20);
    // The WebSocket clients are told too, before their connection closes. The player may
    // be told by its publisher's end first, which is as true.
    for (id, texts) in [
        (&wcs_publisher_id, &["Server shutdown"][..]),
        (
            &wcs_player_id,
            &["Server shutdown", "Stopped by publisher stop"][..],
        ),
    ] {
        let last = wcs
            .wait_status(id, "FAILED", Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("{id}: no FAILED before the close"));
        let info = last["info"].as_str().unwrap_or("");
        assert!(texts.iter().any(|t| info.contains(t)), "{last}");
    }
    wcs_publisher.close().await;
    wcs_player.close().await;
    let seen = seen.lock().unwrap().clone();
    let finals = seen
        .iter()
        .filter(|b| b["final"] == true)
        .filter(|b| b["info"].as_str().unwrap_or("").contains("Server shutdown"))
        .count();
    assert_eq!(finals, 22, "final status events delivered: {seen:?}");
    eprintln!("shutdown under 20 streams took {took:?}");
    for session in &sessions {
        session.close().await;
    }
}
