//! Test harness: starts the real `sluice` binary on ephemeral loopback ports with a config
//! directory of the test's own, and kills it when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestServer {
    child: Child,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    /// WCS WebSocket signalling, plain and over TLS.
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub http_client: reqwest::Client,
}

/// Server logs in tests: its own warnings, and only errors of the WebRTC stack (which warns on
/// every ordinary teardown).
pub const QUIET_LOG: &str = "warn,webrtc=error,webrtc_ice=error,webrtc_srtp=error,webrtc_dtls=error,webrtc_mdns=error,webrtc_sctp=error,interceptor=error,rtc_dtls=error";

/// Settings every test server gets: media and ICE on loopback only, OS-chosen ports, and no
/// offer rate per address (every test client is 127.0.0.1; `tests/races.rs` sets one).
pub const LOOPBACK: &str = "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\noffer_rate_per_address=0\n";

/// `properties` with an OS-chosen media port first when they do not name the media socket:
/// the default port is one that test servers side by side would contend for.
fn with_own_media_port(properties: &str) -> String {
    if properties.contains("media_udp_mux_port") {
        properties.to_owned()
    } else {
        format!("media_udp_mux_port=0\n{properties}")
    }
}

impl TestServer {
    /// Starts a server whose `server.properties` is `LOOPBACK` plus `extra`.
    pub fn start(extra: &str) -> TestServer {
        Self::start_with(&format!("{LOOPBACK}{extra}"), None)
    }

    /// Starts a server with exactly these files. HTTP and HTTPS listen on ephemeral loopback
    /// ports whatever the properties say.
    pub fn start_with(properties: &str, apps: Option<&str>) -> TestServer {
        Self::spawn(properties, apps, None)
    }

    /// Starts a server with exactly this `server.properties`, logging to `server.log` in its
    /// directory with the `SLUICE_LOG` filter `log` and the extra `serve` arguments `args`.
    pub fn start_logged(properties: &str, log: &str, args: &[&str]) -> TestServer {
        Self::spawn(properties, None, Some((log, args)))
    }

    /// The log file of a server started with [`start_logged`](Self::start_logged).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(properties: &str, apps: Option<&str>, log: Option<(&str, &[&str])>) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        // `SLUICE_TEST_PROPERTIES` is added to every test server's properties (later lines
        // win), to run a suite on another setup: e.g. `media_rtc_players=false` runs its
        // players on webrtc-rs 0.17, `media_udp_mux_port=` gives every session a socket.
        let properties = with_own_media_port(properties);
        let properties = match std::env::var("SLUICE_TEST_PROPERTIES") {
            Ok(more) => format!("{properties}\n{more}\n"),
            Err(_) => properties,
        };
        std::fs::write(dir.path().join("server.properties"), properties).expect("write properties");
        if let Some(apps) = apps {
            std::fs::write(dir.path().join("apps.toml"), apps).expect("write apps");
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("serve")
            .arg("--config")
            .arg(dir.path())
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--https")
            .arg("127.0.0.1:0")
            .arg("--ws")
            .arg("127.0.0.1:0")
            .arg("--wss")
            .arg("127.0.0.1:0");
        match log {
            Some((filter, args)) => {
                let file = std::fs::File::create(dir.path().join("server.log")).expect("log file");
                command.args(args).env("SLUICE_LOG", filter).stderr(file);
            }
            None => {
                let filter = std::env::var("SLUICE_LOG").unwrap_or_else(|_| QUIET_LOG.into());
                command.env("SLUICE_LOG", filter).stderr(Stdio::inherit());
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_else(|| panic!("sluice exited before it was ready: {:?}", child.try_wait()));
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<SocketAddr>().ok())
        };
        let http = field("http=").unwrap_or_else(|| panic!("no http address in '{ready}'"));
        let https = field("https=");
        let ws = field("ws=");
        let wss = field("wss=");
        let http_client = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        TestServer {
            child,
            http,
            https,
            ws,
            wss,
            dir,
            http_client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the server process holds: streams, tokio tasks, open file descriptors.
    pub async fn runtime(&self) -> Value {
        self.http_client
            .get(self.url("/rest-api/server/runtime"))
            .send()
            .await
            .expect("runtime request")
            .json()
            .await
            .expect("runtime json")
    }

    /// Why a player got no media, as far as the outside can tell: each side's connection
    /// and ICE state and counts, and the streams the server holds — to tell a session that
    /// never connected from one wired to a silent relay.
    pub async fn why_no_media(
        &self,
        player: &sluice_client::ClientSession,
        publisher: &sluice_client::ClientSession,
    ) -> String {
        format!(
            "player {:?} (ICE {:?}) counted {:?}, publisher {:?} sent {:?}; streams: {}",
            player.pc.connection_state(),
            player.pc.ice_connection_state(),
            player.counters,
            publisher.pc.connection_state(),
            publisher.counters,
            self.streams_found().await
        )
    }

    /// A publisher of stream `name` (synthetic media) and one player of it that has had
    /// `packets` of its media within 10 s, both from `client`.
    pub async fn publisher_and_player(
        &self,
        client: &sluice_client::Client,
        name: &str,
        packets: u64,
    ) -> (sluice_client::ClientSession, sluice_client::ClientSession) {
        let publisher = client
            .publish(
                &self.url(&format!("/whip/{name}")),
                sluice_client::SyntheticMedia::default(),
            )
            .await
            .unwrap();
        let player = client
            .play(&self.url(&format!("/whep/{name}")))
            .await
            .unwrap();
        assert!(
            player.wait_packets(packets, Duration::from_secs(10)).await,
            "{}",
            self.why_no_media(&player, &publisher).await
        );
        (publisher, player)
    }

    /// Every stream `/rest-api/stream/find` lists, as its text: for a failing test to say
    /// what the server holds.
    pub async fn streams_found(&self) -> String {
        match self
            .http_client
            .post(self.url("/rest-api/stream/find"))
            .json(&serde_json::json!({}))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_else(|e| e.to_string()),
            Err(e) => e.to_string(),
        }
    }

    /// The server's `sluice_relay_forwarded_packets_total` (from `/metrics`).
    pub async fn forwarded_packets(&self) -> f64 {
        self.metric("sluice_relay_forwarded_packets_total").await
    }

    /// The value of the unlabelled series `name` in the server's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = self
            .http_client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// Waits until the server holds no stream and no peer connection, and no more tokio
    /// tasks and open descriptors than `baseline` (a `runtime()` reading): whether it did
    /// within `within`.
    pub async fn back_to(&self, baseline: &Value, within: Duration) -> bool {
        let (tasks, fds) = (
            baseline["aliveTasks"].as_u64().expect("aliveTasks"),
            baseline["openFds"].as_u64().expect("openFds"),
        );
        self.eventually(within, || async {
            let now = self.runtime().await;
            now["streams"] == 0
                && now["peerConnections"] == 0
                && now["aliveTasks"].as_u64().is_some_and(|t| t <= tasks)
                && now["openFds"].as_u64().is_some_and(|f| f <= fds)
        })
        .await
    }

    pub async fn streams(&self) -> u64 {
        self.runtime().await["streams"].as_u64().expect("streams")
    }

    /// Polls `check` every 20 ms until it holds, at most `timeout`.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a session's status stream until it ends (or `timeout`): the `status` events' data.
pub async fn read_status_events(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Vec<Value> {
    use futures::StreamExt;
    let mut events = Vec::new();
    let Ok(response) = client.get(url).send().await else {
        return events;
    };
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(Ok(value)) = line
                    .strip_prefix("data:")
                    .map(|d| serde_json::from_str(d.trim()))
                {
                    events.push(value);
                }
            }
        }
    }
    events
}

