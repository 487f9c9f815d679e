//! Property-based fuzzing of everything that reads untrusted or hand-written input: REST
//! request bodies and filters, `server.properties`, `apps.toml`, WHIP/WHEP SDP offers (parsed
//! directly and posted to a running server), and plugins poking at the `stream` view.
//!
//! cargo-fuzz needs a nightly toolchain, which this project does not use, so the fuzzing is
//! proptest's: structured generators that know the field names, values and line shapes of
//! each format, plus mutations of valid inputs. Each target first replays its corpus under
//! `tests/corpus/<target>/` (inputs worth keeping: past findings and tricky seeds), then runs
//! `SLUICE_FUZZ_CASES` random cases (256 by default, bounded for CI; raise it for a longer
//! run). Failures proptest finds are saved under `tests/proptest-regressions/` and replayed.
//! The properties: no panic, every rejection is an error that says what is wrong, and a
//! running server answers every bad offer with a 4xx and leaks nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{InProcessServer, until};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use sluice::api::requests::{RequestKind, StreamRequest};
use sluice::api::rest::ApiError;
use sluice::config::{Apps, ConfigError, Settings};
use sluice::media::MediaError;
use sluice::policy::{OfflineCall, PolicyError, StreamView, test_offline};

fn cases() -> u32 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/fuzz.txt",
            ),
        )),
        ..Config::default()
    })
}

fn corpus(target: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {target} is empty");
    files
        .into_iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).to_string();
            (p, text)
        })
        .collect()
}

// ---- REST bodies -------------------------------------------------------------------------

const FIELDS: &[&str] = &[
    "mediaSessionId",
    "mediaSessionIds",
    "name",
    "published",
    "status",
    "appKey",
    "filter",
    "args",
    "dryRun",
    "reason",
    "all",
    "holdMs",
    "holdUntilAdmitted",
    "holdId",
    "holdIds",
    "nmae",
    "",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("PUBLISHING".to_string()),
            Just("LIVE".to_string()),
            Just("6f1c2b0e-8a53-4c1e-9d9e-2f6f1f0b8a11".to_string()),
            Just("cam".to_string()),
            ".{0,40}",
            "\\PC{0,600}",
        ]
        .prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (prop::sample::select(FIELDS).prop_map(String::from), inner),
                0..6
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A body close to a real one: mostly known fields with values of about the right shape.
fn rest_body() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6).prop_map(|pairs| {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    })
}

fn check_rest_body(body: &Value) {
    for kind in [RequestKind::Find, RequestKind::Terminate] {
        match StreamRequest::parse(body, kind) {
            Ok(request) => {
                if kind == RequestKind::Terminate {
                    assert!(
                        !request.filter.is_empty() || request.all,
                        "an accepted terminate names streams or says all: {body}"
                    );
                }
                if let Some(ms) = request.hold_ms {
                    assert!((1..=sluice::registry::MAX_HOLD_MS).contains(&ms));
                }
            }
            Err(e) => {
                assert!(!e.message.is_empty(), "an error says what is wrong: {body}");
                assert_names_what_is_wrong(body, kind, &e);
            }
        }
    }
}

/// The fields `StreamRequest::parse` reads (src/api/requests.rs), for find and terminate.
const FIND_FIELDS: &[&str] = &[
    "mediaSessionId",
    "mediaSessionIds",
    "name",
    "published",
    "status",
    "appKey",
    "filter",
    "args",
    "dryRun",
];
const TERMINATE_ONLY_FIELDS: &[&str] = &["reason", "all", "holdMs", "holdUntilAdmitted"];

/// A refused find or terminate body: the error names a field the body has (an unknown one
/// says so and lists the allowed ones), or it is one of the two refusals of a whole body.
fn assert_names_what_is_wrong(body: &Value, kind: RequestKind, e: &ApiError) {
    let message = &e.message;
    let Some(object) = body.as_object() else {
        assert_eq!(
            (message.as_str(), e.field.as_deref()),
            ("the body must be a JSON object of filters", None),
            "{body}"
        );
        return;
    };
    match e.field.as_deref() {
        Some(field) => {
            assert!(
                object.contains_key(field),
                "the error names a field of the body: {field} ({message}) in {body}"
            );
            let known = FIND_FIELDS.contains(&field)
                || (kind == RequestKind::Terminate && TERMINATE_ONLY_FIELDS.contains(&field));
            if known {
                assert!(
                    !message.starts_with("unknown field"),
                    "{field} is known: {message}"
                );
            } else {
                assert!(
                    message.starts_with(&format!(
                        "unknown field '{field}'; allowed: mediaSessionId, "
                    )),
                    "an unknown field says so and what is allowed: {message}"
                );
            }
        }
        None => {
            assert_eq!(
                kind,
                RequestKind::Terminate,
                "only terminate refuses a whole object: {message}"
            );
            assert!(
                message.starts_with("no filter: this would stop every stream"),
                "{body}: {message}"
            );
        }
    }
}

