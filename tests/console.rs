//! The operator console in real headless Chromium, with real publishers and players: it
//! shows their counts, non-zero bitrates and keep-alive verdicts within 3 s from its one
//! feed, a preview decodes frames (and counts as a player), a dry run lists and stops
//! nothing, a stop ends the right stream with its reason and shows who and why, stop and
//! hold then release work, and the page fits a phone. Screenshots go to
//! `test-artifacts/console/`. The feed is behind the REST API's auth.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/redis.rs"]
mod redis;

use std::process::Command;
use std::time::{Duration, Instant};

use browser::{Browser, WAIT, browser_test_runs};
use common::{InProcessServer, TestServer};
use redis::Redis;
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

const KEEP_ALL: &str = "local M = {}\nfunction M.on_keepalive(s) return 200 end\nreturn M\n";

async fn find(server: &InProcessServer, filter: Value) -> Vec<Value> {
    let (status, body) = server.post("/rest-api/stream/find", filter).await;
    if status == 404 {
        return Vec::new();
    }
    body.as_array().unwrap().clone()
}

/// Waits until `script` (returning a value) satisfies `done`, at most `within`.
async fn wait_page(
    page: &Browser,
    within: Duration,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = page.js(script).await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "after {within:?}: {script} is {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ROW: &str = "const row = (id) => document.querySelector(`#streams tr[data-id=\"${id}\"]`);";

/// The cells of a stream's row, by column name.
fn row_script(id: &str) -> String {
    format!(
        "{ROW} const r = row({id:?}); if (!r) return null; const c = r.querySelectorAll('td'); \
         return {{status: c[3].textContent, players: c[4].textContent, in: c[5].textContent, out: c[6].textContent, \
         loss: c[7].textContent, keepalive: c[8].textContent, hold: c[9].textContent}};"
    )
}

async fn click_in_row(page: &Browser, id: &str, action: &str) {
    page.js(&format!(
        "{ROW} row({id:?}).querySelector('button[data-action=\"{action}\"]').click(); return 0;"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_streams_previews_and_stops_with_reasons() {
    if !browser_test_runs("the_console_shows_live_streams_previews_and_stops_with_reasons") {
        return;
    }
    let server = InProcessServer::with_plugins(
        1000,
        // `hooked` asks a web server that is not there: its failures and breaker show.
        "[apps.defaultApp]\nplugin = \"policy.lua\"\n\
         [apps.hooked]\nurl = \"http://127.0.0.1:9/api\"\n\
         [apps.hooked.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n",
        &[("policy.lua", KEEP_ALL)],
        "streaming_sessions_keep_alive_app_keys=defaultApp,hooked\n",
    )
    .await;
    // A real camera for the preview, synthetic media for the figures.
    let camera = Browser::start().await;
    camera
        .publish_with_page(&server.url("/publish.html"), "cam")
        .await;
    let client = Client::new().unwrap();
    let synth = client
        .publish(&server.url("/whip/synth"), SyntheticMedia::default())
        .await
        .unwrap();
    let _hooked = client
        .publish(
            &server.url("/whip/hookcam?app=hooked"),
            SyntheticMedia::default(),
        )
        .await
        .unwrap();
    let mut players = Vec::new();
    for name in ["synth", "synth", "cam"] {
        players.push(
            client
                .play(&server.url(&format!("/whep/{name}")))
                .await
                .unwrap(),
        );
    }
    for player in &players {
        assert!(player.wait_packets(10, Duration::from_secs(10)).await);
    }
    let synth_id = synth.links.resource.rsplit('/').next().unwrap().to_string();
    let cam_id =
        find(&server, json!({"name": "cam", "published": true})).await[0]["mediaSessionId"]
            .as_str()
            .unwrap()
            .to_string();

    let console = Browser::start_with(&["--window-size=1280,1700"]).await;
    console
        .page()
        .goto(&server.url("/operator.html"))
        .await
        .unwrap();
    let opened = Instant::now();
    // Within 3 s: every stream, the players counted, bitrates in and out, the verdicts.
    let synth_row = wait_page(
        &console,
        Duration::from_secs(3),
        &row_script(&synth_id),
        |r| {
            r["players"] == "2"
                && r["in"]
                    .as_str()
                    .is_some_and(|t| t.trim().parse::<u64>().unwrap_or(0) > 0)
                && r["out"]
                    .as_str()
                    .is_some_and(|t| t.trim().parse::<u64>().unwrap_or(0) > 0)
                && r["status"] == "PUBLISHING"
        },
    )
    .await;
    let shown = opened.elapsed();
    let rows = console
        .js("return document.querySelectorAll('#streams tbody tr').length;")
        .await;
    assert_eq!(rows, 6, "three publishers, three players");
    let cam_row = console.js(&row_script(&cam_id)).await;
    assert_eq!(cam_row["players"], "1", "{cam_row}");
    let keepalive = wait_page(
        &console,
        Duration::from_secs(5),
        &row_script(&synth_id),
        |r| {
            r["keepalive"]
                .as_str()
                .is_some_and(|k| k.starts_with("200 keep (on_keepalive) at "))
        },
    )
    .await;
    let apps = wait_page(
        &console,
        Duration::from_secs(5),
        "return document.querySelector('#apps tbody').textContent;",
        |t| {
            t.as_str()
                .is_some_and(|t| t.contains("defaultApp") && t.contains("v1, 0 errors"))
        },
    )
    .await;
    // The app whose web server is down: failures counted, the breaker open, the row marked.
    let hooked = wait_page(&console, Duration::from_secs(15), "const r = [...document.querySelectorAll('#apps tbody tr')].find(r => r.cells[0].textContent === 'hooked'); return r ? {text: r.textContent, alarm: r.className} : null;", |r| {
        r["alarm"] == "alarm" && r["text"].as_str().is_some_and(|t| t.contains("open"))
    })
    .await;
    let cards = console.js("return [document.getElementById('s-streams').textContent, document.getElementById('s-players').textContent, document.getElementById('s-rss').textContent];").await;
    assert_eq!(cards[0], "6", "{cards}");
    assert_eq!(cards[1], "3", "{cards}");
    println!(
        "console showed the figures {shown:?} after opening: {synth_row} {keepalive} {apps} {hooked}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // a few points on the sparklines
    console.screenshot_in("console", "1-live").await;

    // A preview decodes the camera and is a player like any other.
    click_in_row(&console, &cam_id, "Preview").await;
    console.wait_decoding_in("#preview").await;
    let cam_players = find(&server, json!({"name": "cam", "published": false})).await;
    assert_eq!(cam_players.len(), 2, "the preview counts");
    wait_page(&console, WAIT, &row_script(&cam_id), |r| {
        r["players"] == "2"
    })
    .await;
    console.screenshot_in("console", "2-preview").await;
    console.click("preview-close").await;
    assert!(
        wait_for_count(&server, "cam", 1).await,
        "closing the preview ends its player"
    );

    // A dry run lists what a filter would stop and stops nothing.
    console
        .js("document.getElementById('f-name').value = 'synth'; document.getElementById('f-kind').value = 'false'; document.getElementById('dry-run').click(); return 0;")
        .await;
    let dry = wait_page(
        &console,
        WAIT,
        "return document.getElementById('dry-result').textContent;",
        |t| t.as_str().is_some_and(|t| t.starts_with("Would stop")),
    )
    .await;
    assert_eq!(dry, "Would stop 2: synth (player), synth (player)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        find(&server, json!({"name": "synth", "published": false}))
            .await
            .len(),
        2,
        "a dry run stops nothing"
    );
    console.screenshot_in("console", "3-dry-run").await;

    // Stop one player from its row: that stream ends, with its reason, and the list says who.
    let victim =
        find(&server, json!({"name": "synth", "published": false})).await[0]["mediaSessionId"]
            .as_str()
            .unwrap()
            .to_string();
    console
        .js("document.getElementById('reason').value = 'console test'; return 0;")
        .await;
    click_in_row(&console, &victim, "Stop").await;
    let last = wait_page(
        &console,
        WAIT,
        "return (document.querySelector('#terminations tbody tr') || {}).textContent || '';",
        |t| t.as_str().is_some_and(|t| t.contains("console test")),
    )
    .await;
    let last = last.as_str().unwrap();
    assert!(
        last.contains("REST from 127.0.0.1") && last.contains("synth (player)"),
        "{last}"
    );
    let left = find(&server, json!({"name": "synth", "published": false})).await;
    assert_eq!(left.len(), 1);
    assert_ne!(
        left[0]["mediaSessionId"],
        victim.as_str(),
        "the right stream stopped"
    );
    let stopped = players
        .iter()
        .find(|p| p.links.resource.ends_with(&victim))
        .unwrap();
    assert!(
        stopped.wait_ended(Duration::from_secs(5)).await.is_some(),
        "its client was told"
    );
    wait_page(&console, WAIT, &row_script(&synth_id), |r| {
        r["players"] == "1"
    })
    .await;
    console
        .screenshot_in("console", "4-stopped-with-reason")
        .await;

    // Stop and hold the synthetic publisher, then release it.
    console
        .js("document.getElementById('hold').value = '120'; return 0;")
        .await;
    click_in_row(&console, &synth_id, "Stop + hold").await;
    wait_page(
        &console,
        WAIT,
        "return document.getElementById('hold-count').textContent;",
        |t| t == "1",
    )
    .await;
    let refused = client
        .publish(&server.url("/whip/synth"), SyntheticMedia::default())
        .await;
    assert!(
        matches!(refused, Err(ref e) if e.status() == Some(403)),
        "held: {:?}",
        refused.err()
    );
    console.screenshot_in("console", "5-held").await;
    console
        .js("document.querySelector('#holds tbody button').click(); return 0;")
        .await;
    wait_page(
        &console,
        WAIT,
        "return document.getElementById('hold-count').textContent;",
        |t| t == "0",
    )
    .await;
    assert!(
        client
            .publish(&server.url("/whip/synth"), SyntheticMedia::default())
            .await
            .is_ok(),
        "released"
    );

    // A phone-sized screen: the page fits its width, the tables scroll inside it.
    let phone = Browser::start_with(&["--window-size=390,844"]).await;
    phone
        .page()
        .goto(&server.url("/operator.html"))
        .await
        .unwrap();
    wait_page(
        &phone,
        Duration::from_secs(5),
        "return document.querySelectorAll('#streams tbody tr').length;",
        |n| n.as_u64() >= Some(4),
    )
    .await;
    let fits = phone
        .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        .await;
    assert_eq!(fits, true, "the page is wider than a phone");
    phone.screenshot_in("console", "6-phone").await;
}

async fn wait_for_count(server: &InProcessServer, name: &str, players: usize) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if find(server, json!({"name": name, "published": false}))
            .await
            .len()
            == players
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_behind_the_rest_api_auth_and_describes_the_server() {
    let server = InProcessServer::start("rest_api_tokens=console-secret\n").await;
    let url = server.url("/rest-api/console/feed");
    let refused = server.http_client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let client = Client::new().unwrap();
    let _publisher = client
        .publish(&server.url("/whip/fed"), SyntheticMedia::default())
        .await
        .unwrap();
    let response = server
        .http_client
        .get(&url)
        .bearer_auth("console-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let snapshot: Value = loop {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a snapshot within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(end) = text.find("\n\n") {
            let block = &text[..end];
            assert!(block.starts_with("event: snapshot"), "{block}");
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            break serde_json::from_str(data).unwrap();
        }
    };
    assert_eq!(snapshot["server"]["streams"], 1, "{snapshot}");
    assert_eq!(snapshot["streams"][0]["name"], "fed");
    assert!(snapshot["server"]["rssBytes"].as_u64().unwrap() > 0);
    assert!(snapshot["server"]["openFds"].as_u64().unwrap() > 0);
    assert!(
        snapshot["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["appKey"] == "defaultApp")
    );
    assert!(!snapshot.to_string().contains("console-secret"));
}

/// The nodes table's rows: node id to its cells.
const NODE_ROWS: &str = "const out = {}; for (const r of document.querySelectorAll('#nodes tbody tr')) { \
    const c = [...r.querySelectorAll('td')].map((td) => td.textContent); \
    out[r.dataset.node] = {streams: c[2], kinds: c[3], cpu: c[4], rss: c[5], fds: c[6]}; } \
    return {hidden: document.getElementById('nodes-panel').hidden, error: document.getElementById('nodes-error').textContent, rows: out};";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_the_console_shows_a_row_per_node() {
    if !browser_test_runs("with_a_cluster_the_console_shows_a_row_per_node") {
        return;
    }
    let redis = Redis::start();
    let node = |id: &str| {
        TestServer::start(&format!(
            "node_id={id}\ncluster_redis_url={}\ncluster_node_ttl=1500\ncluster_answer_timeout=500\n",
            redis.url()
        ))
    };
    let n1 = node("n1");
    let mut n2 = node("n2");
    let client = Client::new().unwrap();
    let _publisher = client
        .publish(&n2.url("/whip/far"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&n2.url("/whep/far")).await.unwrap();
    assert!(player.wait_packets(10, Duration::from_secs(10)).await);

    let console = Browser::start_with(&["--window-size=1280,1200"]).await;
    console
        .page()
        .goto(&n1.url("/operator.html"))
        .await
        .unwrap();
    // n1's console lists both nodes, n2 with its publisher and player and its own figures.
    let shown = wait_page(&console, Duration::from_secs(5), NODE_ROWS, |v| {
        v["hidden"] == false
            && v["rows"]["n1"]["streams"] == "0"
            && v["rows"]["n2"]["streams"] == "2"
            && v["rows"]["n2"]["kinds"] == "1 / 1"
    })
    .await;
    for id in ["n1", "n2"] {
        let row = &shown["rows"][id];
        let rss: u64 = row["rss"].as_str().unwrap().parse().unwrap();
        let fds: u64 = row["fds"].as_str().unwrap().parse().unwrap();
        assert!(rss > 1 && fds > 5, "{id}: {row}");
        assert!(row["cpu"].as_str().unwrap().parse::<f64>().is_ok(), "{row}");
    }
    assert_eq!(shown["error"], "", "{shown}");
    console.screenshot_in("console", "7-nodes").await;

    // A single node's console has no nodes table.
    let single = InProcessServer::start("").await;
    console
        .page()
        .goto(&single.url("/operator.html"))
        .await
        .unwrap();
    wait_page(
        &console,
        Duration::from_secs(5),
        "return document.getElementById('node').textContent;",
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    )
    .await;
    assert_eq!(console.js(NODE_ROWS).await["hidden"], true);

    // n2 killed: its row leaves n1's console within its TTL.
    console
        .page()
        .goto(&n1.url("/operator.html"))
        .await
        .unwrap();
    wait_page(&console, Duration::from_secs(5), NODE_ROWS, |v| {
        v["rows"].get("n2").is_some()
    })
    .await;
    Command::new("kill")
        .args(["-9", &n2.pid().to_string()])
        .status()
        .unwrap();
    let _ = n2.try_wait();
    wait_page(&console, Duration::from_secs(5), NODE_ROWS, |v| {
        v["rows"].get("n2").is_none() && v["rows"].get("n1").is_some()
    })
    .await;

    // Redis down: the console says so and keeps showing this node's own figures.
    drop(redis);
    let down = wait_page(&console, Duration::from_secs(5), NODE_ROWS, |v| {
        v["error"].as_str().is_some_and(|e| e.contains("Redis"))
    })
    .await;
    assert!(down["rows"].as_object().unwrap().is_empty(), "{down}");
    assert_eq!(
        console
            .js("return document.getElementById('feed-state').textContent;")
            .await,
        "live"
    );
    console.screenshot_in("console", "8-redis-down").await;
}
