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

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(20);

/// One headless Chromium under its own chromedriver, killed when dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false`.
fn under_ci() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    !(ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false"))
}

/// The browser and driver that are missing, if any.
fn missing_programs() -> Vec<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| {
            !std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect()
}

/// Whether the test runs: skipped only when asked to outside CI, and then it says so on
/// the terminal itself (libtest hides a passing test's `eprintln!`). Otherwise the browser
/// and its driver must be there, or the test fails saying how to install them.
fn browser_test_runs(test: &str) -> bool {
    let skip = std::env::var_os("SLUICE_SKIP_BROWSER").is_some();
    if skip && !under_ci() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "test {test} ... SKIPPED: SLUICE_SKIP_BROWSER is set; the browser test did not run"
        );
        return false;
    }
    let missing = missing_programs();
    let otherwise = if under_ci() {
        "; CI must run this test, so SLUICE_SKIP_BROWSER is ignored under CI"
    } else {
        ", or set SLUICE_SKIP_BROWSER=1 to skip this test on a machine without a browser"
    };
    assert!(
        missing.is_empty(),
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER}; missing: {}. Install them \
         (apt-get install chromium chromium-driver){otherwise}",
        missing.join(" and "),
    );
    true
}

impl Browser {
    async fn start() -> Browser {
        assert!(
            missing_programs().is_empty(),
            "the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, so that Chromium and all its helpers, which chromedriver
        // starts, can be killed together whatever state the test ends in.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
            // Host candidates as plain addresses: no mDNS names, so no multicast on the LAN.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--window-size=720,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let mut browser = Browser {
            driver,
            client: None,
            _profile: profile,
        };
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("chromedriver did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        browser.client = Some(client);
        browser
    }

    fn page(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    async fn js(&self, script: &str) -> Value {
        self.page()
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    async fn status(&self) -> String {
        self.js("return document.getElementById('status').textContent")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// What the page will do next, as the server hinted (`#hint`'s `data-action`).
    async fn hint_action(&self) -> String {
        self.js("return document.getElementById('hint').dataset.action")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the page's status starts with `prefix`; returns the whole text.
    async fn wait_status(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if status.starts_with(prefix) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "status is '{status}', waited for '{prefix}'"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the video element decodes frames: a size, and time moving on.
    async fn wait_decoding(&self) {
        let deadline = Instant::now() + WAIT;
        let mut last_time = -1.0;
        loop {
            let v = self
                .js("const v = document.getElementById('video'); return [v.videoWidth, v.currentTime];")
                .await;
            let (width, time) = (v[0].as_f64().unwrap_or(0.0), v[1].as_f64().unwrap_or(0.0));
            if width > 0.0 && last_time >= 0.0 && time > last_time {
                return;
            }
            if width > 0.0 {
                last_time = time;
            }
            assert!(
                Instant::now() < deadline,
                "no frames decoded (videoWidth {width}, currentTime {time})"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn click(&self, id: &str) {
        self.page()
            .find(Locator::Id(id))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.page().screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/browser");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver, so the whole process group goes.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

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
        .page()
        .goto(&server.url("/publish.html"))
        .await
        .unwrap();
    publisher
        .js("document.getElementById('name').value = 'browser'; return 0;")
        .await;
    publisher.click("start").await;
    publisher.wait_status("PUBLISHING").await;
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