#[test]
fn rest_bodies_parse_or_fail_cleanly() {
    for (path, text) in corpus("rest") {
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_rest_body(&body);
    }
    runner(cases())
        .run(&prop_oneof![rest_body(), json_value()], |body| {
            check_rest_body(&body);
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_answers_every_fuzzed_rest_body_with_json_and_no_5xx() {
    let server = InProcessServer::start("").await;
    for i in 0..20 {
        server
            .registry
            .register_synthetic(sluice::registry::NewStream::publisher(
                &format!("s{i}"),
                "defaultApp",
            ))
            .unwrap();
    }
    let mut bodies: Vec<Value> = corpus("rest")
        .into_iter()
        .filter_map(|(_, text)| serde_json::from_str(&text).ok())
        .collect();
    let mut runner = TestRunner::deterministic();
    let strategy = prop_oneof![rest_body(), json_value()];
    for _ in 0..(cases() / 2).max(20) {
        bodies.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for body in &bodies {
        for path in [
            "/rest-api/stream/find",
            "/rest-api/stream/terminate",
            "/rest-api/stream/release",
            "/rest-api/stream/find_all",
        ] {
            // Dry runs only: the point is parsing, not stopping the table.
            let mut body = body.clone();
            if path.ends_with("terminate")
                && let Some(o) = body.as_object_mut()
            {
                o.insert("dryRun".into(), json!(true));
            }
            let (status, answer) = server.post(path, body.clone()).await;
            assert!(status < 500, "{path} {body}: {status} {answer}");
            if status >= 400 {
                assert!(answer["error"].is_string(), "{path} {body}: {answer}");
            }
            assert_rest_answer(path, &body, status, &answer);
        }
    }
    assert_eq!(server.registry.len(), 20, "dry runs stop nothing");
    server.shutdown().await;
}

/// What the server answers a fuzzed body, by endpoint: for find and terminate exactly the
/// error the parser gives (message and field, as JSON), else the answer of a body that parses;
/// for release and find_all their own refusals.
fn assert_rest_answer(path: &str, body: &Value, status: u16, answer: &Value) {
    // The body as the server reads it: a float may not survive the trip through JSON text.
    let body: &Value = &serde_json::from_slice(&serde_json::to_vec(body).unwrap()).unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    let field = answer["field"].as_str();
    let kind = match path {
        "/rest-api/stream/find" => RequestKind::Find,
        "/rest-api/stream/terminate" => RequestKind::Terminate,
        "/rest-api/stream/find_all" => {
            if status != 200 {
                assert_eq!(
                    (status, error, field),
                    (400, "find_all takes no filters; use find", None),
                    "{path} {body}"
                );
            }
            return;
        }
        _ => {
            // release: a field of the body, or a refusal of the whole body.
            if status == 200 {
                return;
            }
            match field {
                Some(field) => {
                    assert_eq!(status, 400, "{path} {body}: {answer}");
                    assert!(
                        body.as_object().is_some_and(|o| o.contains_key(field)),
                        "{path}: the error names a field of the body: {answer} for {body}"
                    );
                    let unknown = format!("unknown field '{field}'; allowed: ");
                    assert!(
                        error.starts_with("must be ") || error.starts_with(&unknown),
                        "{path} {body}: {answer}"
                    );
                }
                None => assert!(
                    [
                        (400, "the body must be a JSON object"),
                        (400, "name the holds to release (holdId, holdIds, name, published, appKey) or give \"all\": true, not both"),
                        (404, "no hold matches"),
                    ]
                    .contains(&(status, error)),
                    "{path} {body}: {status} {answer}"
                ),
            }
            return;
        }
    };
    match StreamRequest::parse(body, kind) {
        Err(e) => {
            let mut expected = json!({ "error": e.message });
            if let Some(field) = e.field {
                expected["field"] = json!(field);
            }
            assert_eq!((status, answer), (400, &expected), "{path} {body}");
        }
        // No plugin is loaded: a named filter is unknown.
        Ok(request) if request.filter.plugin.is_some() => {
            let name = &request.filter.plugin.unwrap().name;
            assert_eq!(
                (status, error, field),
                (
                    400,
                    format!("unknown filter '{name}': no loaded plugin defines it").as_str(),
                    Some("filter")
                ),
                "{path} {body}"
            );
        }
        Ok(_) => assert!(
            status == 200 || (status, error) == (404, "no stream matches"),
            "{path} {body}: {status} {answer}"
        ),
    }
}

// ---- server.properties and apps.toml ------------------------------------------------------

const KEYS: &[&str] = &[
    "rest_api_address",
    "rest_api_port",
    "rest_api_tokens",
    "media_port_from",
    "media_port_to",
    "media_udp_mux_port",
    "media_public_ip",
    "ice_loopback_only",
    "node_id",
    "max_sdp_size",
    "rest_hook_timeout",
    "rest_hook_breaker_failures",
    "rest_hook_breaker_cooldown",
    "keep_alive_failures_to_stop",
    "plugin_memory_limit",
    "streaming_sessions_keep_alive_interval",
    "streaming_sessions_keep_alive_app_keys",
    "keep_alive_streaming_sessions_enabled",
    "http_header_timeout",
    "unknown_key",
];

fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("true".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("127.0.0.1".to_string()),
        Just("defaultApp, liveApp".to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        "[ -~]{0,30}",
        "\\PC{0,30}",
    ]
}

fn properties_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), prop::sample::select(&["=", ":", " ", " = "][..]), value_text())
            .prop_map(|(k, sep, v)| format!("{k}{sep}{v}")),
        1 => "[#!][ -~]{0,20}",
        1 => Just("\\".to_string()),
        1 => "\\PC{0,40}",
        1 => Just(String::new()),
    ];
    (
        prop::collection::vec(line, 0..12),
        prop::sample::select(&["\n", "\r\n", "\r"][..]),
    )
        .prop_map(|(lines, eol)| lines.join(eol))
}

