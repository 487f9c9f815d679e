//! The REST side of the cluster: `GET /rest-api/cluster` (the live nodes), `find` and
//! `find_all` for the whole cluster when `cluster_redis_url` is set (each node answers for
//! its own streams; the nodes that did not answer in time are named in
//! `Sluice-Unanswered-Nodes`), and this node's answer to another node's request.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::requests::StreamRequest;
use super::rest::ApiError;
use crate::cluster::{Cluster, Op, protocol};
use crate::registry::{TerminatedStream, TerminationSource};

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

/// A terminate over the whole cluster: every node stops its own streams the filter selects
/// (plugin filters run where the streams are); this node records the termination once, and
/// the answer says what each node stopped and which did not answer in time.
pub(super) async fn terminate(
    state: &AppState,
    cluster: &Cluster,
    request: &StreamRequest,
    body: Value,
    peer: SocketAddr,
) -> Response {
    if request.hold_ms.is_some() {
        return ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "holds across a cluster are not implemented yet: terminate without holdMs, or on a node without cluster_redis_url",
        )
        .into_response();
    }
    let op = Op::Terminate {
        body,
        remote_address: peer.to_string(),
        asked_by: cluster.node_id().to_string(),
    };
    let (replies, missing) = match cluster.ask(op).await {
        Ok(gathered) => gathered,
        Err(e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    };
    let mut streams: Vec<Value> = Vec::new();
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (node, reply) in &replies {
        match reply.status {
            200 => {
                let list = reply.body["streams"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                by_node.insert(
                    node.clone(),
                    list.iter().map(|s| s["mediaSessionId"].clone()).collect(),
                );
                streams.extend(list);
            }
            404 => {}
            status => {
                return (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    Json(reply.body.clone()),
                )
                    .into_response();
            }
        }
    }
    let mut response = if streams.is_empty() {
        ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response()
    } else {
        let reason = request.reason.clone().unwrap_or_default();
        let termination_id = (!request.dry_run).then(|| {
            let named: Vec<TerminatedStream> = streams
                .iter()
                .filter_map(|s| serde_json::from_value(s.clone()).ok())
                .collect();
            state
                .registry
                .record_termination(
                    named,
                    &reason,
                    TerminationSource::Rest {
                        remote_address: peer.to_string(),
                    },
                    request.filter.clone(),
                    None,
                )
                .id
        });
        let ids: Vec<Value> = streams
            .iter()
            .map(|s| s["mediaSessionId"].clone())
            .collect();
        let mut answer = json!({
            "dryRun": request.dry_run,
            "reason": reason,
            "mediaSessionIds": ids,
            "streams": streams,
            "nodes": by_node,
            "unansweredNodes": missing,
        });
        if let Some(id) = termination_id {
            answer["terminationId"] = json!(id);
        }
        Json(answer).into_response()
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
                Op::Terminate { body, asked_by, .. } => {
                    super::rest::terminate_here(&state, &body, &asked_by).await
                }
            }
        })
    })
}
