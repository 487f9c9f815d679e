//! Wiring: reads the configuration, builds the registry and the media layer, and serves the
//! router on the HTTP and HTTPS listeners until asked to shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::Tokens;
use crate::api::{self, AppState};
use crate::config::{ConfigStore, Settings, watch};
use crate::hooks::{HookClient, notify};
use crate::keepalive::KeepAlive;
use crate::media::Media;
use crate::policy::PolicyHost;
use crate::registry::Registry;

/// How to start a server. The listen overrides win over `server.properties`
/// (tests bind `127.0.0.1:0`).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub config_dir: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
    /// WCS WebSocket signalling, plain and over TLS.
    pub ws_listen: Option<SocketAddr>,
    pub wss_listen: Option<SocketAddr>,
}

/// A started server: where it listens, and how to stop it.
pub struct RunningServer {
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    pub media_mux_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigStore>,
    pub keepalive: Arc<KeepAlive>,
    pub policy: Arc<PolicyHost>,
    pub hooks: HookClient,
    /// The router both listeners serve, for calls that must come from a chosen address.
    pub router: axum::Router,
    media: Arc<Media>,
    /// Every background task of the server: keep-alive, status deliveries, session
    /// supervisors, the watcher, plugin replacements.
    tasks: TaskTracker,
    /// Ends the listeners and every task at once.
    shutdown: CancellationToken,
    /// Asks the status notifier to deliver what is queued, then end.
    flush: CancellationToken,
    listener_handles: Vec<axum_server::Handle<SocketAddr>>,
    listeners: tokio::task::JoinSet<()>,
}

/// What clients are told when the server shuts down.
pub const SHUTDOWN_REASON: &str = "Server shutdown";