fn check_properties(text: &str) {
    match Settings::parse(Path::new("server.properties"), text) {
        Ok(settings) => {
            // Whatever is accepted is within the documented bounds.
            assert!(settings.rest_hook_breaker_cooldown >= Duration::from_millis(100));
            assert!(settings.keep_alive_failures_to_stop >= 1);
            assert!(settings.streaming_sessions_keep_alive_interval >= Duration::from_millis(100));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_properties_error(text, &e);
        }
    }
}

/// Lines of a text, whatever its line ends (`\n`, `\r\n`, `\r`).
fn physical_lines(text: &str) -> usize {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .split('\n')
        .count()
}

/// A refused `server.properties`: `server.properties:LINE: KEY: what is wrong` for a bad value
/// or an unknown key, `server.properties:LINE: what is wrong` for a line that is not a
/// property; the line is in the file (0 when the key is not in it, like a bound a default
/// breaks).
fn assert_properties_error(text: &str, e: &ConfigError) {
    let shown = e.to_string();
    let lines = physical_lines(text);
    match e {
        ConfigError::Value {
            file,
            line,
            key,
            message,
        } => {
            assert_eq!(file, Path::new("server.properties"), "{shown}");
            assert!(
                shown.starts_with(&format!("server.properties:{line}: {key}: ")),
                "{shown}"
            );
            assert!(*line <= lines, "line {line} of {lines}: {shown}");
            assert!(!message.is_empty(), "{shown}");
            let unknown = message == "unknown key (see the README for the keys Sluice reads)";
            if KEYS.contains(&key.as_str()) {
                assert_eq!(unknown, key == "unknown_key", "{shown}");
            }
            if unknown {
                assert!(*line >= 1, "an unknown key is on a line: {shown}");
            }
        }
        ConfigError::Syntax {
            file,
            line,
            message,
        } => {
            assert_eq!(file, Path::new("server.properties"), "{shown}");
            assert!(
                shown.starts_with(&format!("server.properties:{line}: ")),
                "{shown}"
            );
            assert!(*line <= lines, "line {line} of {lines}: {shown}");
            assert!(!message.is_empty(), "{shown}");
        }
        ConfigError::Read { .. } => panic!("parsing a text reads no file: {shown}"),
    }
}

