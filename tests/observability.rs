//! What operators see: `/metrics` scraped before and after a run with real publishes, plays,
//! keep-alive verdicts (Lua and a real web back end), terminates and reloads — each counter
//! moved as it should and the text parses as Prometheus exposition — and the JSON log, with
//! one line per stopped stream naming the stream, the source and the reason.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{InProcessServer, LOOPBACK, QUIET_LOG, TestServer, until};
use serde_json::{Value, json};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

/// A strict reading of the Prometheus/OpenMetrics text format: every line is `# HELP`,
/// `# TYPE`, `# UNIT`, the final `# EOF`, or a sample `name{label="value",…} number` of a
/// declared family. Returns the samples by `name{sorted labels}`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("no '# EOF' at the end".into());
    }
    for (n, line) in lines.iter().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram"].contains(&kind) {
                        return Err(at("unexpected type"));
                    }
                    families.insert(name.to_string(), kind.to_string());
                }
                (Some("HELP" | "UNIT"), Some(_), _) | (Some("EOF"), None, None) => {}
                _ => return Err(at("bad comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().map_err(|_| at("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?,
            ),
            None => (series, ""),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(at("bad metric name"));
        }
        let family = families
            .iter()
            .filter(|(f, _)| name.starts_with(f.as_str()))
            .max_by_key(|(f, _)| f.len())
            .ok_or_else(|| at("sample of an undeclared family"))?;
        let suffix = &name[family.0.len()..];
        let allowed: &[&str] = match family.1.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            _ => &["_bucket", "_sum", "_count", "_created"],
        };
        if !allowed.contains(&suffix) {
            return Err(at("suffix does not fit the family's type"));
        }
        let mut pairs = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
            let end = after.find('"').ok_or_else(|| at("unclosed label value"))?;
            pairs.push(format!("{key}=\"{}\"", &after[..end]));
            rest = after[end + 1..].trim_start_matches(',');
        }
        pairs.sort();
        samples.insert(format!("{name}{{{}}}", pairs.join(",")), value);
    }
    Ok(samples)
}

async fn scrape(server: &InProcessServer) -> BTreeMap<String, f64> {
    let response = server
        .http_client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    // An independent parser must read it too.
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("prometheus-parse reads it");
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    get(after, key) - get(before, key)
}

