//! Signalling setup time: a player over WCS's WebSocket signalling (connect, `connection`,
//! `playStream`, answer, ICE/DTLS, first media packet) against a WHEP player (one POST, then
//! the same), measured side by side in one run, alternating, against one publisher. Also the
//! WebSocket player's time to its `PLAYING` event.
//!
//! Run: `cargo bench --bench signalling` (prints medians and p99 of 100 setups each).

use std::time::{Duration, Instant};

use sluice_client::wcs::WcsConnection;
use sluice_client::{Client, SyntheticMedia};

const SETUPS: usize = 100;
const WAIT: Duration = Duration::from_secs(15);

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("server.properties"),
        "ice_loopback_only=true\nmedia_udp_mux_port=0\nmedia_port_from=0\nmedia_port_to=0\noffer_rate_per_address=0\n",
    )
    .expect("properties");
    let loopback = || Some("127.0.0.1:0".parse().expect("addr"));
    let server = sluice::start(sluice::ServerOptions {
        config_dir: Some(dir.path().to_path_buf()),
        http_listen: loopback(),
        https_listen: None,
        ws_listen: loopback(),
        wss_listen: None,
    })
    .await
    .expect("server");
    let http = server.http_addr.expect("http");
    let ws = format!("ws://{}", server.ws_addr.expect("ws"));
    let client = Client::new().expect("client");
    let publisher = client
        .publish(
            &format!("http://{http}/whip/bench"),
            SyntheticMedia::default(),
        )
        .await
        .expect("publish");
    let (mut whep, mut wcs, mut wcs_playing) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SETUPS + 5 {
        let started = Instant::now();
        let player = client
            .play(&format!("http://{http}/whep/bench"))
            .await
            .expect("WHEP play");
        assert!(player.wait_packets(1, WAIT).await, "WHEP: no media");
        let whep_took = started.elapsed();
        player.hang_up().await.expect("hang up");
        player.close().await;

        let started = Instant::now();
        let connection = WcsConnection::connect(&ws, "defaultApp", serde_json::json!({}))
            .await
            .expect("connect");
        let (player, id) = client
            .play_wcs(&connection, "bench")
            .await
            .expect("WCS play");
        connection
            .wait_status(&id, "PLAYING", WAIT)
            .await
            .expect("PLAYING");
        let playing_took = started.elapsed();
        assert!(player.wait_packets(1, WAIT).await, "WCS: no media");
        let wcs_took = started.elapsed();
        connection.disconnect();
        connection.wait_closed(WAIT).await;
        player.close().await;
        // The first few warm up the server and the client.
        if i >= 5 {
            whep.push(whep_took);
            wcs.push(wcs_took);
            wcs_playing.push(playing_took);
        }
    }
    publisher.close().await;
    server.shutdown().await;
    println!("| setup ({SETUPS} each, alternating) | median | p99 | median ratio to WHEP |");
    println!("| --- | --- | --- | --- |");
    let whep_median = percentile(&mut whep, 0.5);
    let whep_p99 = percentile(&mut whep, 0.99);
    println!(
        "| WHEP: POST → first media packet | {} | {} | 1.00 |",
        ms(whep_median),
        ms(whep_p99)
    );
    let wcs_median = percentile(&mut wcs, 0.5);
    let wcs_p99 = percentile(&mut wcs, 0.99);
    println!(
        "| WCS WebSocket: connect → first media packet | {} | {} | {:.2} |",
        ms(wcs_median),
        ms(wcs_p99),
        wcs_median.as_secs_f64() / whep_median.as_secs_f64()
    );
    let playing_median = percentile(&mut wcs_playing, 0.5);
    let playing_p99 = percentile(&mut wcs_playing, 0.99);
    println!(
        "| WCS WebSocket: connect → PLAYING event | {} | {} | {:.2} |",
        ms(playing_median),
        ms(playing_p99),
        playing_median.as_secs_f64() / whep_median.as_secs_f64()
    );
}
