//! The REST side of the cluster: `GET /rest-api/cluster` (the live nodes), `find` and
//! `find_all` for the whole cluster when `cluster_redis_url` is set (each node answers for
//! its own streams; the nodes that did not answer in time are named in
//! `Sluice-Unanswered-Nodes`), and this node's answer to another node's request.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::rest::ApiError;
use crate::cluster::{Cluster, Op, protocol};

/// The header naming the nodes that did not answer a cluster request in time.
pub const UNANSWERED: &str = "sluice-unanswered-nodes";

/// `GET /rest-api/cluster`.
pub(super) async fn cluster_view(State(state): State<AppState>) -> Response {
    let Some(cluster) = &state.cluster else {
        return Json(json!({
            "enabled": false,
            "nodeId": state.registry.node_id(),
            "nodes": [],
        }))
        .into_response();
    };
    match cluster.nodes().await {
        Ok(nodes) => Json(json!({
            "enabled": true,
            "nodeId": cluster.node_id(),
            "nodes": nodes,
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// A find over the whole cluster: the streams of every node that answered.
pub(super) async fn find(cluster: &Cluster, body: Value) -> Response {
    let (replies, missing) = match cluster.ask(Op::Find { body }).await {
        Ok(gathered) => gathered,
        Err(e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    };
    let mut response = match protocol::merge_find(&replies, &missing) {
        Err((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(body),
        )
            .into_response(),
        Ok((streams, _)) if streams.is_empty() => {
            ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response()
        }
        Ok((streams, _)) => Json(streams).into_response(),
    };
    if !missing.is_empty()
        && let Ok(value) = HeaderValue::from_str(&missing.join(","))
    {
        response.headers_mut().insert(UNANSWERED, value);
    }
    response
}

/// This node's answer to a cluster request.
pub fn answerer(state: AppState) -> crate::cluster::Answerer {
    std::sync::Arc::new(move |op| {
        let state = state.clone();
        Box::pin(async move {
            match op {
                Op::Find { body } => super::rest::find_here(&state, &body).await,
            }
        })
    })
}
