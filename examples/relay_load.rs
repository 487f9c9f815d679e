//! Relay load generator: one synthetic publisher (VP8 at a chosen bitrate plus Opus) and
//! N players against a running server, in this separate process. Prints, for each N, the
//! packet loss, the time from WHEP POST to first packet, and the CPU used by the server (read
//! from /proc/PID/stat) and by this load generator. Its players count their media unopened
//! (`Client::counting`: batched reads, no decryption), so the generator stays cheaper than
//! the server it loads; `--full-receive` makes them decrypt and read every packet instead.
//!
//! ```sh
//! cargo run --release -- serve --config scripts/loopback &   # or scripts/relay-capacity.sh
//! cargo run --release --example relay_load -- --url http://127.0.0.1:8081 --server-pid PID 1 10 50
//! ```

use std::time::{Duration, Instant};

use sluice_client::{Client, SyntheticMedia};

struct Args {
    url: String,
    server_pid: Option<u32>,
    bitrate: u64,
    seconds: u64,
    players: Vec<usize>,
    /// When set, each round also prints one machine-readable `RELAY|label|…` line.
    label: Option<String>,
    /// Players decrypt and read every packet (`Client::new`) instead of counting.
    full_receive: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        url: "http://127.0.0.1:8081".into(),
        server_pid: None,
        bitrate: 1_500_000,
        seconds: 5,
        players: Vec::new(),
        label: None,
        full_receive: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--url" => args.url = value()?,
            "--server-pid" => args.server_pid = Some(value()?.parse()?),
            "--bitrate" => args.bitrate = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--label" => args.label = Some(value()?),
            "--full-receive" => args.full_receive = true,
            n => args.players.push(
                n.parse()
                    .map_err(|_| anyhow::anyhow!("unknown argument {n}"))?,
            ),
        }
    }
    if args.players.is_empty() {
        args.players = vec![1, 10, 50, 100, 200];
    }
    Ok(args)
}

/// CPU seconds (user + system) used so far by a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = if args.full_receive {
        Client::new()?
    } else {
        Client::counting()?
    };
    let me = std::process::id();
    println!(
        "{:>7} {:>9} {:>9} {:>8} {:>11} {:>10} {:>10} {:>12} {:>12} {:>20}",
        "players",
        "sent/s",
        "recv/s",
        "loss%",
        "first pkt",
        "srv CPU%",
        "gen CPU%",
        "srv µs/pkt",
        "srv KiB/plr",
        "RSS MiB before/live/after"
    );
    for (round, &players) in args.players.iter().enumerate() {
        let name = format!("load{round}");
        let rss_before = args.server_pid.and_then(rss_kib);
        let publisher = client
            .publish(
                &format!("{}/whip/{name}", args.url),
                SyntheticMedia {
                    video_bitrate_bps: args.bitrate,
                    ..SyntheticMedia::default()
                },
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut sessions = Vec::with_capacity(players);
        let mut first_packet = Vec::with_capacity(players);
        for _ in 0..players {
            let posted = Instant::now();
            let player = client.play(&format!("{}/whep/{name}", args.url)).await?;
            sessions.push((posted, player));
        }
        for (posted, player) in &sessions {
            let mut first = player.first_packet.clone();
            let at = tokio::time::timeout(Duration::from_secs(10), first.wait_for(|f| f.is_some()))
                .await;
            if let Ok(Ok(at)) = at {
                first_packet.push(at.expect("set").saturating_duration_since(*posted));
            }
        }
        first_packet.sort();
        // Let every player settle, then measure one window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_live = args.server_pid.and_then(rss_kib);
        let sent_before = publisher.counters.packets();
        let received_before: u64 = sessions.iter().map(|(_, p)| p.counters.packets()).sum();
        let server_cpu_before = args.server_pid.and_then(cpu_seconds);
        let my_cpu_before = cpu_seconds(me);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let sent = publisher.counters.packets() - sent_before;
        let received: u64 = sessions
            .iter()
            .map(|(_, p)| p.counters.packets())
            .sum::<u64>()
            - received_before;
        let server_cpu = match (server_cpu_before, args.server_pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let my_cpu = my_cpu_before.zip(cpu_seconds(me)).map(|(a, b)| b - a);
        let expected = sent as f64 * players as f64;
        let loss = if expected > 0.0 {
            (1.0 - received as f64 / expected).max(0.0) * 100.0
        } else {
            100.0
        };
        let median_first = first_packet.get(first_packet.len() / 2).copied();
        let per_packet = server_cpu.map(|cpu| cpu * 1e6 / received.max(1) as f64);
        let per_player = rss_before
            .zip(rss_live)
            .map(|(a, b)| b.saturating_sub(a) / players as u64);
        for (_, player) in &sessions {
            player.close().await;
        }
        publisher.hang_up().await?;
        drop(sessions);
        // What the server gives back once every player has gone: RSS 2 s after.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = args.server_pid.and_then(rss_kib);
        let mib =
            |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        println!(
            "{:>7} {:>9.0} {:>9.0} {:>8.2} {:>11} {:>10} {:>10.0} {:>12} {:>12} {:>9}/{}/{}",
            players,
            sent as f64 / elapsed,
            received as f64 / elapsed,
            loss,
            median_first
                .map(|d| format!("{d:.1?}"))
                .unwrap_or_else(|| "-".into()),
            server_cpu
                .map(|c| format!("{:.0}", c * 100.0 / elapsed))
                .unwrap_or_else(|| "-".into()),
            my_cpu.map(|c| c * 100.0 / elapsed).unwrap_or(0.0),
            per_packet
                .map(|p| format!("{p:.2}"))
                .unwrap_or_else(|| "-".into()),
            per_player
                .map(|k| k.to_string())
                .unwrap_or_else(|| "-".into()),
            mib(rss_before),
            mib(rss_live),
            mib(rss_after),
        );
        if let Some(label) = &args.label {
            // label|players|server µs per packet|loss %|first packet ms|server CPU %|generator CPU %|server KiB per player|server RSS KiB before|live|2 s after the players left
            println!(
                "RELAY|{label}|{players}|{:.2}|{loss:.2}|{:.1}|{:.0}|{:.0}|{}|{}|{}|{}",
                per_packet.unwrap_or(f64::NAN),
                median_first.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
                server_cpu.map_or(f64::NAN, |c| c * 100.0 / elapsed),
                my_cpu.map_or(f64::NAN, |c| c * 100.0 / elapsed),
                per_player.map_or("-".to_string(), |k| k.to_string()),
                rss_before.map_or("-".to_string(), |k| k.to_string()),
                rss_live.map_or("-".to_string(), |k| k.to_string()),
                rss_after.map_or("-".to_string(), |k| k.to_string()),
            );
        }
    }
    Ok(())
}
