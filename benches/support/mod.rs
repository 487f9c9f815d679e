#![allow(dead_code)]
//! What the benchmarks share: CPU time of a process, the local web back end
//! (`examples/hook_echo.rs`) started as a separate process, and a server in the bench's own
//! process filled with synthetic streams.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// The hook back end, killed when dropped.
pub struct HookEcho {
    child: Child,
    /// Base URL of its REST hooks (`http://127.0.0.1:PORT/api`).
    pub url: String,
}

impl HookEcho {
    /// Builds `examples/hook_echo.rs` (release) and starts it.
    pub fn start() -> HookEcho {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(&cargo)
            .args(["build", "--release", "--example", "hook_echo"])
            .status()
            .expect("cargo build");
        assert!(built.success());
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
        let mut child = Command::new(format!("{target}/release/examples/hook_echo"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("hook_echo");
        let url = BufReader::new(child.stdout.take().expect("stdout"))
            .lines()
            .next()
            .expect("address")
            .expect("line");
        HookEcho { child, url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HookEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the table `scripts/bench-all.sh` prints: name, workload, figure, the
/// baseline measured in the same run, and their ratio. Other output is for people.
pub fn result(name: &str, workload: &str, figure: &str, baseline: &str, ratio: f64) {
    println!("RESULT|{name}|{workload}|{figure}|{baseline}|{ratio:.2}");
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A server in this process on loopback ports, with `extra` lines in its
/// `server.properties`; the directory lives as long as the returned guard.
pub async fn in_process_server(extra: &str) -> (sluice::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("server.properties"),
        format!("ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\nrest_api_https_port=0\n{extra}"),
    )
    .expect("properties");
    let server = sluice::start(sluice::ServerOptions {
        config_dir: Some(dir.path().to_path_buf()),
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        https_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ws_listen: Some("127.0.0.1:0".parse().expect("addr")),
        wss_listen: Some("127.0.0.1:0".parse().expect("addr")),
    })
    .await
    .expect("server");
    (server, dir)
}

/// Registers `streams` synthetic streams: one publisher and three players per name.
pub fn fill_synthetic(server: &sluice::RunningServer, streams: usize) {
    for i in 0..streams {
        let name = format!("s{}", i / 4);
        let new = if i % 4 == 0 {
            sluice::registry::NewStream::publisher(&name, "defaultApp")
        } else {
            sluice::registry::NewStream::player(&name, "defaultApp")
        };
        server.registry.register_synthetic(new).expect("stream");
    }
}
