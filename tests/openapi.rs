//! `openapi.yaml` against the running server: every documented operation is served, every
//! answer the server gives is documented for that operation and matches its schema, and the
//! spec accepts exactly the request bodies the server accepts.

mod common;

use common::InProcessServer;
use serde_json::{Value, json};
use sluice::registry::NewStream;

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    serde_norway::from_str(&text).expect("openapi.yaml is YAML")
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let mut target = spec;
            for part in reference.trim_start_matches("#/").split('/') {
                target = &target[part];
            }
            assert!(!target.is_null(), "dangling $ref {reference}");
            resolve(spec, target)
        }
        None => node,
    }
}

/// Checks `value` against `schema`, a schema of the spec (OpenAPI 3.1 schemas are JSON
/// Schema 2020-12), with `jsonschema`; formats such as `uuid` are checked too. `Err` says
/// where and why.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    // The spec's `$ref`s point into `#/components`: give the schema the spec's components
    // as its own, so that they resolve against it as the root.
    let mut root = resolve(spec, schema).clone();
    let object = root.as_object_mut().expect("a schema is an object");
    object.insert("components".into(), spec["components"].clone());
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("{at}: the spec's schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{at}{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_matches_the_running_server() {
    let spec = spec();
    let server = InProcessServer::start("").await;
    let cam = server
        .registry
        .register_synthetic(NewStream::publisher("cam", "defaultApp"))
        .unwrap();
    server
        .registry
        .register_synthetic(NewStream::player("cam", "defaultApp"))
        .unwrap();

    // (method, path, content type, body)
    let requests: Vec<(&str, &str, &str, String)> = vec![
        (
            "POST",
            "/rest-api/stream/find",
            "application/json",
            json!({"name": "cam"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/find",
            "application/json",
            json!({"name": "nobody"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/find",
            "application/json",
            json!({"nmae": "cam"}).to_string(),
        ),
        ("POST", "/rest-api/stream/find", "text/plain", "{}".into()),
        (
            "PUT",
            "/rest-api/stream/find",
            "application/json",
            "{}".into(),
        ),
        (
            "POST",
            "/rest-api/stream/find_all",
            "application/json",
            "{}".into(),
        ),
        (
            "POST",
            "/rest-api/stream/find_all",
            "application/json",
            json!({"name": "cam"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            json!({"name": "cam", "dryRun": true}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            json!({"published": "yes"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            format!("{{\"name\":\"{}\"}}", "x".repeat(70_000)),
        ),
        (
            "GET",
            "/rest-api/stream/terminate",
            "application/json",
            String::new(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            json!({"published": false, "reason": "spec"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            json!({"mediaSessionId": cam.media_session_id}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/terminate",
            "application/json",
            json!({"name": "cam", "holdMs": 60000}).to_string(),
        ),
        (
            "GET",
            "/rest-api/stream/holds",
            "application/json",
            String::new(),
        ),
        (
            "POST",
            "/rest-api/stream/holds",
            "application/json",
            String::new(),
        ),
        (
            "POST",
            "/rest-api/stream/release",
            "application/json",
            json!({"name": "nobody"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/release",
            "application/json",
            json!({"holdId": "one"}).to_string(),
        ),
        (
            "POST",
            "/rest-api/stream/release",
            "application/json",
            json!({"name": "cam"}).to_string(),
        ),
        (
            "GET",
            "/rest-api/stream/release",
            "application/json",
            String::new(),
        ),
        (
            "GET",
            "/rest-api/stream/terminations",
            "application/json",
            String::new(),
        ),
        (
            "POST",
            "/rest-api/stream/terminations",
            "application/json",
            String::new(),
        ),
        (
            "GET",
            "/rest-api/server/runtime",
            "application/json",
            String::new(),
        ),
        ("GET", "/rest-api/config", "application/json", String::new()),
        (
            "GET",
            "/rest-api/keepalive",
            "application/json",
            String::new(),
        ),
        (
            "GET",
            "/rest-api/plugins",
            "application/json",
            String::new(),
        ),
        // A single node: `enabled false` (tests/cluster.rs has the cluster's answers).
        (
            "GET",
            "/rest-api/cluster",
            "application/json",
            String::new(),
        ),
    ];
    let mut served = std::collections::BTreeSet::new();
    for (method, path, content_type, body) in requests {
        let what = format!("{method} {path} {}", &body[..body.len().min(50)]);
        let response = server
            .http_client
            .request(method.parse().unwrap(), server.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16().to_string();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|_| panic!("{what}: JSON answer"));
        let operations = &spec["paths"][path];
        assert!(operations.is_object(), "{path} is not documented");
        let operation = &operations[method.to_lowercase()];
        if status == "405" && operation.is_null() {
            // An undocumented method: the path's operations document the 405.
            let documented = operations
                .as_object()
                .unwrap()
                .values()
                .any(|op| op["responses"].get("405").is_some());
            assert!(documented, "{what}: 405 is not documented for {path}");
            continue;
        }
        assert!(
            operation.is_object(),
            "{what}: {method} {path} is not documented"
        );
        served.insert(format!("{} {path}", method.to_lowercase()));
        let documented = operation["responses"]
            .get(&status)
            .unwrap_or_else(|| panic!("{what}: answered {status}, which the spec does not list"));
        let documented = resolve(&spec, documented);
        let schema = &documented["content"]["application/json"]["schema"];
        validate(&spec, schema, &answer, "answer")
            .unwrap_or_else(|e| panic!("{what}: {e}\n{answer}"));
    }
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            // Media, SSE and page routes are exercised by the tests that name them.
            if let Some(by) = operation["x-sluice-exercised-by"].as_str() {
                let test = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(by);
                let source = std::fs::read_to_string(&test).unwrap_or_default();
                let stem = path.split('{').next().unwrap_or(path);
                let last = path
                    .rsplit('/')
                    .next()
                    .filter(|l| !l.is_empty() && !l.starts_with('{'));
                assert!(
                    source.contains(stem)
                        || last.is_some_and(|l| source.contains(l))
                        || (path == "/" && source.contains(".html")),
                    "{method} {path}: {by} does not exercise it"
                );
                continue;
            }
            assert!(
                served.contains(&format!("{method} {path}")),
                "{method} {path} is documented but not exercised"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_accepts_exactly_the_bodies_the_server_accepts() {
    let spec = spec();
    let server = InProcessServer::start("").await;
    let id = uuid::Uuid::new_v4();
    let bodies = [
        json!({"name": "cam"}),
        json!({"published": false, "dryRun": true}),
        json!({"mediaSessionIds": [id], "status": "PLAYING"}),
        json!({"nmae": "cam"}),
        json!({"published": "yes"}),
        json!({"status": "LIVE"}),
        json!({"mediaSessionId": "not-a-uuid"}),
        json!({"mediaSessionId": "41c3f621-a847-4639"}),
        json!({"mediaSessionId": ""}),
        json!({"name": "cam", "reason": "why", "dryRun": true}),
        json!({"all": true, "dryRun": true}),
        json!({"name": "cam", "holdMs": 1000, "dryRun": true}),
        json!({"name": "cam", "holdMs": 0, "dryRun": true}),
        json!({"name": "cam", "holdMs": 86_400_001u64, "dryRun": true}),
        json!({"name": "cam", "holdMs": "1s", "dryRun": true}),
    ];
    let schema = &spec["paths"]["/rest-api/stream/terminate"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    for body in bodies {
        let spec_accepts = validate(&spec, schema, &body, "body").is_ok();
        let (status, answer) = server
            .post("/rest-api/stream/terminate", body.clone())
            .await;
        let server_accepts = status != 400;
        assert_eq!(
            spec_accepts, server_accepts,
            "{body}: spec accepts {spec_accepts}, server answered {status} {answer}"
        );
    }
    server.shutdown().await;
}

/// Every route path the router declares (`.route("…"` in `src/`), read from the source so
/// that a new route cannot be added without this test seeing it.
fn declared_routes() -> Vec<String> {
    let mut routes = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for (at, _) in source.match_indices(".route(") {
                let rest = source[at + ".route(".len()..].trim_start();
                let Some(literal) = rest.strip_prefix('"') else {
                    continue;
                };
                let end = literal.find('"').unwrap();
                routes.push(literal[..end].to_string());
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

#[test]
fn every_route_the_server_has_is_in_the_spec() {
    let spec = spec();
    let paths = spec["paths"].as_object().unwrap();
    let also: Vec<&str> = paths
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .flat_map(|op| op["x-sluice-also"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let routes = declared_routes();
    assert!(routes.len() >= 20, "the scan finds the routes: {routes:?}");
    for route in routes {
        // The catch-all that answers unknown REST paths with a JSON 404.
        if route == "/rest-api/{*rest}" {
            continue;
        }
        assert!(
            paths.contains_key(&route) || also.contains(&route.as_str()),
            "{route} is served but not in openapi.yaml"
        );
    }
}
