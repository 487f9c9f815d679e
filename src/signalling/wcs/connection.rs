//! One WCS signalling connection over its WebSocket: reads client messages, opens streams
//! through the one session path, sends each stream's answer and status events, pings, and
//! on close ends every stream it opened and waits for their tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::protocol::{self, ClientMessage, Connection, PingTick, StreamRequest};
use crate::config::ConfigStore;
use crate::registry::{Registry, Status, StopReason, follow};
use crate::sessions::{Offer, Role, Sessions};

/// What one connection's parts share.
pub struct Context {
    pub sessions: Arc<Sessions>,
    pub hooks: crate::hooks::HookClient,
    pub policy: Arc<crate::policy::PolicyHost>,
    /// The live connections, for the REST API.
    pub connections: Arc<super::Connections>,
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigStore>,
    /// The server's tasks: every connection is one of them.
    pub tasks: TaskTracker,
    /// Ends every connection (server shutdown).
    pub stop: CancellationToken,
}

/// Messages a connection may send per second (bursts of twice that): the SDK sends a
/// handful a minute; a client past this is closed.
const MESSAGES_PER_SECOND: u32 = 100;

/// How long a closing connection waits for the client's side of the close handshake.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// How long a stream's task may wait for its final event once its connection has closed.
const FINAL_EVENT_WAIT: Duration = Duration::from_secs(10);

/// What a stream's task hands back to its connection, in order.
enum Outgoing {
    Text(String),
    /// The stream has ended or was refused; the connection forgets it.
    Ended(Uuid),
}