#[test]
fn properties_files_parse_or_fail_cleanly() {
    for (_, text) in corpus("properties") {
        check_properties(&text);
    }
    runner(cases())
        .run(&properties_text(), |text| {
            check_properties(&text);
            Ok(())
        })
        .unwrap();
}

fn apps_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![Just("defaultApp"), Just("live"), Just("a b"), Just("")];
    let method = prop_oneof![
        Just("StreamKeepAliveEvent"),
        Just("publishStream"),
        Just("StreamStatusEvent"),
        Just("Unknown"),
    ];
    let line = prop_oneof![
        name.clone().prop_map(|n| format!("[apps.{n}]")),
        (name.clone(), method).prop_map(|(n, m)| format!("[apps.{n}.methods.{m}]")),
        value_text().prop_map(|v| format!("url = \"{v}\"")),
        value_text().prop_map(|v| format!("plugin = \"{v}\"")),
        prop::sample::select(&["FAIL", "LOG", "fail", "x"][..])
            .prop_map(|v| format!("restOnError = \"{v}\"")),
        prop::sample::select(&["NOTIFY", "OVERWRITE", "x"][..])
            .prop_map(|v| format!("restPolicy = \"{v}\"")),
        value_text().prop_map(|v| format!("restExclude = \"{v}\"")),
        Just("restOverwrite = [\"custom\", 5]".to_string()),
        "[ -~]{0,30}",
        "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

#[test]
fn apps_files_parse_or_fail_cleanly() {
    let check = |text: &str| match Apps::parse(Path::new("apps.toml"), text) {
        Ok(apps) => {
            let _ = serde_json::to_string(&apps).unwrap();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_apps_error(text, &e);
        }
    };
    for (_, text) in corpus("apps") {
        check(&text);
    }
    runner(cases())
        .run(&apps_text(), |text| {
            check(&text);
            Ok(())
        })
        .unwrap();
}

/// A refused `apps.toml`: `apps.toml:LINE: what is wrong`, the line in the file. Text that
/// is not TOML of the right shape gets the TOML parser's own message; a file of the right
/// shape gets the check that failed, which names the app (`app name '…'`, `apps.NAME…`).
fn assert_apps_error(text: &str, e: &ConfigError) {
    let shown = e.to_string();
    let ConfigError::Syntax {
        file,
        line,
        message,
    } = e
    else {
        panic!("apps.toml errors are file:line: message: {shown}");
    };
    assert_eq!(file, Path::new("apps.toml"), "{shown}");
    assert!(shown.starts_with(&format!("apps.toml:{line}: ")), "{shown}");
    assert!(*line <= physical_lines(text), "{shown}");
    match toml::from_str::<Apps>(text) {
        Err(toml_error) => assert_eq!(message, toml_error.message(), "{shown}"),
        Ok(_) => assert!(
            message.starts_with("app name '") || message.starts_with("apps."),
            "a failed check names the app: {shown}"
        ),
    }
}

// ---- SDP offers ---------------------------------------------------------------------------

/// What `inspect` says of an offer it refuses: not SDP at all, or SDP it cannot parse.
fn assert_offer_error(sdp: &str, e: &MediaError) {
    let MediaError::BadOffer(message) = e else {
        panic!("an offer is refused as a bad offer, not {e:?}:\n{sdp}");
    };
    assert!(
        message == "the body is not SDP (it must start with v=0)"
            && !sdp.trim_start().starts_with("v=")
            || message.starts_with("unparsable SDP: ") && sdp.trim_start().starts_with("v="),
        "{message}:\n{sdp}"
    );
}

/// A WHIP/WHEP refusal of offer `i`: what `inspect` says of an offer it refuses, word for
/// word; else an offer with nothing to send (or receive), an offer the WebRTC stack cannot
/// use, or for a player a stream that is not published or sends no media yet.
fn assert_refusal(kind: &str, i: usize, sdp: &str, status: u16, text: &str) {
    if let Err(e) = sluice::media::offer::inspect(sdp) {
        assert_eq!(
            (status, text),
            (400, format!("{e}\n").as_str()),
            "{kind}:\n{sdp}"
        );
        return;
    }
    let direction = if kind == "whip" { "publish" } else { "play" };
    let expected = match status {
        400 => {
            text == format!("the offer has no audio or video to {direction}\n")
                || text.starts_with("invalid offer: ")
                || text.starts_with("offer not usable: ")
        }
        404 => kind == "whep" && text == format!("no stream 'fuzz{i}' is being published\n"),
        503 => {
            kind == "whep"
                && text == format!("stream 'fuzz{i}' has not started sending media yet\n")
        }
        _ => false,
    };
    assert!(expected, "{kind} answered {status} {text:?} to:\n{sdp}");
}

/// A mutation of a valid offer: lines dropped, repeated, swapped, cut short or garbled.
fn mutated_offer(offer: String) -> impl Strategy<Value = String> {
    let lines: Vec<String> = offer.lines().map(String::from).collect();
    let n = lines.len();
    prop::collection::vec((0..4u8, 0..n.max(1), 0..n.max(1), "\\PC{0,20}"), 1..6).prop_map(
        move |edits| {
            let mut lines = lines.clone();
            for (op, a, b, junk) in edits {
                if lines.is_empty() {
                    break;
                }
                let (a, b) = (a % lines.len(), b % lines.len());
                match op {
                    0 => {
                        lines.remove(a);
                    }
                    1 => {
                        let line = lines[a].clone();
                        lines.insert(b, line);
                    }
                    2 => lines.swap(a, b),
                    _ => {
                        let cut = lines[a]
                            .char_indices()
                            .nth(b % (lines[a].len() + 1))
                            .map_or(lines[a].len(), |(i, _)| i);
                        lines[a] = format!("{}{junk}", &lines[a][..cut]);
                    }
                }
            }
            lines.join("\r\n") + "\r\n"
        },
    )
}

fn sdp_lines() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("v=0".to_string()),
        "o=[ -~]{0,30}",
        Just("s=-".to_string()),
        Just("t=0 0".to_string()),
        "m=(audio|video|application|text) [0-9]{1,6} [A-Z/]{0,20} [0-9 ]{0,10}",
        "a=(sendonly|recvonly|inactive|sendrecv|mid:[0-9]|rtpmap:[0-9]+ [A-Za-z0-9/]{0,12}|ice-ufrag:[a-z]{0,8}|fingerprint:sha-256 [0-9A-F:]{0,20}|group:BUNDLE [0-9 ]{0,6})",
        "c=IN IP4 [0-9.]{0,15}",
        "[a-z]=\\PC{0,20}",
        "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..20).prop_map(|lines| lines.join("\r\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_offers_parse_or_fail_cleanly_and_a_server_answers_each_with_4xx_or_201() {
    let offer = sluice_client::Client::new()
        .unwrap()
        .sample_offer()
        .await
        .unwrap();
    let mut offers: Vec<String> = corpus("sdp").into_iter().map(|(_, t)| t).collect();
    offers.push(offer.clone());
    let strategy = prop_oneof![mutated_offer(offer.clone()), sdp_lines()];
    let mut runner = runner(cases());
    runner
        .run(&strategy, |sdp| {
            if let Err(e) = sluice::media::offer::inspect(&sdp) {
                assert_offer_error(&sdp, &e);
            }
            Ok(())
        })
        .unwrap();
    // Through the whole WHIP/WHEP path of a running server: a smaller sample.
    // A player of a publisher that never sends media is told so at once (503), not after 5 s.
    let server = InProcessServer::start("player_wait_for_publisher=0\n").await;
    let mut sampler = TestRunner::deterministic();
    for _ in 0..(cases() / 4).max(16) {
        offers.push(strategy.new_tree(&mut sampler).unwrap().current());
    }
    let mut accepted = 0;
    for (i, sdp) in offers.iter().enumerate() {
        for kind in ["whip", "whep"] {
            let response = server
                .http_client
                .post(server.url(&format!("/{kind}/fuzz{i}")))
                .header("content-type", "application/sdp")
                .body(sdp.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let waiting_for_media =
                status == 503 && kind == "whep" && text.contains("not started sending media");
            assert!(
                status == 201 || (400..500).contains(&status) || waiting_for_media,
                "{kind} answered {status} {text} to:\n{sdp}"
            );
            if status == 201 {
                accepted += 1;
            } else {
                assert!(!text.trim().is_empty(), "a refusal says why");
                assert_refusal(kind, i, sdp, status, &text);
            }
        }
    }
    eprintln!("{} offers, {accepted} accepted", offers.len());
    assert!(accepted >= 1, "the valid offer is accepted");
    // Accepted sessions that never connect are stopped; nothing stays behind.
    for record in server.registry.find(|_| true) {
        server.registry.stop(
            record.media_session_id,
            sluice::registry::StopReason::ClientLeft,
        );
    }
    assert!(until(Duration::from_secs(10), || server.registry.is_empty()).await);
    server.shutdown().await;
}

// ---- the plugin stream view ---------------------------------------------------------------

const VIEW_KEYS: &[&str] = &[
    "name",
    "published",
    "custom",
    "media",
    "age_ms",
    "status",
    "bearer",
    "__index",
    "__gc",
    "1",
    "",
    "has_video",
];

fn lua_probe() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(VIEW_KEYS).prop_map(String::from),
        "[a-z_]{1,8}",
    ];
    let op = prop_oneof![
        key.clone().prop_map(|k| format!("local v = s[\"{k}\"]")),
        key.clone().prop_map(|k| format!("s[\"{k}\"] = 1")),
        key.clone()
            .prop_map(|k| format!("local v = s.custom[\"{k}\"]")),
        key.clone().prop_map(|k| format!("s.custom[\"{k}\"] = 'x'")),
        Just("for k, v in pairs(s) do end".to_string()),
        Just("local n = #s".to_string()),
        Just("local t = tostring(s)".to_string()),
        Just("local x = s .. 'x'".to_string()),
        Just("local x = s()".to_string()),
        Just("local x = s < s".to_string()),
        Just("setmetatable(s, nil)".to_string()),
        Just("local m = getmetatable(s)".to_string()),
        Just("local x = s.media[1] .. s.media[2]".to_string()),
        Just("local x = rawget(s, 'name')".to_string()),
        Just("keep = s".to_string()),
        Just("local x = keep and keep.name".to_string()),
    ];
    let ret = prop_oneof![
        Just("return 200"),
        Just("return 403, s.name"),
        Just("return nil"),
        Just("return s"),
        Just("return 403, s"),
        Just("return 403, 'x', {hold_ms = s.age_ms}"),
    ];
    (prop::collection::vec(op, 0..5), ret).prop_map(|(ops, ret)| {
        format!(
            "local M = {{}}\nfunction M.on_keepalive(s)\n  {}\n  {ret}\nend\nreturn M\n",
            ops.join("\n  ")
        )
    })
}

