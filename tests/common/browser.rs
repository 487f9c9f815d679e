//! Headless Chromium under its own chromedriver for the browser tests: started in its own
//! process group and killed with it; fails loudly when the browser is missing (and under CI
//! always runs).

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const WAIT: Duration = Duration::from_secs(20);

/// One headless Chromium under its own chromedriver, killed when dropped.
pub struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false`.
pub fn under_ci() -> bool {
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
pub fn browser_test_runs(test: &str) -> bool {
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
    pub async fn start() -> Browser {
        Self::start_with(&[]).await
    }

    /// A browser with `extra` command-line switches.
    pub async fn start_with(extra: &[&str]) -> Browser {
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
        let args: Vec<&str> = args.iter().copied().chain(extra.iter().copied()).collect();
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

    pub fn page(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    pub async fn js(&self, script: &str) -> Value {
        self.page()
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    pub async fn status(&self) -> String {
        self.js("return document.getElementById('status').textContent")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// What the page will do next, as the server hinted (`#hint`'s `data-action`).
    pub async fn hint_action(&self) -> String {
        self.js("return document.getElementById('hint').dataset.action")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the page's status starts with `prefix`; returns the whole text.
    pub async fn wait_status(&self, prefix: &str) -> String {
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
    pub async fn wait_decoding(&self) {
        self.wait_decoding_in("#video").await;
    }

    /// Waits until the `<video>` matched by `selector` decodes frames.
    pub async fn wait_decoding_in(&self, selector: &str) {
        let deadline = Instant::now() + WAIT;
        let mut last_time = -1.0;
        loop {
            let v = self
                .js(&format!(
                    "const v = document.querySelector({selector:?}); return v ? [v.videoWidth, v.currentTime] : [0, 0];"
                ))
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

    /// Opens Sluice's own publish page at `url` and publishes the fake camera as `name`,
    /// until the page says `PUBLISHING`.
    pub async fn publish_with_page(&self, url: &str, name: &str) {
        self.page().goto(url).await.unwrap();
        self.js(&format!(
            "document.getElementById('name').value = {name:?}; return 0;"
        ))
        .await;
        self.click("start").await;
        self.wait_status("PUBLISHING").await;
    }

    pub async fn click(&self, id: &str) {
        self.page()
            .find(Locator::Id(id))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");
    }

    pub async fn screenshot(&self, name: &str) {
        self.screenshot_in("browser", name).await;
    }

    /// A screenshot to `test-artifacts/<folder>/<name>.png`.
    pub async fn screenshot_in(&self, folder: &str, name: &str) {
        let png = self.page().screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test-artifacts")
            .join(folder);
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
