//! A minimal web back end for benchmarks: answers every REST hook with `200` (and a batch
//! with an empty stop list), counting requests. Prints its address on stdout.
//!
//! `cargo run --release --example hook_echo`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/api/{method}",
            axum::routing::post(
                |State(count): State<Arc<AtomicU64>>,
                 Path(method): Path<String>,
                 body: axum::body::Bytes| async move {
                    count.fetch_add(1, Ordering::Relaxed);
                    // Read the body as a web server would, then answer.
                    let _: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if method == "StreamKeepAliveBatchEvent" {
                        Json(json!({"stop": []}))
                    } else {
                        Json(json!({}))
                    }
                },
            ),
        )
        .route(
            "/count",
            axum::routing::get(|State(count): State<Arc<AtomicU64>>| async move {
                count.load(Ordering::Relaxed).to_string()
            }),
        )
        .with_state(count);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}/api", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