/// A probe's call that fails: the probes all load (their top level only defines `M`), so the
/// error is of the call. A wrong answer says what was returned; an error raised in the call
/// is Lua's runtime error, located in the probe's file when Lua raised it, or the view's own
/// refusal of a write.
fn assert_plugin_error(file: &Path, source: &str, e: &PolicyError) {
    match e {
        PolicyError::WrongType(message) => assert!(
            [
                "returned ",
                "reason is ",
                "options are ",
                "hold_ms is ",
                "hold_ms goes only with 403",
            ]
            .iter()
            .any(|p| message.starts_with(p)),
            "{e}:\n{source}"
        ),
        PolicyError::Call(message) => {
            // Lua shortens a long chunk name from the left: the file name is what stays.
            let name = file.file_name().unwrap().to_string_lossy();
            let located =
                message.starts_with("runtime error: ") && message.contains(&format!("{name}:"));
            assert!(
                located
                    || message == "runtime error: the stream is read-only"
                    || message == "runtime error: custom is read-only",
                "{e}:\n{source}"
            );
        }
        other => panic!("a probe loads and is not unloaded: {other}:\n{source}"),
    }
}

fn view() -> StreamView {
    serde_json::from_value(json!({
        "name": "cam", "published": false, "age_ms": 1000,
        "custom": {"room": "1"}, "media": ["audio", "video"],
    }))
    .unwrap()
}

#[test]
fn plugins_poking_at_the_stream_view_get_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("probe.lua");
    let run = |source: &str| {
        std::fs::write(&file, source).unwrap();
        match test_offline(&file, OfflineCall::KeepAlive(view())) {
            Ok(answer) => {
                let code = &answer["code"];
                assert!(code.is_null() || code.as_u64().is_some_and(|c| (100..600).contains(&c)));
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_plugin_error(&file, source, &e);
            }
        }
    };
    for (_, source) in corpus("lua") {
        run(&source);
    }
    runner((cases() / 2).max(32))
        .run(&lua_probe(), |source| {
            run(&source);
            Ok(())
        })
        .unwrap();
}
