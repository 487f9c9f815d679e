//! Keep-alive verdicts by a Lua plugin against the same verdicts by a REST hook, side by
//! side in one run, for 100 000 synthetic streams: verdicts per second per core (CPU
//! seconds of every process involved) and the ratio.
//!
//! The plugin is the shipped `viewing_time_limit.lua`, called as the scheduler calls it (one
//! call into the plugin's worker per app and tick, here 1 000 streams each). The REST side
//! is the server's hook client calling `examples/hook_echo.rs` (a separate process) with 64
//! calls in flight.
//!
//! Run: `cargo bench --bench policy` (builds the example first).

mod support;

use std::time::{Duration, Instant};

use support::cpu_seconds;

use sluice::config::MethodConfig;
use sluice::hooks::{CallLimits, HookClient, stream_body};
use sluice::registry::NewStream;

const STREAMS: usize = 100_000;
const REST_CALLS: usize = 20_000;
/// Rounds over all streams on the Lua side, for enough CPU time to measure.
const LUA_ROUNDS: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let backend = support::HookEcho::start();
    let (url, backend_pid) = (backend.url.clone(), backend.pid());
    let me = std::process::id();

    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins");
    std::fs::copy(
        format!(
            "{}/plugins/viewing_time_limit.lua",
            env!("CARGO_MANIFEST_DIR")
        ),
        dir.path().join("plugins/viewing_time_limit.lua"),
    )
    .expect("plugin");
    std::fs::write(
        dir.path().join("apps.toml"),
        "[apps.defaultApp]\nplugin = \"viewing_time_limit.lua\"\n",
    )
    .expect("apps");
    std::fs::write(
        dir.path().join("server.properties"),
        "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\n",
    )
    .expect("props");
    let server = sluice::start(sluice::ServerOptions {
        config_dir: Some(dir.path().to_path_buf()),
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        https_listen: None,
        ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
        wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
    })
    .await
    .expect("server");
    for i in 0..STREAMS / 2 {
        let name = format!("s{i}");
        server
            .registry
            .register_synthetic(NewStream::publisher(&name, "defaultApp"))
            .expect("publisher");
        server
            .registry
            .register_synthetic(NewStream::player(&name, "defaultApp"))
            .expect("player");
    }
    let records = server.registry.find(|_| true);

    // Lua: every stream once, 1 000 per call into the plugin, as the scheduler hands them
    // over (records already read from the registry, as the REST bodies below are built first).
    let batches: Vec<Vec<_>> = (0..LUA_ROUNDS)
        .flat_map(|_| records.chunks(1000).map(|c| c.to_vec()))
        .collect();
    let (cpu0, start) = (cpu_seconds(me), Instant::now());
    let mut kept = 0;
    for batch in batches {
        kept += server
            .policy
            .keepalive("defaultApp", batch)
            .await
            .iter()
            .filter(|v| matches!(v, sluice::policy::PluginVerdict::Keep))
            .count();
    }
    let lua_wall = start.elapsed();
    let lua_cpu = cpu_seconds(me) - cpu0;
    assert_eq!(
        kept,
        STREAMS * LUA_ROUNDS,
        "every stream is young: all kept"
    );

    // REST: the same verdict through the hook client, 64 in flight.
    let client = HookClient::new();
    let method = MethodConfig::default();
    let bodies: Vec<_> = records
        .iter()
        .take(REST_CALLS)
        .map(|r| stream_body(r, &method))
        .collect();
    let (cpu0, backend0, start) = (cpu_seconds(me), cpu_seconds(backend_pid), Instant::now());
    for chunk in bodies.chunks(64) {
        let calls = chunk.iter().map(|body| {
            client.call(
                "defaultApp",
                &url,
                "StreamKeepAliveEvent",
                body,
                CallLimits::timeout(Duration::from_secs(5)),
            )
        });
        for answer in futures::future::join_all(calls).await {
            assert_eq!(answer.expect("hook answers").status, 200);
        }
    }
    let rest_wall = start.elapsed();
    let rest_cpu = (cpu_seconds(me) - cpu0) + (cpu_seconds(backend_pid) - backend0);
    drop(backend);

    // The scheduler itself: 100 000 streams verdicted by the plugin within each 10 s
    // interval. CPU of this whole process over one interval, against the same window with
    // keep-alive off (the baseline: an idle server holding the same streams).
    let window = Duration::from_secs(10);
    let (idle0, idle_start) = (cpu_seconds(me), Instant::now());
    tokio::time::sleep(window).await;
    let idle = (cpu_seconds(me) - idle0) / idle_start.elapsed().as_secs_f64();
    std::fs::write(
        dir.path().join("server.properties"),
        "ice_loopback_only=true
media_udp_mux_port=0
media_port_from=0
media_port_to=0
keep_alive_streaming_sessions_enabled=true
streaming_sessions_keep_alive_interval=10000
",
    )
    .expect("props");
    let verdicts = || {
        server
            .keepalive
            .stats
            .snapshot()
            .get("plugin")
            .map_or(0, |c| c.results.values().sum::<u64>())
    };
    // One interval to warm up (the first verdicts go out as the switch takes effect).
    while verdicts() < STREAMS as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (busy0, verdicts0, busy_start) = (cpu_seconds(me), verdicts(), Instant::now());
    tokio::time::sleep(window).await;
    let elapsed = busy_start.elapsed().as_secs_f64();
    let busy = (cpu_seconds(me) - busy0) / elapsed;
    let per_interval = (verdicts() - verdicts0) as f64 / elapsed * 10.0;
    println!(
        "scheduler + Lua: {per_interval:.0} verdicts per 10 s interval, {:.2} % of one core (idle server: {:.2} %)",
        busy * 100.0,
        idle * 100.0
    );
    support::result(
        "keep-alive by Lua, whole server CPU",
        &format!("{STREAMS} streams / 10 s, {per_interval:.0} verdicts per interval"),
        &format!("{:.2} % of a core", busy * 100.0),
        &format!("{:.2} % (keep-alive off)", idle * 100.0),
        busy / idle.max(1e-4),
    );
    server.shutdown().await;

    let lua_verdicts = STREAMS * LUA_ROUNDS;
    let lua_per_core = lua_verdicts as f64 / lua_cpu.max(0.01);
    let rest_per_core = REST_CALLS as f64 / rest_cpu.max(0.01);
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>14} {:>16}",
        "keep-alive verdicts", "verdicts", "wall", "CPU s", "verdicts/s", "verdicts/s/core"
    );
    println!(
        "{:<34} {:>9} {:>10.2?} {:>10.2} {:>14.0} {:>16.0}",
        "Lua plugin (viewing_time_limit)",
        lua_verdicts,
        lua_wall,
        lua_cpu,
        lua_verdicts as f64 / lua_wall.as_secs_f64(),
        lua_per_core
    );
    println!(
        "{:<34} {:>9} {:>10.2?} {:>10.2} {:>14.0} {:>16.0}",
        "REST hook (server + back end)",
        REST_CALLS,
        rest_wall,
        rest_cpu,
        REST_CALLS as f64 / rest_wall.as_secs_f64(),
        rest_per_core
    );
    println!(
        "ratio Lua/REST, verdicts per second per core: {:.1}",
        lua_per_core / rest_per_core
    );
    support::result(
        "keep-alive verdicts per core: Lua plugin",
        &format!("{STREAMS} streams"),
        &format!("{lua_per_core:.0}/s"),
        &format!("{rest_per_core:.0}/s (REST hook)"),
        lua_per_core / rest_per_core,
    );
}