/// Serves one connection until the client leaves, stops answering pings, or the server
/// stops.
pub async fn serve(socket: WebSocket, context: Arc<Context>, peer: SocketAddr, local: SocketAddr) {
    let session_id = format!("/{peer}/{local}");
    let mut connection = Connection::new(session_id.clone());
    let (mut sink, mut frames) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let streams = TaskTracker::new();
    let closing = CancellationToken::new();
    // Cancelled by `/rest-api/connection/terminate`.
    let closed_by_server = CancellationToken::new();
    let interval = context.config.load().settings.ws_ping_interval;
    let flood = governor::RateLimiter::direct(
        governor::Quota::per_second(
            std::num::NonZeroU32::new(MESSAGES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN),
        )
        .allow_burst(
            std::num::NonZeroU32::new(2 * MESSAGES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN),
        ),
    );
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(session = %session_id, "WebSocket signalling connection opened");
    // The connection's fields as its hooks get them, once it is established.
    let mut established: Option<Map<String, Value>> = None;
    // How the connection ended, for its last ConnectionStatusEvent.
    let mut ending = ("DISCONNECTED", String::new());
    loop {
        let reply = tokio::select! {
            _ = context.stop.cancelled() => break,
            _ = closed_by_server.cancelled() => {
                tracing::info!(session = %session_id, "WebSocket signalling connection closed by the REST API");
                ending = ("FAILED", "Stopped by rest /terminate".into());
                break;
            }
            frame = frames.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    connection.heard_from();
                    if flood.check().is_err() {
                        tracing::info!(session = %session_id, "WebSocket signalling connection closed: a flood of messages");
                        let fail = protocol::fail("message", &format!("more than {MESSAGES_PER_SECOND} messages a second: the connection is closed"));
                        let _ = sink.send(Message::Text(fail.into())).await;
                        ending = ("FAILED", "message flood".into());
                        break;
                    }
                    let mut step = handle(&mut connection, &context, text.as_str(), peer, &out_tx, &streams, &closing);
                    if let Step::Connect { app_key, fields } = step {
                        step = tokio::select! {
                            _ = context.stop.cancelled() => break,
                            step = admit(&mut connection, &context, app_key, fields, &mut established) => step,
                        };
                        if let (Some(fields), Some(app_key)) = (&established, &connection.app_key)
                            && matches!(step, Step::Reply(_))
                        {
                            context.connections.insert(
                                super::ConnectionView {
                                    session_id: session_id.clone(),
                                    app_key: app_key.clone(),
                                    node_id: context.registry.node_id().to_string(),
                                    status: "ESTABLISHED",
                                    create_date: crate::clock::now_ms(),
                                    client: fields.clone(),
                                },
                                closed_by_server.clone(),
                            );
                        }
                    }
                    match step {
                        Step::Reply(text) => Some(text),
                        Step::Quiet | Step::Connect { .. } => None,
                        Step::Close(text) => {
                            let _ = sink.send(Message::Text(text.into())).await;
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if connection.first_unknown("binary frame") {
                        tracing::info!(session = %session_id, "binary frames are ignored on WCS signalling");
                    }
                    None
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    connection.heard_from();
                    None
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    tracing::info!(session = %session_id, error = %e, "WebSocket signalling connection broke");
                    ending = ("FAILED", format!("connection broke: {e}"));
                    break;
                }
            },
            outgoing = out_rx.recv() => match outgoing {
                Some(Outgoing::Text(text)) => Some(text),
                Some(Outgoing::Ended(id)) => {
                    connection.ended(id);
                    None
                }
                None => None,
            },
            _ = pings.tick() => {
                let probes = context.config.load().settings.ws_ping_probes;
                match connection.ping_tick(probes) {
                    PingTick::Send => Some(protocol::ping()),
                    PingTick::Close => {
                        tracing::info!(session = %session_id, probes, "WebSocket signalling connection closed: pings unanswered");
                        ending = ("FAILED", format!("{probes} pings unanswered"));
                        break;
                    }
                }
            }
        };
        if let Some(text) = reply
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            break;
        }
    }
    // The connection is gone: every stream it opened ends with it, and nothing of it stays.
    context.connections.remove(&session_id);
    closing.cancel();
    for id in connection.stream_ids() {
        context.registry.stop(id, StopReason::ClientLeft);
    }
    // Each stream's last words (at a shutdown, its `FAILED` with the reason) go out before
    // the close: its task is followed until it has ended.
    streams.close();
    let _ = tokio::time::timeout(FINAL_EVENT_WAIT, async {
        loop {
            tokio::select! {
                outgoing = out_rx.recv() => match outgoing {
                    Some(Outgoing::Text(text)) => {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Ended(_)) => {}
                    None => break,
                },
                _ = streams.wait() => break,
            }
        }
    })
    .await;
    while let Ok(outgoing) = out_rx.try_recv() {
        if let Outgoing::Text(text) = outgoing
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            break;
        }
    }
    let _ = sink.close().await;
    // The close handshake: read (and drop) what the client still sends until its Close, so
    // that our last message is not lost to a reset of a socket closed with unread data.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(frame)) = frames.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    drop(out_rx);
    streams.wait().await;
    if let (Some(mut fields), Some(app_key)) = (established, connection.app_key.clone()) {
        fields.insert("status".into(), json!(ending.0));
        if !ending.1.is_empty() {
            fields.insert("info".into(), json!(ending.1));
        }
        connection_event(&context, app_key, fields);
    }
    tracing::info!(session = %session_id, "WebSocket signalling connection closed");
}

enum Step {
    Reply(String),
    Quiet,
    /// Send this, then close.
    Close(String),
    /// A `connection` to admit (which may ask the app's plugin and web server).
    Connect {
        app_key: String,
        fields: Map<String, Value>,
    },
}

/// `ConnectionStatusEvent` to the app's web server, in the background (tracked).
fn connection_event(context: &Arc<Context>, app_key: String, fields: Map<String, Value>) {
    let (hooks, config) = (context.hooks.clone(), context.config.load());
    context.tasks.spawn(async move {
        crate::hooks::event(&hooks, &config, &app_key, "ConnectionStatusEvent", fields).await;
    });
}

