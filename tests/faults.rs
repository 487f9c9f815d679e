//! Faults in the parts operators write: plugins that error, return the wrong type, keep
//! globals, or are replaced or deleted while calls are running; config files that become
//! unreadable or vanish with their directory. The server keeps serving, and verdicts follow
//! the documented policy (`restOnError` of the app's keep-alive method, `FAIL` by default,
//! stopping after `keep_alive_failures_to_stop` failed verdicts in a row).

mod common;

use std::time::{Duration, Instant};

use common::{InProcessServer, LOOPBACK, until};
use sluice::registry::{NewStream, Registry};

const WAIT: Duration = Duration::from_secs(10);

async fn server_with(apps: &str, plugins: &[(&str, &str)]) -> InProcessServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "{LOOPBACK}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=100\nstreaming_sessions_keep_alive_app_keys=failApp,logApp,slowApp\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("apps.toml"), apps).unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    for (file, source) in plugins {
        std::fs::write(dir.path().join("plugins").join(file), source).unwrap();
    }
    InProcessServer::start_in(dir).await
}

fn add(registry: &std::sync::Arc<Registry>, name: &str, app: &str) -> uuid::Uuid {
    registry
        .register_synthetic(NewStream::publisher(name, app))
        .unwrap()
        .media_session_id
}

const FAULTY: &str = r#"
local M = {}
calls = calls or {}
function M.on_keepalive(s)
  local name = string.gsub(s.name, "%-log$", "")
  calls[name] = (calls[name] or 0) + 1
  if name == "error" then error("boom") end
  if name == "type" then return "yes" end
  if name == "code" then return 999 end
  -- A global kept across calls: the third verdict stops it.
  if s.name == "counted" and calls[name] >= 3 then return 403, "third call" end
  return 200
end
return M
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugins_follow_rest_on_error_and_globals_persist_within_a_version() {
    let apps = "[apps.failApp]\nplugin = \"faulty.lua\"\n[apps.logApp]\nplugin = \"faulty.lua\"\n[apps.logApp.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n";
    let server = server_with(apps, &[("faulty.lua", FAULTY)]).await;
    let r = &server.registry;
    let started = Instant::now();
    let fail: Vec<_> = ["error", "type", "code", "counted", "fine"]
        .iter()
        .map(|n| (n.to_string(), add(r, n, "failApp")))
        .collect();
    let log: Vec<_> = ["error", "type", "code", "fine"]
        .iter()
        .map(|n| (format!("{n}-log"), add(r, &format!("{n}-log"), "logApp")))
        .collect();
    let gone = |id: &uuid::Uuid| r.get(*id).is_none();
    let failing: Vec<_> = fail
        .iter()
        .filter(|(n, _)| ["error", "type", "code", "counted"].contains(&n.as_str()))
        .map(|(_, id)| *id)
        .collect();
    assert!(
        until(WAIT, || failing.iter().all(gone)).await,
        "FAIL stops the failing streams"
    );
    let took = started.elapsed();
    eprintln!("failing plugin verdicts stopped their streams in {took:?}");
    assert!(
        took >= Duration::from_millis(200),
        "not before 3 verdicts: {took:?}"
    );
    let audit = r.terminations();
    let reason_of = |name: &str| {
        audit
            .iter()
            .find(|t| {
                t.streams
                    .iter()
                    .any(|s| s.name == name && s.app_key == "failApp")
            })
            .map(|t| t.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason_of("error").contains("3 times in a row"),
        "{}",
        reason_of("error")
    );
    assert!(reason_of("error").contains("boom"));
    assert!(reason_of("type").contains("3 times in a row"));
    assert_eq!(
        reason_of("counted"),
        "third call",
        "the global counted across calls"
    );
    // The healthy stream of failApp and everything in logApp (LOG) live on, through more
    // verdicts than it takes FAIL to stop a stream (3 in a row): failApp's only stream left
    // is asked 4 more times, and logApp's 3 failing streams fail 4 more times each.
    let count = |status: &serde_json::Value, key: &str| status[key].as_u64().unwrap();
    let fail_from = count(&server.plugin_status("failApp").await, "calls");
    let log_from = count(&server.plugin_status("logApp").await, "errors");
    server
        .wait_plugin("failApp", WAIT, "4 more verdicts", |s| {
            count(s, "calls") >= fail_from + 4
        })
        .await;
    server
        .wait_plugin("logApp", WAIT, "4 more failed verdicts per stream", |s| {
            count(s, "errors") >= log_from + 4 * 3
        })
        .await;
    assert!(
        r.get(fail[4].1).is_some(),
        "a healthy stream of the same plugin lives"
    );
    for (name, id) in &log {
        assert!(r.get(*id).is_some(), "{name}: LOG keeps it");
    }
    let plugins = server.get("/rest-api/plugins").await;
    let fail_app = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["appKey"] == "failApp")
        .unwrap();
    assert!(fail_app["errors"].as_u64().unwrap() >= 6, "{fail_app}");
    assert!(fail_app["lastError"].is_string());
    server.shutdown().await;
}

