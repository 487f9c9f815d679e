//! The REST side of the cluster: `GET /rest-api/cluster` (the live nodes), `find` and
//! `find_all` for the whole cluster when `cluster_redis_url` is set (each node answers for
//! its own streams; the nodes that did not answer in time are named in
//! `Sluice-Unanswered-Nodes`), `terminate` with holds that apply on every node and
//! `release` of them on any node, and this node's answer to another node's request.

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
use crate::registry::{HeldStream, HoldFilter, HoldSpec, TerminatedStream, TerminationSource};

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
    let source = TerminationSource::Rest {
        remote_address: peer.to_string(),
    };
    let reason = request.reason.clone().unwrap_or_default();
    let hold = match (request.hold_ms, request.dry_run) {
        (Some(ms), false) => {
            match place_hold(state, cluster, request, &body, ms, &reason, peer).await {
                Ok(hold) => Some(hold),
                Err(response) => return response,
            }
        }
        _ => None,
    };
    let op = Op::Terminate {
        body,
        remote_address: peer.to_string(),
        asked_by: cluster.node_id().to_string(),
        hold: hold.clone().map(Box::new),
    };
    let gathered = match cluster.ask(op).await {
        Ok(gathered) => gathered,
        Err(e) => {
            // The hold stays (in Redis and here): what it names was meant to be refused.
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    };
    let (streams, by_node, missing) = match gather_streams(gathered) {
        Ok(gathered) => gathered,
        Err(response) => return response,
    };
    let mut response = if streams.is_empty() {
        ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response()
    } else {
        let termination_id = (!request.dry_run).then(|| {
            let named: Vec<TerminatedStream> = streams
                .iter()
                .filter_map(|s| serde::Deserialize::deserialize(s).ok())
                .collect();
            let id = state
                .registry
                .record_termination(
                    named,
                    &reason,
                    source,
                    request.filter.clone(),
                    hold.as_ref(),
                )
                .id;
            if let Some(hold) = &hold {
                state.registry.link_hold(hold.hold_id, id);
            }
            id
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
        if let Some(hold) = &hold {
            answer["holdId"] = json!(hold.hold_id);
            answer["heldUntil"] = json!(hold.until);
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

/// The streams each node answered with, by node, and the nodes that did not answer; or
/// the first node's error as the response.
// The error is the ready answer (axum's `Response`, 128 bytes), taken only on failure.
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn gather_streams(
    (replies, missing): (BTreeMap<String, crate::cluster::Reply>, Vec<String>),
) -> Result<(Vec<Value>, BTreeMap<String, Vec<Value>>, Vec<String>), Response> {
    let mut streams: Vec<Value> = Vec::new();
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // The replies are moved, not copied: a node's reply can name tens of thousands of streams.
    for (node, mut reply) in replies {
        match reply.status {
            200 => {
                let list = match reply.body["streams"].take() {
                    Value::Array(list) => list,
                    _ => Vec::new(),
                };
                by_node.insert(
                    node,
                    list.iter().map(|s| s["mediaSessionId"].clone()).collect(),
                );
                streams.extend(list);
            }
            404 => {}
            status => {
                return Err((
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    Json(reply.body),
                )
                    .into_response());
            }
        }
    }
    Ok((streams, by_node, missing))
}

/// A cluster terminate's hold, in Redis and in this node's table before any stream stops:
/// a dry run over the cluster first says what the filter selects (so a terminate that
/// stops nothing holds nothing, and a hold by id, status or plugin names the very streams
/// of every node), then the hold is written to Redis; each node puts it in its table as
/// the terminate reaches it.
#[allow(clippy::result_large_err)] // the error is the ready answer, as above
async fn place_hold(
    state: &AppState,
    cluster: &Cluster,
    request: &StreamRequest,
    body: &Value,
    ms: u64,
    reason: &str,
    peer: SocketAddr,
) -> Result<crate::registry::Hold, Response> {
    let mut dry = body.clone();
    dry["dryRun"] = json!(true);
    let unavailable = |e: crate::cluster::ClusterError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
    };
    let gathered = cluster
        .ask(Op::Terminate {
            body: dry,
            remote_address: peer.to_string(),
            asked_by: cluster.node_id().to_string(),
            hold: None,
        })
        .await
        .map_err(unavailable)?;
    let (streams, _, _) = gather_streams(gathered)?;
    if streams.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no stream matches").into_response());
    }
    let mut filter = HoldFilter::of(&request.filter, &[]);
    if filter.streams.is_some() {
        filter.streams = Some(
            streams
                .iter()
                .filter_map(|s| serde_json::from_value::<HeldStream>(s.clone()).ok())
                .collect(),
        );
    }
    let spec = HoldSpec {
        filter,
        ms,
        until_admitted: request.hold_until_admitted,
    };
    let source = TerminationSource::Rest {
        remote_address: peer.to_string(),
    };
    let hold = state.registry.add_hold(spec, reason, source).map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
    })?;
    if let Err(e) = cluster.store_holds(std::slice::from_ref(&hold)).await {
        // Not in Redis, so not a cluster hold: none at all, and nothing stopped.
        state.registry.release(|h| h.hold_id == hold.hold_id);
        return Err(unavailable(e));
    }
    Ok(hold)
}

/// A release over the whole cluster: every node lifts the holds the body picks (each
/// keeps every hold, so each answers for all); the answer lists them once, and they leave
/// Redis.
pub(super) async fn release(cluster: &Cluster, body: Value) -> Response {
    let (replies, missing) = match cluster.ask(Op::Release { body }).await {
        Ok(gathered) => gathered,
        Err(e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    };
    let mut released: BTreeMap<u64, Value> = BTreeMap::new();
    let mut by_node: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (node, reply) in &replies {
        match reply.status {
            200 => {
                let list = reply.body["released"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let ids: Vec<u64> = list.iter().filter_map(|h| h["holdId"].as_u64()).collect();
                for (id, hold) in ids.iter().zip(list) {
                    released.entry(*id).or_insert(hold);
                }
                by_node.insert(node.clone(), ids);
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
    let ids: Vec<u64> = released.keys().copied().collect();
    // A node that misses this deletion (or the release) is brought in step by its sync.
    if let Err(e) = cluster.delete_holds(&ids).await {
        tracing::warn!(error = %e, "cluster: released holds stay in Redis until a node's sync deletes them");
    }
    let mut response = if released.is_empty() {
        ApiError::new(StatusCode::NOT_FOUND, "no hold matches").into_response()
    } else {
        Json(json!({
            "released": released.into_values().collect::<Vec<_>>(),
            "nodes": by_node,
            "unansweredNodes": missing,
        }))
        .into_response()
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
                Op::Terminate {
                    body,
                    asked_by,
                    hold,
                    ..
                } => {
                    if let Some(hold) = hold {
                        // In force here before any stream stops (the asker has it already).
                        let id = hold.hold_id;
                        if let Err(e) = state.registry.adopt_hold(*hold) {
                            return (503, json!({ "error": e.to_string() }));
                        }
                        if let Some(cluster) = &state.cluster {
                            cluster.mark_known([id]);
                        }
                    }
                    super::rest::terminate_here(&state, &body, &asked_by).await
                }
                Op::Release { body } => super::rest::release_here(&state, &body),
            }
        })
    })
}