/// Lets a connection in, as the model does: the app's plugin (`on_connect`), then its web
/// server (`connect`); a refusal is a `fail` for `ConnectionStatusEvent` with the reason,
/// then the socket is closed.
async fn admit(
    connection: &mut Connection,
    context: &Arc<Context>,
    app_key: String,
    fields: Map<String, Value>,
    established: &mut Option<Map<String, Value>>,
) -> Step {
    let mut body = fields.clone();
    body.insert("nodeId".into(), json!(context.registry.node_id()));
    body.insert("appKey".into(), json!(app_key));
    body.insert("sessionId".into(), json!(connection.session_id));
    body.insert("status".into(), json!("PENDING"));
    let refuse = |reason: String| {
        tracing::info!(session = %connection.session_id, app = %app_key, %reason, "WebSocket signalling connection refused");
        Step::Close(protocol::fail("ConnectionStatusEvent", &reason))
    };
    match context
        .policy
        .connect(&app_key, Value::Object(body.clone()))
        .await
    {
        Some(Ok(crate::policy::Code::Code(code, reason))) if !(200..300).contains(&code) => {
            return refuse(reason.unwrap_or_else(|| format!("refused by policy ({code})")));
        }
        Some(Ok(crate::policy::Code::Held(reason, _))) => {
            return refuse(reason.unwrap_or_else(|| "refused by policy".into()));
        }
        Some(Err(e)) => return refuse(format!("connection policy failed: {e}")),
        _ => {}
    }
    let config = context.config.load();
    let admission = crate::hooks::admission::ask(
        &context.hooks,
        &config,
        &app_key,
        "connect",
        Value::Object(body.clone()),
    )
    .await;
    if let crate::hooks::admission::Admission::Reject { reason, .. } = admission {
        return refuse(reason);
    }
    let reply = protocol::user_data(&connection.session_id, &app_key, &fields);
    connection.app_key = Some(app_key.clone());
    body.insert("status".into(), json!("ESTABLISHED"));
    body.insert("authToken".into(), json!(connection.session_id));
    *established = Some(body.clone());
    connection_event(context, app_key, body);
    Step::Reply(reply)
}