/// A plugin that takes a while per call (about 20 ms of work), so that edits land while
/// calls are running.
fn slow_plugin(version: u32) -> String {
    format!(
        "local M = {{}}\nfunction M.on_keepalive(s)\n  local x = 0\n  for i = 1, 200000 do x = x + i end\n  if s.name == 'v' .. {version} then return 403, 'version {version}' end\n  return 200\nend\nreturn M\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_replaced_or_deleted_mid_call_keep_the_server_serving() {
    // failApp's plugin keeps its one stream: a canary that shows when verdicts run.
    let apps = "[apps.slowApp]\nplugin = \"slow.lua\"\n[apps.slowApp.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n\
                [apps.failApp]\nplugin = \"canary.lua\"\n";
    let plugin_source = slow_plugin(0);
    let canary = "local M = {}\nfunction M.on_keepalive(s) return 200 end\nreturn M\n";
    let server = server_with(
        apps,
        &[("slow.lua", &plugin_source), ("canary.lua", canary)],
    )
    .await;
    let r = server.registry.clone();
    let canary_id = add(&r, "canary", "failApp");
    let ids: Vec<_> = (0..50)
        .map(|i| add(&r, &format!("s{i}"), "slowApp"))
        .collect();
    let file = server.dir.path().join("plugins/slow.lua");
    // Twenty versions, one every 50 ms, while verdicts run; the last one stops 'v20'.
    for version in 1..=20 {
        std::fs::write(&file, slow_plugin(version)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v20 = add(&r, "v20", "slowApp");
    assert!(
        until(WAIT, || r.get(v20).is_none()).await,
        "the last version decides"
    );
    assert!(
        ids.iter().all(|id| r.get(*id).is_some()),
        "no stream dropped by the edits"
    );
    // Deleted while calls run: unloaded, streams kept, the server answers.
    std::fs::remove_file(&file).unwrap();
    let plugins_loaded = || async {
        let view = server.get("/rest-api/plugins").await;
        view.as_array()
            .unwrap()
            .iter()
            .find(|p| p["appKey"] == "slowApp")
            .map(|p| p["loaded"] == true)
            .unwrap_or(false)
    };
    let deadline = Instant::now() + WAIT;
    while plugins_loaded().await {
        assert!(Instant::now() < deadline, "the deleted plugin is unloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v21 = add(&r, "v20", "slowApp");
    // Verdicts go on: two more of the canary's span a whole interval after 'v20' came, in
    // which 'v20' would have been asked had a version of slow.lua stayed loaded.
    let from = server.plugin_status("failApp").await["calls"]
        .as_u64()
        .unwrap();
    server
        .wait_plugin("failApp", WAIT, "two more canary verdicts", |s| {
            s["calls"].as_u64().unwrap() >= from + 2
        })
        .await;
    assert!(r.get(v21).is_some(), "no plugin, no verdict: kept");
    assert!(ids.iter().all(|id| r.get(*id).is_some()));
    assert!(r.get(canary_id).is_some());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_config_file_or_a_vanished_directory_keeps_the_config_in_force() {
    let server = InProcessServer::start("rest_hook_timeout=1111\n").await;
    let config = server.server.as_ref().unwrap().config.clone();
    let dir = server.dir.path().to_path_buf();
    let properties = dir.join("server.properties");
    let good = std::fs::read_to_string(&properties).unwrap();
    let failures = config.counts().1;
    // Unreadable: the file becomes a directory (as root, permissions do not stop a read;
    // this is the same failure to read for the server).
    std::fs::remove_file(&properties).unwrap();
    std::fs::create_dir(&properties).unwrap();
    assert!(
        until(WAIT, || config.counts().1 > failures).await,
        "refused"
    );
    let timeout = || config.load().settings.rest_hook_timeout.as_millis();
    assert_eq!(timeout(), 1111, "the config in force is kept");
    std::fs::remove_dir(&properties).unwrap();
    std::fs::write(&properties, good.replace("1111", "2222")).unwrap();
    assert!(
        until(WAIT, || timeout() == 2222).await,
        "readable again: reloaded"
    );
    // The whole directory vanishes, then comes back with a new value.
    let failures = config.counts().1;
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    assert!(
        until(WAIT, || config.counts().1 > failures).await,
        "the missing directory is an error"
    );
    let keepalive_interval = config
        .load()
        .settings
        .streaming_sessions_keep_alive_interval;
    std::fs::rename(&aside, &dir).unwrap();
    std::fs::write(
        &properties,
        format!("{LOOPBACK}rest_hook_timeout=2222\nstreaming_sessions_keep_alive_interval=4321\n"),
    )
    .unwrap();
    assert!(
        until(WAIT, || config
            .load()
            .settings
            .streaming_sessions_keep_alive_interval
            == Duration::from_millis(4321))
        .await,
        "the directory is watched again when it comes back (was {keepalive_interval:?})"
    );
    server.shutdown().await;
}
