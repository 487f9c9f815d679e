//! Live configuration against the running server: the files edited the ways editors and
//! tools do, broken edits that must not take effect, a directory replaced wholesale, a burst
//! of writes, the CLI, restart-only keys, and live streams that a reload never touches.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LOOPBACK, TestServer};
use serde_json::Value;
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "streaming_sessions_keep_alive_interval";

fn properties(interval: u64) -> String {
    format!("{LOOPBACK}{KEY}={interval}\n")
}

async fn config(server: &TestServer) -> Value {
    server
        .http_client
        .get(server.url("/rest-api/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn interval_in_force(server: &TestServer) -> String {
    config(server).await["settings"][KEY]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the interval in force is `expected`; panics with what is in force otherwise.
async fn expect_interval(server: &TestServer, expected: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = interval_in_force(server).await;
        if now == expected.to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: interval in force is {now}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that `expected` stays in force while a broken edit is on disk, and that the
/// failure is reported.
async fn expect_rejected(
    server: &TestServer,
    expected: u64,
    failures_before: u64,
    what: &str,
) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = config(server).await;
        let failures = c["failures"].as_u64().unwrap();
        if failures > failures_before {
            assert_eq!(
                c["settings"][KEY],
                expected.to_string(),
                "{what}: a broken edit took effect"
            );
            assert!(
                c["lastError"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}: {c}"
            );
            return failures;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no reload failure reported: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("command runs");
    assert!(status.success(), "{cmd:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_tools_and_broken_edits() {
    let server = TestServer::start_with(&properties(10_000), None);
    let dir = server.dir.path().to_path_buf();
    let file = dir.join("server.properties");
    expect_interval(&server, 10_000, "at start").await;

    std::fs::write(&file, properties(1001)).unwrap();
    expect_interval(&server, 1001, "write in place").await;

    let temporary = dir.join(".server.properties.swp");
    std::fs::write(&temporary, properties(1002)).unwrap();
    std::fs::rename(&temporary, &file).unwrap();
    expect_interval(&server, 1002, "save by rename").await;

    run(Command::new("sed")
        .arg("-i")
        .arg(format!("s/{KEY}=1002/{KEY}=1003/"))
        .arg(&file));
    expect_interval(&server, 1003, "sed -i").await;

    let elsewhere = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(elsewhere.path(), properties(1004)).unwrap();
    run(Command::new("cp").arg(elsewhere.path()).arg(&file));
    expect_interval(&server, 1004, "cp over").await;

    // Deleted: the last good version stays; recreated: the new one is in force.
    let mut failures = config(&server).await["failures"].as_u64().unwrap();
    std::fs::remove_file(&file).unwrap();
    failures = expect_rejected(&server, 1004, failures, "deleted").await;
    std::fs::write(&file, properties(1005)).unwrap();
    expect_interval(&server, 1005, "recreated").await;

    // git checkout of an earlier version.
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null()));
    };
    git(&["init", "-q"]);
    git(&["add", "server.properties"]);
    git(&["commit", "-qm", "1005"]);
    std::fs::write(&file, properties(1006)).unwrap();
    expect_interval(&server, 1006, "before commit").await;
    git(&["commit", "-qam", "1006"]);
    git(&["checkout", "HEAD~1", "--", "server.properties"]);
    expect_interval(&server, 1005, "git checkout").await;

    for (what, broken) in [
        (
            "garbage",
            "\u{0}\u{1}this is = not\n[properties\n".to_string(),
        ),
        ("bad value", format!("{KEY}=soon\n")),
        ("half-written", format!("{LOOPBACK}{}", &KEY[..10])),
        ("empty", String::new()),
        ("unknown key", "rest_api_prot=1\n".to_string()),
    ] {
        std::fs::write(&file, broken).unwrap();
        failures = expect_rejected(&server, 1005, failures, what).await;
    }
    std::fs::write(&file, properties(1007)).unwrap();
    expect_interval(&server, 1007, "fixed").await;

    // The directory replaced wholesale.
    let parent = dir.parent().unwrap();
    let fresh = parent.join(format!(
        "{}.new",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let old = parent.join(format!(
        "{}.old",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("server.properties"), properties(1008)).unwrap();
    std::fs::rename(&dir, &old).unwrap();
    std::fs::rename(&fresh, &dir).unwrap();
    expect_interval(&server, 1008, "directory replaced").await;
    std::fs::remove_dir_all(&old).unwrap();

    // A burst: 100 writes in one second; the last one is in force.
    let start = Instant::now();
    for i in 0..100u64 {
        std::fs::write(&file, properties(2000 + i)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    expect_interval(&server, 2099, "after 100 writes").await;
    let c = config(&server).await;
    assert!(c["version"].as_u64().unwrap() >= 10, "{c}");
    assert_eq!(c["files"]["server.properties"]["present"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keys_are_reported_and_keep_their_value() {
    let server = TestServer::start_with(&properties(10_000), None);
    let file = server.dir.path().join("server.properties");
    std::fs::write(
        &file,
        format!(
            "{}node_id=renamed\nmax_sdp_size=1000\nhttp_header_timeout=500\nplugin_dir=elsewhere\n",
            properties(3000)
        ),
    )
    .unwrap();
    expect_interval(&server, 3000, "hot key").await;
    let c = config(&server).await;
    assert_eq!(
        c["settings"]["node_id"], "sluice",
        "restart-only keys keep their value"
    );
    let pending: Vec<&str> = c["pendingRestart"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        vec![
            "node_id",
            "max_sdp_size",
            "http_header_timeout",
            "plugin_dir"
        ]
    );
    assert_eq!(
        c["settings"]["http_header_timeout"], "10000",
        "a restart-only key is shown with the value in force, not the edit"
    );
    assert!(
        c["settings"]["plugin_dir"]
            .as_str()
            .unwrap()
            .ends_with("plugins"),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_edits_apps_and_the_server_follows() {
    let apps =
        "# Our applications\n[apps.defaultApp]\nurl = \"http://127.0.0.1:9/api\" # the PHP box\n";
    let server = TestServer::start_with(&properties(10_000), Some(apps));
    let dir = server.dir.path();
    let sluice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("app")
            .arg("--config")
            .arg(dir)
            .args(args)
            .output()
            .expect("sluice app")
    };
    let client = Client::new().unwrap();
    let refused = client
        .publish(
            &server.url("/whip/cli?app=liveApp"),
            SyntheticMedia::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), Some(400));

    assert!(
        sluice(&["add", "liveApp", "http://127.0.0.1:9/live"])
            .status
            .success()
    );
    assert!(
        sluice(&["add-rest-method", "liveApp", "StreamKeepAliveEvent"])
            .status
            .success()
    );
    assert!(
        sluice(&[
            "set-rest-config",
            "liveApp",
            "StreamKeepAliveEvent",
            "restOnError",
            "LOG"
        ])
        .status
        .success()
    );
    assert!(
        sluice(&["update", "defaultApp", "http://127.0.0.1:9/v2"])
            .status
            .success()
    );
    let bad = sluice(&[
        "set-rest-config",
        "liveApp",
        "StreamKeepAliveEvent",
        "restOnError",
        "MAYBE",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("FAIL, LOG"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let text = std::fs::read_to_string(dir.join("apps.toml")).unwrap();
    assert!(
        text.starts_with("# Our applications\n"),
        "comments kept: {text}"
    );
    assert!(text.contains("# the PHP box"));
    let deadline = Instant::now() + WAIT;
    loop {
        let c = config(&server).await;
        let live = &c["apps"]["apps"]["liveApp"];
        if live["methods"]["StreamKeepAliveEvent"]["restOnError"] == "LOG" {
            assert_eq!(
                c["apps"]["apps"]["defaultApp"]["url"],
                "http://127.0.0.1:9/v2"
            );
            break;
        }
        assert!(Instant::now() < deadline, "apps not reloaded: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publisher = client
        .publish(
            &server.url("/whip/cli?app=liveApp"),
            SyntheticMedia::default(),
        )
        .await
        .expect("the new app is accepted at once");
    let show = sluice(&["show", "liveApp"]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("restOnError=LOG"));
    publisher.hang_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_never_touch_live_streams() {
    let server = TestServer::start_with(&properties(10_000), None);
    let file = server.dir.path().join("server.properties");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/live"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&server.url("/whep/live")).await.unwrap();
    assert!(player.wait_packets(20, WAIT).await);
    for i in 0..10u64 {
        std::fs::write(&file, properties(4000 + i)).unwrap();
        expect_interval(&server, 4000 + i, "reload under load").await;
        std::fs::write(&file, "garbage = \\").unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let before = player.counters.packets();
    assert!(
        player.wait_packets(before + 50, WAIT).await,
        "media still flows"
    );
    assert_eq!(server.streams().await, 2);
    assert!(player.ended.borrow().is_none() && publisher.ended.borrow().is_none());
    publisher.hang_up().await.unwrap();
    player.close().await;
}

#[test]
fn check_validates_and_exits_non_zero_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let check = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(dir)
            .output()
            .unwrap()
    };
    assert!(
        check(dir.path()).status.success(),
        "an empty directory is valid"
    );
    std::fs::write(
        dir.path().join("apps.toml"),
        "[apps.a]\nplugin = \"missing.lua\"\n",
    )
    .unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.lua"));
    std::fs::write(dir.path().join("apps.toml"), "[apps.a]\n").unwrap();
    std::fs::write(dir.path().join("server.properties"), "rest_api_port=x\n").unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.properties:1: rest_api_port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wcs_flashphoner_properties_works_as_it_is() {
    // What a WCS install has, with Sluice's loopback test settings on top.
    let wcs = "ip=10.0.0.1\nip_local=10.0.0.1\nws.port=8080\nwss.port=8443\ncodecs=opus,alaw,ulaw,g729,speex16,g722,mpeg4-generic,telephone-event,h264,vp8,flv,mpv\n\
               keep_alive.server_interval=5000\nkeep_alive.probes=10\nice_tcp_transport=true\nrecord_formats=mp4\n";
    let server = TestServer::start_with(&format!("{}{wcs}", properties(10_000)), None);
    let c = config(&server).await;
    let ignored: Vec<&str> = c["ignoredKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        ignored,
        [
            "codecs",
            "ice_tcp_transport",
            "ip",
            "ip_local",
            "record_formats"
        ],
        "{c}"
    );
    assert_eq!(c["settings"]["keep_alive.probes"], "10");
    // A typo is refused, with the nearest key, and changes nothing.
    let file = server.dir.path().join("server.properties");
    let failures = c["failures"].as_u64().unwrap();
    std::fs::write(
        &file,
        format!("{}{wcs}keep_alive.probs=3\n", properties(3000)),
    )
    .unwrap();
    expect_rejected(&server, 10_000, failures, "typo").await;
    let c = config(&server).await;
    let message = c["lastError"]["message"].as_str().unwrap();
    assert!(
        message.contains("keep_alive.probs: unknown key; did you mean 'keep_alive.probes'?"),
        "{message}"
    );
}
