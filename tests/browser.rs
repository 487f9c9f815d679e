//! The example pages in a real browser: headless Chromium publishes its fake camera, a second
//! Chromium plays and really decodes frames, a REST terminate stops the player and the page
//! shows why, one click resumes, and stopping the publisher shows `Stopped by publisher stop`.
//! A screenshot of each state goes to `test-artifacts/browser/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them
//! the test fails, saying what to install. `SLUICE_SKIP_BROWSER=1` skips it on a machine
//! without a browser: it is compiled as ignored (counted as such), and if run anyway it prints
//! a `SKIPPED` line on the terminal; under CI (`CI` set, as `.ci/run`
//! and CI services set it) that variable is ignored: CI always runs the browser test.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, WAIT, browser_test_runs};
use common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Counted as skipped ("ignored") when SLUICE_SKIP_BROWSER is set outside CI (see build.rs).
#[cfg_attr(
    sluice_skip_browser,
    ignore = "SLUICE_SKIP_BROWSER is set: the browser test is skipped"
)]
async fn publish_and_play_in_chromium_with_server_side_stops() {
    if !browser_test_runs("publish_and_play_in_chromium_with_server_side_stops") {
        return;
    }
    let server = TestServer::start("rest_api_https_port=0\n");
    let publisher = Browser::start().await;
    let player = Browser::start().await;

    publisher
        .publish_with_page(&server.url("/publish.html"), "browser")
        .await;
    publisher.screenshot("1-publisher-publishing").await;

    player
        .page()
        .goto(&server.url("/play.html?name=browser"))
        .await
        .unwrap();
    player.click("start").await;
    player.wait_status("PLAYING").await;
    player.wait_decoding().await;
    player.screenshot("2-player-playing").await;

    // The operator stops the player: the page shows the reason.
    let terminate = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&json!({"name": "browser", "published": false, "reason": "browser test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(terminate.status(), 200);
    let shown = player.wait_status("FAILED").await;
    assert_eq!(shown, "FAILED — Stopped by server: browser test");
    // The operator's page shows the termination and its reason, and the publisher still live.
    let operator = Browser::start().await;
    operator
        .page()
        .goto(&server.url("/operator.html"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = operator
            .js("return [document.querySelectorAll('#streams tbody tr').length, (document.querySelector('#terminations tbody tr') || {}).textContent || '']")
            .await;
        let rows = seen[0].as_u64().unwrap_or(0);
        let last = seen[1].as_str().unwrap_or("").to_string();
        if rows == 1 && last.contains("browser test") && last.contains("browser (player)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "operator page shows {rows} streams, last termination '{last}'"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.screenshot("8-operator-after-terminate").await;
    drop(operator);
    assert_eq!(
        player.hint_action().await,
        "do-not-reconnect",
        "a plain terminate asks the page not to reconnect by itself"
    );
    player.screenshot("3-player-stopped-by-server").await;
    assert_eq!(
        publisher.status().await,
        "PUBLISHING",
        "the publisher was not touched"
    );

    // One click resumes.
    let label = player
        .js("return document.getElementById('start').textContent")
        .await;
    assert_eq!(label, "Resume");
    player.click("start").await;
    player.wait_status("PLAYING").await;
    player.wait_decoding().await;
    player.screenshot("4-player-resumed").await;

    // The publisher stops: the player is told why.
    publisher.click("stop").await;
    publisher.wait_status("UNPUBLISHED").await;
    let shown = player.wait_status("FAILED").await;
    assert_eq!(shown, "FAILED — Stopped by publisher stop");
    assert_eq!(
        player.hint_action().await,
        "retry",
        "the publisher may come back: the page retries after the hinted delay"
    );
    player.screenshot("5-player-publisher-stopped").await;
    publisher.screenshot("6-publisher-stopped").await;
    // It does retry; with no publisher the retry is refused (404, no retry hint) and the page
    // waits for a click, keeping the server's last word as the status.
    let deadline = Instant::now() + WAIT;
    while player.hint_action().await != "refused" {
        assert!(Instant::now() < deadline, "the page retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(player.status().await, "FAILED — Stopped by publisher stop");
    player.screenshot("7-player-retry-refused").await;
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
}
