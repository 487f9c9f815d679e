//! The central promise under hostile plugins: budgets that hold on every coroutine, a worker
//! stuck in C code replaced, and `sluice plugin test` that always ends. Real servers, real
//! plugin files, real processes.

mod common;

use std::time::{Duration, Instant};

use common::{InProcessServer, until};
use sluice::registry::NewStream;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutine_loops_and_bombs_are_cut_off_while_other_apps_get_verdicts_on_time() {
    let looping = "local M = {}\nfunction M.on_keepalive(s) coroutine.wrap(function() while true do end end)() return 200 end\nreturn M\n";
    let caught = "local M = {}\nfunction M.on_keepalive(s) while true do pcall(coroutine.wrap(function() while true do end end)) end end\nreturn M\n";
    let bomb = "local M = {}\nfunction M.on_keepalive(s) local co = coroutine.create(function() local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end end) coroutine.resume(co) return 200 end\nreturn M\n";
    let timely = "local M = {}\nfunction M.on_keepalive(s) return 403, 'on time' end\nreturn M\n";
    let apps = "[apps.coLoop]\nplugin = \"loop.lua\"\n[apps.coLoop.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n\
                [apps.coCaught]\nplugin = \"caught.lua\"\n[apps.coCaught.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n\
                [apps.coBomb]\nplugin = \"bomb.lua\"\n\
                [apps.timely]\nplugin = \"timely.lua\"\n";
    let server = InProcessServer::with_plugins(
        300,
        apps,
        &[
            ("loop.lua", looping),
            ("caught.lua", caught),
            ("bomb.lua", bomb),
            ("timely.lua", timely),
        ],
        "streaming_sessions_keep_alive_app_keys=coLoop,coCaught,coBomb,timely\nkeep_alive_failures_to_stop=2\nplugin_instruction_budget=100000\nplugin_memory_limit=8388608\n",
    )
    .await;
    let r = server.registry.clone();
    let looped = r
        .register_synthetic(NewStream::publisher("looped", "coLoop"))
        .unwrap()
        .media_session_id;
    r.register_synthetic(NewStream::publisher("caught", "coCaught"))
        .unwrap();
    let bombed = r
        .register_synthetic(NewStream::publisher("bombed", "coBomb"))
        .unwrap()
        .media_session_id;
    // While the hostile plugins run, every verdict of the well-behaved app comes on time:
    // a new stream of it is stopped within about one interval, again and again.
    for round in 0..5 {
        let started = Instant::now();
        let id = r
            .register_synthetic(NewStream::publisher(&format!("timely{round}"), "timely"))
            .unwrap()
            .media_session_id;
        assert!(
            until(WAIT, || r.get(id).is_none()).await,
            "round {round}: the timely app's verdict never came"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "round {round}: verdict after {:?}",
            started.elapsed()
        );
    }
    assert!(
        until(WAIT, || r.get(bombed).is_none()).await,
        "the coroutine memory bomb fails its verdicts (FAIL: stopped after two)"
    );
    for app in ["coLoop", "coCaught"] {
        let plugin = server
            .wait_plugin(
                app,
                WAIT,
                "its calls return (as failures) instead of wedging its worker",
                |p| p["errors"].as_u64().unwrap_or(0) >= 2,
            )
            .await;
        assert!(
            plugin["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("instruction budget of 100000 exceeded")),
            "{app}: {plugin}"
        );
    }
    assert!(r.get(looped).is_some(), "LOG: kept despite failed verdicts");
    let started = Instant::now();
    let (status, _) = server
        .post("/rest-api/stream/find_all", serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    server.shutdown().await;
}

/// A plugin stuck in C code (a read of a FIFO nobody writes) cannot be cut off inside the VM:
/// its call times out, the worker is found stuck and replaced, and the next verdicts come
/// from the fresh worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_in_c_code_is_replaced_and_verdicts_resume() {
    let stuck = "local M = {}\nfunction M.on_keepalive(s)\n  if shared.incr('calls', 1) == 1 then files.lines('fifo') end\n  return 403, 'from a fresh worker'\nend\nreturn M\n";
    let apps = "[apps.stuck]\nplugin = \"stuck.lua\"\n[apps.stuck.methods.StreamKeepAliveEvent]\nrestOnError = \"LOG\"\n";
    let server = InProcessServer::with_plugins(
        300,
        apps,
        &[("stuck.lua", stuck)],
        "streaming_sessions_keep_alive_app_keys=stuck\nplugin_call_timeout=200\n",
    )
    .await;
    let fifo = server.dir.path().join("plugins").join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let r = server.registry.clone();
    let id = r
        .register_synthetic(NewStream::publisher("cam", "stuck"))
        .unwrap()
        .media_session_id;
    assert!(
        until(WAIT, || r.get(id).is_none()).await,
        "the fresh worker's verdict stops the stream"
    );
    let reason = r
        .terminations()
        .into_iter()
        .find(|t| t.streams[0].media_session_id == id)
        .map(|t| t.reason)
        .unwrap_or_default();
    assert_eq!(reason, "from a fresh worker");
    let plugin = server.plugin_status("stuck").await;
    assert!(plugin["timeouts"].as_u64().unwrap_or(0) >= 1, "{plugin}");
    assert_eq!(plugin["workersReplaced"], 1, "{plugin}");
    // While the worker was stuck, keep-alive kept no more than two batches in flight for it.
    let keepalive = server.get("/rest-api/keepalive").await;
    assert!(
        keepalive["verdicts"]["plugin"]["results"]["skipped"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{keepalive}"
    );
    // Unblock the stuck thread so that it ends with its call.
    std::fs::write(&fifo, b"").unwrap();
    server.shutdown().await;
}

#[test]
fn plugin_test_ends_on_a_coroutine_loop() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loop.lua");
    std::fs::write(
        &file,
        "local M = {}\nfunction M.on_keepalive(s) coroutine.wrap(function() while true do end end)() return 200 end\nreturn M\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["plugin", "test"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("sluice plugin test still running after 15 s on a coroutine loop");
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("instruction budget of 1000000 exceeded"),
        "{stderr}"
    );
}

/// The plugin worker threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|name| name.trim_end().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_leave_one_worker_thread_and_a_looping_load_leaves_none() {
    let apps = "[apps.reloaded]\nplugin = \"r.lua\"\n";
    let source = |n: u32| {
        format!("local M = {{}}\nfunction M.on_keepalive(s) return 200 end -- v{n}\nreturn M\n")
    };
    let server = InProcessServer::with_plugins(10_000, apps, &[("r.lua", &source(1))], "").await;
    let file = server.dir.path().join("plugins").join("r.lua");
    for n in 2..=11 {
        std::fs::write(&file, source(n)).unwrap();
        server
            .wait_plugin("reloaded", WAIT, "reloaded", |p| p["version"] == n)
            .await;
    }
    // A top level that loops in a coroutine does not load, and its thread ends.
    std::fs::write(
        &file,
        "coroutine.wrap(function() while true do end end)()\nreturn {}\n",
    )
    .unwrap();
    let plugin = server
        .wait_plugin("reloaded", WAIT, "the looping load fails", |p| {
            p["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("instruction budget"))
        })
        .await;
    assert!(
        plugin["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("instruction budget")),
        "{plugin}"
    );
    assert_eq!(
        plugin["version"], 11,
        "the last good version stays: {plugin}"
    );
    assert!(
        until(WAIT, || threads_named("lua-reloaded") == 1).await,
        "{} worker threads after 10 reloads and a failed one",
        threads_named("lua-reloaded")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_holds_up_neither_status_reads_nor_other_apps_verdicts() {
    let slow = |n: u32| {
        format!(
            "local t = now_ms() while now_ms() - t < 1500 do end -- v{n}\nlocal M = {{}}\nfunction M.on_keepalive(s) return 200 end\nreturn M\n"
        )
    };
    let timely = "local M = {}\nfunction M.on_keepalive(s) return 403, 'on time' end\nreturn M\n";
    let apps = "[apps.slow]\nplugin = \"slow.lua\"\n[apps.timely]\nplugin = \"timely.lua\"\n";
    let server = InProcessServer::with_plugins(
        300,
        apps,
        &[("slow.lua", &slow(1)), ("timely.lua", timely)],
        "streaming_sessions_keep_alive_app_keys=timely\nplugin_instruction_budget=1000000000\n",
    )
    .await;
    std::fs::write(server.dir.path().join("plugins").join("slow.lua"), slow(2)).unwrap();
    // The reload is under way (it takes 1.5 s); reads and other apps' verdicts go on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let plugin = server.plugin_status("slow").await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "GET /rest-api/plugins waited {:?} for a load",
        started.elapsed()
    );
    assert_eq!(plugin["version"], 1, "still loading: {plugin}");
    let r = server.registry.clone();
    let started = Instant::now();
    let id = r
        .register_synthetic(NewStream::publisher("cam", "timely"))
        .unwrap()
        .media_session_id;
    assert!(until(WAIT, || r.get(id).is_none()).await);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a verdict of another app waited {:?}",
        started.elapsed()
    );
    server
        .wait_plugin("slow", WAIT, "the slow version loads", |p| {
            p["version"] == 2
        })
        .await;
    server.shutdown().await;
}
