//! The operator console's cost: server CPU with 1 000 synthetic streams, idle and with 1 and
//! 5 consoles reading `/rest-api/console/feed`, side by side in one run. The consoles are
//! separate `curl` processes, so the server process (this one, doing nothing else during a
//! window) pays only for building and sending the snapshots.
//!
//! Run: `cargo bench --bench console`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::cpu_seconds;

const STREAMS: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(10);

fn console(url: &str) -> Child {
    Command::new("curl")
        .args(["-s", "-N", "-o", "/dev/null", url])
        .stdout(Stdio::null())
        .spawn()
        .expect("curl")
}

struct Row {
    consoles: usize,
    server_cpu_percent: f64,
    consoles_cpu_percent: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (server, _dir) = support::in_process_server("").await;
    support::fill_synthetic(&server, STREAMS);
    let http = server.http_addr.expect("http");
    let url = format!("http://{http}/rest-api/console/feed");
    let me = std::process::id();
    // The size of one snapshot, for the bytes a console receives.
    let mut feed = reqwest::Client::new().get(&url).send().await.expect("feed");
    let mut first = Vec::new();
    while !first.windows(2).any(|w| w == b"\n\n") {
        let chunk = feed.chunk().await.expect("chunk").expect("a snapshot");
        first.extend_from_slice(&chunk);
    }
    let snapshot = first.len();
    drop(feed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = Vec::new();
    for consoles in [0, 1, 5] {
        let mut readers: Vec<Child> = (0..consoles).map(|_| console(&url)).collect();
        tokio::time::sleep(Duration::from_secs(2)).await; // connected, builder running
        let cpu = |readers: &[Child]| readers.iter().map(|c| cpu_seconds(c.id())).sum::<f64>();
        let (server_before, readers_before) = (cpu_seconds(me), cpu(&readers));
        tokio::time::sleep(WINDOW).await;
        let (server_after, readers_after) = (cpu_seconds(me), cpu(&readers));
        for reader in &mut readers {
            let _ = reader.kill();
            let _ = reader.wait();
        }
        rows.push(Row {
            consoles,
            server_cpu_percent: (server_after - server_before) / WINDOW.as_secs_f64() * 100.0,
            consoles_cpu_percent: (readers_after - readers_before) / WINDOW.as_secs_f64() * 100.0,
        });
        tokio::time::sleep(Duration::from_secs(2)).await; // the builder notices and stops
    }
    let idle = rows[0].server_cpu_percent.max(0.1);
    println!(
        "console feed, {STREAMS} synthetic streams, snapshot {snapshot} bytes, {WINDOW:?} windows"
    );
    println!("| consoles | server CPU (% of a core) | vs idle | consoles' CPU (curl, all) |");
    println!("|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.1}× | {:.1} |",
            row.consoles,
            row.server_cpu_percent,
            row.server_cpu_percent / idle,
            row.consoles_cpu_percent
        );
    }
    let one = rows[1].server_cpu_percent - rows[0].server_cpu_percent;
    let five = rows[2].server_cpu_percent - rows[0].server_cpu_percent;
    println!(
        "the feed's own cost: {one:.1} % of a core with one console, {five:.1} % with five ({:.2}× one: the snapshot is built once)",
        five / one.max(0.01)
    );
    server.shutdown().await;
}
