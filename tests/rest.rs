//! The REST API against a running server: every filter and combination, dry runs, the
//! audit trail, every error, auth, HTTPS with a live certificate change, and the time from
//! terminate to the WebRTC client knowing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{InProcessServer, TestServer, read_status_events};
use serde_json::{Value, json};
use sluice::registry::{NewStream, Status};
use sluice_client::{Client, SyntheticMedia};

const WAIT: Duration = Duration::from_secs(10);

fn ids(answer: &Value) -> BTreeSet<String> {
    match answer {
        Value::Array(streams) => streams
            .iter()
            .map(|s| s["mediaSessionId"].as_str().unwrap().to_string())
            .collect(),
        other => other["mediaSessionIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
    }
}

fn set(list: &[&uuid::Uuid]) -> BTreeSet<String> {
    list.iter().map(|u| u.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_dry_runs_and_the_audit_trail_on_synthetic_streams() {
    let server = InProcessServer::start("").await;
    let r = &server.registry;
    let add = |new: NewStream| r.register_synthetic(new).unwrap().media_session_id;
    let cam = add(NewStream::publisher("cam", "defaultApp"));
    let mut with_token = NewStream::player("cam", "defaultApp");
    with_token.bearer = sluice::registry::Bearer::new(Some("viewer-secret".into()));
    let cam_p1 = add(with_token);
    let cam_p2 = add(NewStream::player("cam", "defaultApp"));
    let news = add(NewStream::publisher("news", "liveApp"));
    let news_p1 = add(NewStream::player("news", "liveApp"));

    let find = |body: Value| server.post("/rest-api/stream/find", body);
    let (status, all) = server.post("/rest-api/stream/find_all", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&all), set(&[&cam, &cam_p1, &cam_p2, &news, &news_p1]));
    let text = all.to_string();
    assert!(!text.contains("viewer-secret"), "never a token");
    for field in [
        "mediaSessionId",
        "name",
        "published",
        "status",
        "info",
        "appKey",
        "sessionId",
        "createdDate",
        "createDate",
        "nodeId",
        "hasAudio",
        "hasVideo",
        "mediaProvider",
        "mediaType",
        "audioCodec",
        "videoCodec",
    ] {
        assert!(
            all[0].get(field).is_some(),
            "stream objects carry {field}: {}",
            all[0]
        );
    }

    let cases = [
        (
            json!({"published": false}),
            set(&[&cam_p1, &cam_p2, &news_p1]),
        ),
        (
            json!({"name": "cam", "published": false}),
            set(&[&cam_p1, &cam_p2]),
        ),
        (json!({"name": "cam", "status": "PUBLISHING"}), set(&[&cam])),
        (json!({"mediaSessionIds": [cam, news]}), set(&[&cam, &news])),
        (json!({"mediaSessionId": cam_p2}), set(&[&cam_p2])),
        (json!({"appKey": "liveApp"}), set(&[&news, &news_p1])),
        (
            json!({"appKey": "liveApp", "published": true}),
            set(&[&news]),
        ),
        (
            json!({"status": "PLAYING", "appKey": "defaultApp"}),
            set(&[&cam_p1, &cam_p2]),
        ),
        (
            json!({"mediaSessionIds": [cam, news], "name": "news"}),
            set(&[&news]),
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = find(body.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ids(&answer), expected, "{body}");
    }
    let (status, answer) = find(json!({"name": "nobody"})).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("no stream matches"))
    );

    // A dry run names what would stop, and stops nothing.
    let (status, answer) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"published": false, "dryRun": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["dryRun"], true);
    assert!(answer.get("terminationId").is_none());
    assert_eq!(ids(&answer), set(&[&cam_p1, &cam_p2, &news_p1]));
    assert_eq!(r.len(), 5);
    assert!(r.terminations().is_empty());

    // A reason becomes the info the stopped clients see.
    let watch = r.watch(cam_p1).unwrap();
    let (status, answer) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"name": "cam", "published": false, "reason": "maintenance"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer), set(&[&cam_p1, &cam_p2]));
    assert_eq!(watch.borrow().status, Status::Failed);
    assert_eq!(watch.borrow().info, "Stopped by server: maintenance");
    assert_eq!(r.len(), 3);
    let trail = r.terminations();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].reason, "maintenance");
    assert_eq!(
        serde_json::to_value(&trail[0].filter).unwrap(),
        json!({"name": "cam", "published": false})
    );
    assert_eq!(Some(trail[0].id), answer["terminationId"].as_u64());
    let response = server
        .http_client
        .get(server.url("/rest-api/stream/terminations"))
        .send()
        .await
        .unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed[0]["source"]["kind"], "rest");
    assert_eq!(listed[0]["streams"].as_array().unwrap().len(), 2);

    // Stopping a publisher takes its players down.
    let player_watch = r.watch(news_p1).unwrap();
    let (status, _) = server
        .post(
            "/rest-api/stream/terminate",
            json!({"mediaSessionId": news}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(player_watch.borrow().info, "Stopped by publisher stop");
    assert_eq!(r.len(), 1);

    let (status, answer) = server
        .post("/rest-api/stream/terminate", json!({"all": true}))
        .await;
    assert_eq!((status, ids(&answer)), (200, set(&[&cam])));
    let (status, _) = server.post("/rest-api/stream/find_all", json!({})).await;
    assert_eq!(
        status, 404,
        "find_all answers 404 when empty, as the model does"
    );
    let (status, _) = server
        .post("/rest-api/stream/terminate", json!({"all": true}))
        .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

/// Method, path, content type, body; the status and the `field` the error must name.
type BadRequest = (
    reqwest::Method,
    &'static str,
    &'static str,
    String,
    u16,
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_stop_nothing() {
    let server = InProcessServer::start("").await;
    server
        .registry
        .register_synthetic(NewStream::publisher("cam", "defaultApp"))
        .unwrap();
    let raw = |method: reqwest::Method, path: &str, content_type: &str, body: String| {
        server
            .http_client
            .request(method, server.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let terminate = "/rest-api/stream/terminate";
    let post = reqwest::Method::POST;
    let cases: Vec<BadRequest> = vec![
        (
            post.clone(),
            terminate,
            "application/json",
            "{\"name\": ".into(),
            400,
            None,
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            r#"{"published": "yes"}"#.into(),
            400,
            Some("published"),
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            r#"{"nmae": "cam"}"#.into(),
            400,
            Some("nmae"),
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            r#"{"status": "LIVE"}"#.into(),
            400,
            Some("status"),
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            "{}".into(),
            400,
            None,
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            "".into(),
            400,
            None,
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            r#"{"filter": "older_than", "args": {"ms": 1}}"#.into(),
            400,
            Some("filter"),
        ),
        (
            post.clone(),
            terminate,
            "application/json",
            format!("{{\"name\": \"{}\"}}", "x".repeat(70_000)),
            413,
            None,
        ),
        (
            post.clone(),
            terminate,
            "text/plain",
            r#"{"name": "cam"}"#.into(),
            415,
            None,
        ),
        (
            reqwest::Method::GET,
            terminate,
            "application/json",
            "".into(),
            405,
            None,
        ),
        (
            reqwest::Method::PUT,
            "/rest-api/stream/find",
            "application/json",
            "{}".into(),
            405,
            None,
        ),
        (
            post.clone(),
            "/rest-api/stream/find",
            "application/json",
            r#"{"reason": "x"}"#.into(),
            400,
            Some("reason"),
        ),
        (
            post.clone(),
            "/rest-api/stream/find_all",
            "application/json",
            r#"{"name": "cam"}"#.into(),
            400,
            None,
        ),
        (
            post.clone(),
            "/rest-api/stream/nope",
            "application/json",
            "{}".into(),
            404,
            None,
        ),
    ];
    for (method, path, content_type, body, status, field) in cases {
        let what = format!("{method} {path} {}", &body[..body.len().min(60)]);
        let response = raw(method, path, content_type, body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|_| panic!("{what}: JSON error body"));
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {answer}"
        );
        assert_eq!(answer["field"].as_str(), field, "{what}: {answer}");
    }
    assert_eq!(server.registry.len(), 1, "nothing was stopped");
    assert!(server.registry.terminations().is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_rest_api_and_change_live() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "from-file-1\n").unwrap();
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "{}rest_api_tokens=inline-token\nrest_api_tokens_file=tokens.txt\n",
            common::LOOPBACK
        ),
    )
    .unwrap();
    let server = InProcessServer::start_in(dir).await;
    server
        .registry
        .register_synthetic(NewStream::publisher("cam", "defaultApp"))
        .unwrap();
    let find_all = |token: Option<&str>| {
        let mut request = server
            .http_client
            .post(server.url("/rest-api/stream/find_all"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    let denied = find_all(None).await;
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    assert_eq!(find_all(Some("wrong")).await.status(), 401);
    assert_eq!(find_all(Some("inline-token")).await.status(), 200);
    assert_eq!(find_all(Some("from-file-1")).await.status(), 200);
    // Tokens change with the file, live.
    std::fs::write(&tokens, "from-file-2\n").unwrap();
    assert_eq!(find_all(Some("from-file-1")).await.status(), 401);
    assert_eq!(find_all(Some("from-file-2")).await.status(), 200);
    let terminate = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(terminate.status(), 401);
    assert_eq!(
        server.registry.len(),
        1,
        "an unauthorized terminate stops nothing"
    );
    // WHIP/WHEP are not behind this auth: policies decide there.
    let whep = server
        .http_client
        .post(server.url("/whep/nobody"))
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_ne!(whep.status(), 401);
    server.shutdown().await;
}

/// The server closes a terminated session actively: the WebRTC client learns of it from the
/// server's RTCP BYE (sent just before DTLS close_notify) within 100 ms, not at an ICE
/// timeout seconds later; the status stream says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_reaches_the_client_within_100_ms() {
    let server = TestServer::start("");
    let client = Client::new().unwrap();
    let publisher = client
        .publish(&server.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    let player = client.play(&server.url("/whep/show")).await.unwrap();
    assert!(player.wait_packets(20, WAIT).await);
    let events_url = player.links.events.clone().unwrap();
    let http = server.http_client.clone();
    let events = tokio::spawn(async move { read_status_events(&http, &events_url, WAIT).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let id = player
        .links
        .resource
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let sent = Instant::now();
    let response = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&json!({"mediaSessionId": id, "reason": "over quota"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ended = player
        .wait_ended(WAIT)
        .await
        .expect("the client saw the stop");
    let took = ended.saturating_duration_since(sent);
    eprintln!("terminate -> client knows: {took:?}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    let events = events.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last["status"].as_str(), last["info"].as_str()),
        (Some("FAILED"), Some("Stopped by server: over quota"))
    );
    player.close().await;

    // Not a ban: the player plays again at once, and the publisher was never touched.
    let again = client.play(&server.url("/whep/show")).await.unwrap();
    assert!(again.wait_packets(20, WAIT).await);
    // Terminating the publisher ends it and its player, each client told by BYE.
    let response = server
        .http_client
        .post(server.url("/rest-api/stream/terminate"))
        .json(&json!({"name": "show", "status": "PUBLISHING"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(publisher.wait_ended(WAIT).await.is_some());
    assert!(again.wait_ended(WAIT).await.is_some());
    assert!(
        server
            .eventually(WAIT, || async { server.streams().await == 0 })
            .await
    );
    // And the name publishes again.
    let republished = client
        .publish(&server.url("/whip/show"), SyntheticMedia::default())
        .await
        .unwrap();
    republished.hang_up().await.unwrap();
    publisher.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_picks_up_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = {
        let generated = rcgen::generate_simple_self_signed(vec!["alpha.test".to_string()]).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        generated.cert.pem()
    };
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "{}rest_api_https_cert=cert.pem\nrest_api_https_key=key.pem\n",
            common::LOOPBACK
        ),
    )
    .unwrap();
    let server = InProcessServer::start_in(dir).await;
    let https = server.https.unwrap();
    let trusting = |pem: &str, host: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .resolve(host, https)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let call = |client: reqwest::Client, host: &'static str| async move {
        client
            .post(format!(
                "https://{host}:{}/rest-api/stream/find_all",
                https.port()
            ))
            .send()
            .await
    };
    let answer = call(trusting(&alpha, "alpha.test"), "alpha.test")
        .await
        .expect("https with the configured certificate");
    assert_eq!(answer.status(), 404);
    assert!(answer.json::<Value>().await.unwrap()["error"].is_string());

    // Replace the certificate on disk: new connections get the new one, no restart.
    let beta = {
        let generated = rcgen::generate_simple_self_signed(vec!["beta.test".to_string()]).unwrap();
        std::fs::write(
            server.dir.path().join("key.pem"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(server.dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        generated.cert.pem()
    };
    let mut switched = false;
    for _ in 0..50 {
        if call(trusting(&beta, "beta.test"), "beta.test")
            .await
            .is_ok()
        {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(switched, "the new certificate is served within 10 s");
    assert!(
        call(trusting(&alpha, "alpha.test"), "alpha.test")
            .await
            .is_err(),
        "the old one is gone"
    );

    // A broken certificate file keeps the good one in force.
    std::fs::write(server.dir.path().join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        call(trusting(&beta, "beta.test"), "beta.test")
            .await
            .is_ok()
    );
    server.shutdown().await;
}
