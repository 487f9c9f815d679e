//! No one let in who should not be, nothing given away: REST auth on both ports, tokens kept
//! out of URLs, logs and answers, request size limits, and slow-loris clients cut off.
//! (The Lua sandbox escapes are `cargo test --lib policy`; TLS versions and the
//! loopback-only default are in `tests/lifecycle.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::{LOOPBACK, QUIET_LOG, TestServer, until};
use serde_json::json;
use sluice_client::{Client, SyntheticMedia};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cret-operator-token";
const CLIENT_TOKEN: &str = "whip-client-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_auth_holds_on_both_ports_and_refuses_tokens_in_urls() {
    let server = TestServer::start(&format!("rest_api_tokens={TOKEN},second-token\n"));
    let https = server.https.expect("https");
    for base in [
        format!("http://{}", server.http),
        format!("https://{https}"),
    ] {
        let call = |path: &str, token: Option<&str>| {
            let mut request = server
                .http_client
                .post(format!("{base}{path}"))
                .json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(
            call("/rest-api/config", None).await,
            401,
            "{base}: no token"
        );
        assert_eq!(
            call("/rest-api/config", Some("wrong")).await,
            401,
            "{base}: wrong token"
        );
        assert_eq!(
            call("/rest-api/config", Some(&TOKEN[..TOKEN.len() - 1])).await,
            401,
            "{base}: a prefix of a token"
        );
        assert_eq!(call("/rest-api/config", Some(TOKEN)).await, 200, "{base}");
        assert_eq!(call("/rest-api/config", Some("second-token")).await, 200);
        assert_eq!(call("/metrics", None).await, 401, "{base}: metrics too");
        for query in ["token", "access_token", "Authorization"] {
            assert_eq!(
                call(&format!("/rest-api/config?{query}={TOKEN}"), Some(TOKEN)).await,
                400,
                "{base}: a token in the query string is refused, even a right one"
            );
        }
        // A mangled header is not a way in either.
        let status = server
            .http_client
            .post(format!("{base}/rest-api/config"))
            .header("authorization", format!("Basic {TOKEN}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_or_answers() {
    // Debug logging of Sluice itself: the most it ever says.
    let server = TestServer::start_logged(
        &format!("{LOOPBACK}rest_api_tokens={TOKEN}\n"),
        &format!("{QUIET_LOG},sluice=debug"),
        &[],
    );
    let log_path = server.log_path();
    let http = server.http;
    let url = |path: &str| format!("http://{http}{path}");
    let rest = reqwest::Client::builder().no_proxy().build().unwrap();

    // A publisher with its own bearer token (kept for policies).
    let offer = Client::new().unwrap().sample_offer().await.unwrap();
    let response = rest
        .post(url("/whip/cam?room=1"))
        .header("content-type", "application/sdp")
        .bearer_auth(CLIENT_TOKEN)
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut answers = String::new();
    for (path, token) in [
        ("/rest-api/config", TOKEN),
        ("/rest-api/stream/find_all", TOKEN),
        ("/rest-api/plugins", TOKEN),
        ("/rest-api/keepalive", TOKEN),
        ("/metrics", TOKEN),
        ("/rest-api/config", "wrong-token-attempt"),
        ("/rest-api/config?token=query-token-attempt", TOKEN),
    ] {
        let response = rest
            .post(url(path))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        answers.push_str(&response.text().await.unwrap());
    }
    assert!(
        answers.contains("\"cam\""),
        "the answers were read: {answers}"
    );
    let (status, _) = (
        rest.post(url("/rest-api/stream/terminate"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": "cam", "reason": "bye"}))
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(status, 200);
    let log_has_stop = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("stream stopped")
    };
    assert!(until(WAIT, log_has_stop).await, "the stop was logged");
    let log = std::fs::read_to_string(&log_path).unwrap();
    for secret in [
        TOKEN,
        CLIENT_TOKEN,
        "wrong-token-attempt",
        "query-token-attempt",
    ] {
        assert!(!log.contains(secret), "'{secret}' is in the log");
        assert!(!answers.contains(secret), "'{secret}' is in an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let server = TestServer::start("");
    // A request head over 64 KiB: 431, or the connection is closed.
    let huge_header = "x".repeat(100 * 1024);
    let outcome = server
        .http_client
        .get(server.url("/"))
        .header("x-filler", &huge_header)
        .send()
        .await;
    match outcome {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.is_body(),
            "unexpected: {e}"
        ),
    }
    let long_url = format!("/whip/{}", "n".repeat(100 * 1024));
    let outcome = server
        .http_client
        .post(server.url(&long_url))
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await;
    if let Ok(response) = outcome {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    // Bodies over the limits: 413 for REST (in JSON) and for SDP (in text), whether the
    // length is declared up front or the body just keeps coming in chunks.
    for (path, content_type, answered_in) in [
        (
            "/rest-api/stream/find",
            "application/json",
            "application/json",
        ),
        ("/whip/cam", "application/sdp", "text/plain"),
    ] {
        let response = server
            .http_client
            .post(server.url(path))
            .header("content-type", content_type)
            .body(vec![b' '; 200 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let answer_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            answer_type.starts_with(answered_in),
            "{path}: {answer_type}"
        );

        let mut chunked = tokio::net::TcpStream::connect(server.http).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        chunked.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
        for _ in 0..16 {
            if chunked.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let (answer, _) = read_until_closed(&mut chunked, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("content-type: {answered_in}")),
            "{path}: {answer}"
        );
    }
    // The server is still fine.
    let status = server
        .http_client
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// Reads until the server closes the connection or `limit` passes; returns what it sent
/// and how long it took.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).to_string(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&received).to_string(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_off() {
    let server = TestServer::start("http_header_timeout=500\nhttp_request_timeout=800\n");
    // Headers trickled a byte at a time: the connection is closed after the header timeout.
    let mut slow_headers = tokio::net::TcpStream::connect(server.http).await.unwrap();
    slow_headers
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = None;
    for byte in b"X-Slow: ".iter().cycle().take(40) {
        if slow_headers.write_all(&[*byte]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let (_, done) = read_until_closed(&mut slow_headers, Duration::from_millis(100)).await;
        if done.is_some() {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("a slow header is cut off");
    assert!(closed < Duration::from_secs(3), "cut off after {closed:?}");
    eprintln!("slow headers cut off after {closed:?}");

    // A body that never finishes: 408 after the request timeout, and the handler never ran.
    let mut slow_body = tokio::net::TcpStream::connect(server.http).await.unwrap();
    slow_body
        .write_all(b"POST /rest-api/stream/terminate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut slow_body, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Meanwhile and afterwards, ordinary clients are served.
    let status = server
        .http_client
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let client = Client::new().unwrap();
    let session = client
        .publish(&server.url("/whip/after"), SyntheticMedia::default())
        .await
        .unwrap();
    session.hang_up().await.unwrap();
}