fn handle(
    connection: &mut Connection,
    context: &Arc<Context>,
    text: &str,
    peer: SocketAddr,
    out: &mpsc::UnboundedSender<Outgoing>,
    streams: &TaskTracker,
    closing: &CancellationToken,
) -> Step {
    let message = match protocol::parse(text) {
        Ok(message) => message,
        Err(e) => return Step::Reply(protocol::fail("message", &e.0)),
    };
    match message {
        ClientMessage::Connection {
            app_key,
            custom,
            fields,
        } => {
            if connection.app_key.is_some() {
                return Step::Reply(protocol::fail("connection", "already connected"));
            }
            let app_key = app_key.unwrap_or_else(|| crate::config::DEFAULT_APP.into());
            if context.config.load().apps.get(&app_key).is_none() {
                return Step::Close(protocol::fail(
                    "ConnectionStatusEvent",
                    &format!("unknown app '{app_key}'"),
                ));
            }
            connection.custom = custom;
            Step::Connect { app_key, fields }
        }
        ClientMessage::Publish(request) => start(
            connection,
            context,
            request,
            Role::Publish,
            peer,
            out,
            streams,
            closing,
        ),
        ClientMessage::Play(request) => start(
            connection,
            context,
            request,
            Role::Play,
            peer,
            out,
            streams,
            closing,
        ),
        ClientMessage::Stop { client_id, message } => match connection.own(&client_id) {
            Some(id) => {
                // Not live yet (still opening): the SDK asks again until it is.
                context.sessions.close(id);
                Step::Quiet
            }
            None => Step::Reply(protocol::fail(
                message,
                &format!("no stream '{client_id}' on this connection"),
            )),
        },
        ClientMessage::Ping => Step::Reply(protocol::pong()),
        ClientMessage::Pong => Step::Quiet,
        ClientMessage::Unknown(name) => {
            if connection.first_unknown(&name) {
                tracing::info!(session = %connection.session_id, message = %name, "WCS message not supported; ignored");
            }
            Step::Quiet
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    connection: &mut Connection,
    context: &Arc<Context>,
    request: StreamRequest,
    role: Role,
    peer: SocketAddr,
    out: &mpsc::UnboundedSender<Outgoing>,
    streams: &TaskTracker,
    closing: &CancellationToken,
) -> Step {
    let published = role == Role::Publish;
    let id = match connection.begin(&request) {
        Ok(id) => id,
        // Not routed to the stream by `id`: that id may be another live stream's.
        Err(refused) => {
            let method = if published {
                "publishStream"
            } else {
                "playStream"
            };
            return Step::Reply(protocol::fail(method, refused.info()));
        }
    };
    let offer = Offer {
        role,
        name: request.name.clone(),
        app_key: connection.app_key.clone(),
        sdp: request.sdp.clone(),
        query: connection
            .custom
            .iter()
            .chain(request.custom.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        token: None,
        remote_ip: peer.ip(),
        remote_address: peer.to_string(),
        media_session_id: Some(id),
        session_id: Some(connection.session_id.clone()),
    };
    let stream_fields = stream_object(context, connection, &request, published);
    streams.spawn(run_stream(
        context.clone(),
        offer,
        request,
        stream_fields,
        id,
        out.clone(),
        closing.clone(),
    ));
    Step::Quiet
}

/// The server's fields of a stream object, as WCS sends them.
fn stream_object(
    context: &Context,
    connection: &Connection,
    request: &StreamRequest,
    published: bool,
) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("nodeId".into(), json!(context.registry.node_id()));
    fields.insert("appKey".into(), json!(connection.app_key));
    fields.insert("sessionId".into(), json!(connection.session_id));
    fields.insert("name".into(), json!(request.name));
    fields.insert("published".into(), json!(published));
    fields.insert("mediaProvider".into(), json!("WebRTC"));
    fields.insert(
        "mediaType".into(),
        json!(if published { "publish" } else { "play" }),
    );
    fields.insert("audioState".into(), json!({"muted": false}));
    fields.insert("videoState".into(), json!({"muted": false}));
    fields
}

/// One stream of a connection: opens it, sends the answer, then every status until the
/// final one. If the connection closes while the stream opens, the stream is ended.
async fn run_stream(
    context: Arc<Context>,
    offer: Offer,
    request: StreamRequest,
    stream_fields: Map<String, Value>,
    id: Uuid,
    out: mpsc::UnboundedSender<Outgoing>,
    closing: CancellationToken,
) {
    let client_id = request.client_id.clone();
    let answer = match context.sessions.open(offer).await {
        Ok(answer) => answer,
        Err(refusal) => {
            let info = super::refusal_info(&refusal);
            let _ = out.send(Outgoing::Text(protocol::stream_refused(
                &client_id,
                &request.fields,
                &info,
            )));
            let _ = out.send(Outgoing::Ended(id));
            return;
        }
    };
    if closing.is_cancelled() {
        context.sessions.close(id);
    }
    let Some((timeline, changes)) = context.registry.timeline(answer.id) else {
        let _ = out.send(Outgoing::Ended(id));
        return;
    };
    let _ = out.send(Outgoing::Text(protocol::remote_sdp(
        &client_id,
        &answer.sdp,
    )));
    let events = follow(timeline, changes, 0);
    futures::pin_mut!(events);
    loop {
        let next = tokio::select! {
            event = events.next() => event,
            _ = closing.cancelled(), if !closing.is_cancelled() => continue,
            _ = tokio::time::sleep(FINAL_EVENT_WAIT), if closing.is_cancelled() => {
                tracing::warn!(stream = %id, "no final event after the connection closed");
                break;
            }
        };
        let Some(event) = next else { break };
        if event.status == Status::Pending || event.status == Status::New {
            continue;
        }
        let text = protocol::status_event(&client_id, &request.fields, &stream_fields, &event);
        let _ = out.send(Outgoing::Text(text));
        if event.status.is_final() {
            break;
        }
    }
    let _ = out.send(Outgoing::Ended(id));
}