/// A server started in the test's own process, so that the test can fill its registry with
/// synthetic streams. HTTP and HTTPS on ephemeral loopback ports.
pub struct InProcessServer {
    pub server: Option<sluice::RunningServer>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub registry: std::sync::Arc<sluice::registry::Registry>,
    pub dir: tempfile::TempDir,
    pub http_client: reqwest::Client,
}

impl InProcessServer {
    pub async fn start(extra: &str) -> InProcessServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("server.properties"),
            format!("{LOOPBACK}{extra}"),
        )
        .expect("properties");
        Self::start_in(dir).await
    }

    /// A server with keep-alive on every `interval_ms`, these apps and plugin files, and
    /// `extra` properties.
    pub async fn with_plugins(
        interval_ms: u64,
        apps: &str,
        plugins: &[(&str, &str)],
        extra: &str,
    ) -> InProcessServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugin dir");
        for (name, source) in plugins {
            std::fs::write(dir.path().join("plugins").join(name), source).expect("plugin");
        }
        std::fs::write(
            dir.path().join("server.properties"),
            format!("{LOOPBACK}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval={interval_ms}\n{extra}"),
        )
        .expect("properties");
        std::fs::write(dir.path().join("apps.toml"), apps).expect("apps");
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> InProcessServer {
        let file = dir.path().join("server.properties");
        if let Ok(properties) = std::fs::read_to_string(&file) {
            std::fs::write(&file, with_own_media_port(&properties)).expect("properties");
        }
        let server = sluice::start(sluice::ServerOptions {
            config_dir: Some(dir.path().to_path_buf()),
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            https_listen: Some("127.0.0.1:0".parse().unwrap()),
            ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
            wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
        })
        .await
        .expect("server starts");
        let http_client = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        InProcessServer {
            http: server.http_addr.expect("http"),
            https: server.https_addr,
            registry: server.registry.clone(),
            server: Some(server),
            dir,
            http_client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// GETs a path and returns its JSON answer.
    pub async fn get(&self, path: &str) -> Value {
        self.http_client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// POSTs a JSON body to a REST path; returns the status and the JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http_client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The app's plugin as `GET /rest-api/plugins` shows it (`calls`, `errors`, `version`, …).
    pub async fn plugin_status(&self, app: &str) -> Value {
        let view = self.get("/rest-api/plugins").await;
        view.as_array()
            .expect("a list of plugins")
            .iter()
            .find(|p| p["appKey"] == app)
            .cloned()
            .unwrap_or_else(|| panic!("no plugin for {app}: {view}"))
    }

    /// Waits, at most `timeout`, until the app's plugin status satisfies `done` (say, `calls`
    /// has grown by one round of verdicts); returns that status, or panics saying `what`
    /// did not happen. A test that then finds a stream still there knows verdicts ran.
    pub async fn wait_plugin(
        &self,
        app: &str,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.plugin_status(app).await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{app}: {what} within {timeout:?}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Polls a synchronous `check` every 5 ms until it holds, at most `timeout`.
pub async fn until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}