impl RunningServer {
    /// Shuts down within `shutdown_timeout`: stops accepting (new offers get `503`), ends
    /// every stream with [`SHUTDOWN_REASON`] (clients see `FAILED` with it, not a timeout),
    /// delivers the queued `StreamStatusEvent`s, then ends every task and the listeners.
    pub async fn shutdown(mut self) {
        let timeout = self.config.load().settings.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        self.registry.drain();
        for handle in &self.listener_handles {
            // No new connections; open ones (status streams) may finish until the deadline.
            handle.graceful_shutdown(Some(timeout));
        }
        let left = self.media.stop_all(SHUTDOWN_REASON, deadline).await;
        if left > 0 {
            tracing::error!(left, "streams still live at the shutdown deadline");
        }
        self.flush.cancel();
        self.tasks.close();
        let stopped_in_time = tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok();
        if !stopped_in_time {
            tracing::error!(
                left = self.tasks.len(),
                "tasks still running at the shutdown deadline"
            );
        }
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            while self.listeners.join_next().await.is_some() {}
        })
        .await;
        self.listeners.abort_all();
        tracing::info!("shut down");
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down cleanly.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
        Ok(())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn start(options: ServerOptions) -> anyhow::Result<RunningServer> {
    let config = ConfigStore::open(options.config_dir.as_deref())?;
    let settings = config.load().settings.clone();
    let ignored = config.load().ignored_keys.clone();
    if !ignored.is_empty() {
        tracing::warn!(keys = ?ignored, "server.properties: settings of WCS that Sluice does not implement are ignored");
    }
    let registry = Registry::new(settings.node_id.clone());
    let tasks = TaskTracker::new();
    let media = Media::new(config.clone(), registry.clone(), tasks.clone()).await?;
    let tokens = Tokens::new(&settings).with_context(|| {
        let file = settings
            .rest_api_tokens_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        format!("cannot read rest_api_tokens_file {}", file.display())
    })?;
    let shutdown = CancellationToken::new();
    let flush = CancellationToken::new();
    let mut listeners = tokio::task::JoinSet::new();
    let hooks = HookClient::new();
    let policy = PolicyHost::new(registry.clone(), config.clone(), tasks.clone());
    {
        let policy = policy.clone();
        tokio::task::spawn_blocking(move || policy.reconcile()).await?;
    }
    let keepalive = KeepAlive::new(
        registry.clone(),
        config.clone(),
        hooks.clone(),
        policy.clone(),
        tasks.clone(),
    );
    // Verdicts end as the shutdown begins: the streams are being stopped anyway.
    keepalive.spawn(flush.clone());
    notify::spawn(
        registry.clone(),
        config.clone(),
        hooks.clone(),
        tasks.clone(),
        notify::Ending {
            flush: flush.clone(),
            stop: shutdown.clone(),
        },
    );
    // `on_stop` calls end with the streams: stopped at the flush, after the last stream.
    policy.spawn_stop_notifier(flush.clone());
    tasks.spawn(crate::memory::give_back_after_churn(
        registry.clone(),
        flush.clone(),
    ));
    let (watcher, mut touches) = watch::spawn(
        config.clone(),
        vec![settings.plugin_dir.clone()],
        flush.clone(),
    );
    let plugins = policy.clone();
    let stop = flush.clone();
    tasks.spawn(async move {
        // After every batch of file changes, plugins are compared with their files and apps.toml.
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = touches.changed() => if changed.is_err() { break },
            }
            let plugins = plugins.clone();
            let _ = tokio::task::spawn_blocking(move || plugins.reconcile()).await;
        }
        let _ = watcher.await;
    });
    let connections = Arc::new(crate::signalling::wcs::Connections::default());
    let sessions = crate::sessions::Sessions::new(
        media.clone(),
        registry.clone(),
        config.clone(),
        hooks.clone(),
        policy.clone(),
    );
    let cluster = match settings.cluster_redis_url.as_deref() {
        Some(url) => {
            let registry = registry.clone();
            Some(crate::cluster::Cluster::new(
                url,
                &settings.node_id,
                settings.cluster_node_ttl,
                settings.cluster_answer_timeout,
                registry,
            )?)
        }
        None => None,
    };
    if let Some(cluster) = &cluster {
        sessions.set_cluster(cluster.clone());
    }
    let state = AppState {
        media: media.clone(),
        registry: registry.clone(),
        config: config.clone(),
        tokens: Arc::new(tokens),
        hooks: hooks.clone(),
        keepalive: keepalive.clone(),
        policy: policy.clone(),
        sessions: sessions.clone(),
        connections: connections.clone(),
        event_streams: Arc::default(),
        // The console's feed ends as the shutdown begins.
        console: api::console::ConsoleFeed::new(tasks.clone(), flush.clone()),
        cluster: cluster.clone(),
    };
    let hooks_client = hooks;
    let answerer = api::cluster::answerer(state.clone());
    let router = api::router(state);
    let served_router = router.clone();

    let http_bind = options.http_listen.or_else(|| {
        settings
            .rest_api_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    let mut http_addr = None;
    let mut listener_handles = Vec::new();
    if let Some(bind) = http_bind {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for HTTP on {bind}"))?;
        listener.set_nonblocking(true)?;
        http_addr = Some(listener.local_addr()?);
        // `RunningServer::shutdown` stops it gracefully.
        let handle = axum_server::Handle::new();
        listener_handles.push(handle.clone());
        let mut server = axum_server::from_tcp(listener)?.handle(handle);
        limit_connections(server.http_builder(), &settings);
        let app = router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        listeners.spawn(async move {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "HTTP listener ended");
            }
        });
    }

    if let Some(cluster) = &cluster {
        if let Some(addr) = http_addr {
            cluster.set_http_url(format!("http://{addr}"));
        }
        // The node leaves the cluster as the shutdown begins.
        cluster.spawn(answerer, &tasks, flush.clone());
        tracing::info!(node = cluster.node_id(), "cluster: joined through Redis");
    }

    let https_bind = options.https_listen.or_else(|| {
        settings
            .rest_api_https_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    let ws_bind = options.ws_listen.or_else(|| {
        settings
            .ws_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    let wss_bind = options.wss_listen.or_else(|| {
        settings
            .wss_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    // One certificate for HTTPS and WSS, reloaded together.
    let tls = if https_bind.is_some() || wss_bind.is_some() {
        let tls = crate::tls::config(&settings).await?;
        if let (Some(cert), Some(key)) =
            (&settings.rest_api_https_cert, &settings.rest_api_https_key)
        {
            tasks.spawn(crate::tls::reload_on_change(
                tls.clone(),
                cert.clone(),
                key.clone(),
                flush.clone(),
            ));
        }
        Some(tls)
    } else {
        None
    };
    let mut https_addr = None;
    if let (Some(bind), Some(tls)) = (https_bind, tls.clone()) {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for HTTPS on {bind}"))?;
        listener.set_nonblocking(true)?;
        https_addr = Some(listener.local_addr()?);
        // `RunningServer::shutdown` stops it gracefully.
        let handle = axum_server::Handle::new();
        listener_handles.push(handle.clone());
        let mut server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
        limit_connections(server.http_builder(), &settings);
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        listeners.spawn(async move {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "HTTPS listener ended");
            }
        });
    }

    let signalling = Arc::new(crate::signalling::wcs::Context {
        sessions: sessions.clone(),
        hooks: hooks_client.clone(),
        policy: policy.clone(),
        connections: connections.clone(),
        registry: registry.clone(),
        config: config.clone(),
        tasks: tasks.clone(),
        // Connections end after the streams have, so their final events reach the pages.
        stop: flush.clone(),
    });
    let mut ws_addr = None;
    if let Some(bind) = ws_bind {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for WebSocket signalling on {bind}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        ws_addr = Some(local);
        let handle = axum_server::Handle::new();
        listener_handles.push(handle.clone());
        // Signalling is small messages in both directions: no Nagle delay on them.
        let mut server = axum_server::from_tcp(listener)?
            .acceptor(axum_server::accept::NoDelayAcceptor::new())
            .handle(handle);
        limit_connections(server.http_builder(), &settings);
        let app = crate::signalling::wcs::router(signalling.clone(), local)
            .into_make_service_with_connect_info::<SocketAddr>();
        listeners.spawn(async move {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "WebSocket signalling listener ended");
            }
        });
    }
    let mut wss_addr = None;
    if let (Some(bind), Some(tls)) = (wss_bind, tls) {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for secure WebSocket signalling on {bind}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        wss_addr = Some(local);
        let handle = axum_server::Handle::new();
        listener_handles.push(handle.clone());
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let mut server = axum_server::from_tcp(listener)?
            .acceptor(acceptor)
            .handle(handle);
        limit_connections(server.http_builder(), &settings);
        let app = crate::signalling::wcs::router(signalling, local)
            .into_make_service_with_connect_info::<SocketAddr>();
        listeners.spawn(async move {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "secure WebSocket signalling listener ended");
            }
        });
    }

    tracing::info!(http = ?http_addr, https = ?https_addr, ws = ?ws_addr, wss = ?wss_addr, media_mux = ?media.mux_addr(), "sluice is serving");
    Ok(RunningServer {
        http_addr,
        https_addr,
        ws_addr,
        wss_addr,
        media_mux_addr: media.mux_addr(),
        registry,
        config,
        keepalive,
        policy,
        hooks: hooks_client,
        router: served_router,
        media,
        tasks,
        shutdown,
        flush,
        listener_handles,
        listeners,
    })
}

/// Limits every connection: headers within `http_header_timeout` (slow-loris clients are
/// cut off), and at most 64 KiB of request head (`431` beyond).
fn limit_connections(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    settings: &Settings,
) {
    builder
        .http1()
        .header_read_timeout(Some(settings.http_header_timeout))
        .max_buf_size(MAX_REQUEST_HEAD);
}

/// The largest request line plus headers read.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