#[test]
fn the_exposition_parser_rejects_what_prometheus_would() {
    let good = "# TYPE a counter\na_total{x=\"1\"} 2\n# TYPE b gauge\nb 3\n# EOF";
    assert_eq!(parse_exposition(good).unwrap()["a_total{x=\"1\"}"], 2.0);
    for bad in [
        "# TYPE a counter\na_total 2",
        "# TYPE a counter\na 2\n# EOF",
        "b 3\n# EOF",
        "# TYPE a counter\na_total two\n# EOF",
        "# TYPE a counter\na_total{x=\"1} 2\n# EOF",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_publishes_plays_verdicts_stops_and_reloads() {
    // The web back end of hookApp: keeps everything.
    let backend = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(|Path(_m): Path<String>, Json(_b): Json<Value>| async {
            (StatusCode::OK, Json(json!({}))).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move { axum::serve(listener, backend).await });

    let dir = tempfile::tempdir().unwrap();
    let properties = format!(
        "{LOOPBACK}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval=200\nstreaming_sessions_keep_alive_app_keys=defaultApp,hookApp\n"
    );
    std::fs::write(dir.path().join("server.properties"), &properties).unwrap();
    std::fs::write(
        dir.path().join("apps.toml"),
        format!(
            "[apps.defaultApp]\nplugin = \"limit.lua\"\n[apps.hookApp]\nurl = \"http://{backend_addr}/api\"\n[apps.hookApp.methods.StreamKeepAliveEvent]\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(
        dir.path().join("plugins/limit.lua"),
        "local M = {}\nfunction M.on_keepalive(s)\n  if s.name == 'doomed' then return 403, 'not allowed' end\n  return 200\nend\nreturn M\n",
    )
    .unwrap();
    let server = InProcessServer::start_in(dir).await;
    let before = scrape(&server).await;
    let client = Client::new().unwrap();

    let cam = client
        .publish(&server.url("/whip/cam"), SyntheticMedia::default())
        .await
        .unwrap();
    let players = [
        client.play(&server.url("/whep/cam")).await.unwrap(),
        client.play(&server.url("/whep/cam")).await.unwrap(),
    ];
    let hooked = client
        .publish(
            &server.url("/whip/hooked?app=hookApp"),
            SyntheticMedia::default(),
        )
        .await
        .unwrap();
    let doomed = client
        .publish(&server.url("/whip/doomed"), SyntheticMedia::default())
        .await
        .unwrap();
    for p in &players {
        assert!(p.wait_packets(50, WAIT).await, "media flows");
    }
    assert!(
        until(WAIT, || server.registry.find_by_name("doomed").is_empty()).await,
        "the plugin stops 'doomed'"
    );
    doomed.close().await;

    let during = scrape(&server).await;
    assert_eq!(
        get(
            &during,
            "sluice_streams{app=\"defaultApp\",kind=\"player\",status=\"PLAYING\"}"
        ),
        2.0
    );
    assert_eq!(
        get(
            &during,
            "sluice_streams{app=\"hookApp\",kind=\"publisher\",status=\"PUBLISHING\"}"
        ),
        1.0
    );
    assert!(get(&during, "sluice_relay_tracks{}") >= 2.0);

    // The operator stops one player; the publisher leaves and takes the other with it.
    let (status, _) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"mediaSessionId": server.registry.find(|r| !r.published)[0].media_session_id, "reason": "metrics"}),
        )
        .await;
    assert_eq!(status, 200);
    cam.hang_up().await.unwrap();
    assert!(until(WAIT, || server.registry.len() == 1).await);
    // A reload that takes effect and one that is refused.
    let properties_path = server.dir.path().join("server.properties");
    let config = server.server.as_ref().unwrap().config.clone();
    let (reloads, failures) = config.counts();
    std::fs::write(&properties_path, format!("{properties}node_id=edited\n")).unwrap();
    assert!(until(WAIT, || config.counts().0 > reloads).await);
    std::fs::write(&properties_path, "rest_hook_timeout=soon\n").unwrap();
    assert!(until(WAIT, || config.counts().1 > failures).await);
    std::fs::write(&properties_path, &properties).unwrap();

    let after = scrape(&server).await;
    let m = |key: &str| moved(&before, &after, key);
    assert_eq!(
        m("sluice_streams_started_total{app=\"defaultApp\",kind=\"publisher\"}"),
        2.0
    );
    assert_eq!(
        m("sluice_streams_started_total{app=\"defaultApp\",kind=\"player\"}"),
        2.0
    );
    assert_eq!(
        m("sluice_streams_started_total{app=\"hookApp\",kind=\"publisher\"}"),
        1.0
    );
    assert_eq!(
        m("sluice_streams_stopped_total{app=\"defaultApp\",cause=\"server\",kind=\"player\"}"),
        1.0
    );
    assert_eq!(
        m("sluice_streams_stopped_total{app=\"defaultApp\",cause=\"server\",kind=\"publisher\"}"),
        1.0,
        "'doomed'"
    );
    assert_eq!(
        m(
            "sluice_streams_stopped_total{app=\"defaultApp\",cause=\"publisher_stopped\",kind=\"player\"}"
        ),
        1.0
    );
    assert_eq!(
        m("sluice_streams_stopped_total{app=\"defaultApp\",cause=\"client\",kind=\"publisher\"}"),
        1.0
    );
    assert_eq!(m("sluice_terminations_total{source=\"rest\"}"), 1.0);
    assert_eq!(m("sluice_terminations_total{source=\"keep_alive\"}"), 1.0);
    assert!(m("sluice_keepalive_verdicts_total{result=\"keep\",source=\"plugin\"}") >= 1.0);
    assert_eq!(
        m("sluice_keepalive_verdicts_total{result=\"stop\",source=\"plugin\"}"),
        1.0
    );
    assert!(m("sluice_keepalive_verdicts_total{result=\"keep\",source=\"hook\"}") >= 1.0);
    let verdicts = get(
        &after,
        "sluice_keepalive_verdict_seconds_count{source=\"hook\"}",
    );
    assert!(verdicts >= 1.0);
    assert_eq!(
        get(
            &after,
            "sluice_keepalive_verdict_seconds_bucket{le=\"+Inf\",source=\"hook\"}"
        ),
        verdicts,
        "the +Inf bucket holds every observation"
    );
    let hook_calls = m("sluice_hook_calls_total{app=\"hookApp\",method=\"StreamKeepAliveEvent\"}");
    assert!(hook_calls >= 1.0);
    assert_eq!(
        m(
            "sluice_hook_answers_total{app=\"hookApp\",method=\"StreamKeepAliveEvent\",status=\"200\"}"
        ),
        hook_calls
    );
    assert_eq!(
        get(
            &after,
            "sluice_hook_circuit_state{app=\"hookApp\",state=\"closed\"}"
        ),
        1.0
    );
    assert!(m("sluice_relay_forwarded_packets_total{}") >= 100.0);
    assert!(
        m("sluice_relay_forwarded_bytes_total{}") > m("sluice_relay_forwarded_packets_total{}")
    );
    assert!(m("sluice_relay_received_packets_total{}") >= 50.0);
    assert!(m("sluice_config_reloads_total{}") >= 1.0);
    assert!(m("sluice_config_reload_failures_total{}") >= 1.0);
    assert!(get(&after, "sluice_plugin_loads_total{app=\"defaultApp\"}") >= 1.0);
    assert!(m("sluice_plugin_calls_total{app=\"defaultApp\"}") >= 1.0);
    for p in &players {
        p.close().await;
    }
    hooked.hang_up().await.unwrap();
    server.shutdown().await;
    backend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_stop_with_stream_source_and_reason() {
    let server = TestServer::start_logged(
        LOOPBACK,
        &format!("{QUIET_LOG},sluice=info"),
        &["--log-json"],
    );
    let log_path = server.log_path();
    let http = server.http;
    let url = |path: &str| format!("http://{http}{path}");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&url("/whip/logged"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&url("/whep/logged")).await.unwrap();
    assert!(player.wait_packets(10, WAIT).await, "playing");
    let rest = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer: Value = rest
        .post(url("/rest-api/stream/terminate"))
        .json(&json!({"name": "logged", "published": false, "reason": "log test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(player.wait_ended(WAIT).await.is_some());
    publisher.hang_up().await.unwrap();
    let read_stops = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .filter(|l| l["fields"]["message"] == "stream stopped")
            .collect::<Vec<_>>()
    };
    assert!(
        until(WAIT, || read_stops().len() >= 2).await,
        "both stops are logged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stops = read_stops();
    assert_eq!(
        stops.len(),
        2,
        "each stream's end is logged once: {stops:?}"
    );
    let player_line = stops
        .iter()
        .find(|l| l["fields"]["published"] == false)
        .unwrap();
    let f = &player_line["fields"];
    assert_eq!(f["source"], "rest");
    assert_eq!(f["termination"], answer["terminationId"]);
    assert_eq!(f["reason"], "Stopped by server: log test");
    assert_eq!(f["name"], "logged");
    assert_eq!(f["stream"], answer["mediaSessionIds"][0]);
    let publisher_line = stops
        .iter()
        .find(|l| l["fields"]["published"] == true)
        .unwrap();
    assert_eq!(publisher_line["fields"]["source"], "client");
    assert_eq!(publisher_line["fields"]["status"], "UNPUBLISHED");
    player.close().await;
}
