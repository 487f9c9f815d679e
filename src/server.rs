//! Wiring: reads the configuration, builds the registry and the media layer, and serves the
//! router on the HTTP and HTTPS listeners until asked to shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use tokio_util::sync::CancellationToken;

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
}

/// A started server: where it listens, and how to stop it.
pub struct RunningServer {
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub media_mux_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigStore>,
    pub keepalive: Arc<KeepAlive>,
    pub policy: Arc<PolicyHost>,
    pub hooks: HookClient,
    /// The router both listeners serve, for calls that must come from a chosen address.
    pub router: axum::Router,
    media: Arc<Media>,
    shutdown: CancellationToken,
    listeners: tokio::task::JoinSet<()>,
}

impl RunningServer {
    /// Stops every stream (clients see `FAILED`, not a timeout), then the listeners.
    pub async fn shutdown(mut self) {
        self.media.stop_all("server shutdown").await;
        self.shutdown.cancel();
        while self.listeners.join_next().await.is_some() {}
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
    let registry = Registry::new(settings.node_id.clone());
    let media = Media::new(config.clone(), registry.clone()).await?;
    let tokens = Tokens::new(&settings).with_context(|| {
        let file = settings
            .rest_api_tokens_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        format!("cannot read rest_api_tokens_file {}", file.display())
    })?;
    let shutdown = CancellationToken::new();
    let mut listeners = tokio::task::JoinSet::new();
    let hooks = HookClient::new();
    let policy = PolicyHost::new(registry.clone(), config.clone());
    {
        let policy = policy.clone();
        tokio::task::spawn_blocking(move || policy.reconcile()).await?;
    }
    let keepalive = KeepAlive::new(
        registry.clone(),
        config.clone(),
        hooks.clone(),
        policy.clone(),
    );
    let scheduler = keepalive.spawn(shutdown.clone());
    let notifier = notify::spawn(
        registry.clone(),
        config.clone(),
        hooks.clone(),
        shutdown.clone(),
    );
    let on_stop = policy.spawn_stop_notifier(shutdown.clone());
    listeners.spawn(async move {
        let _ = tokio::join!(scheduler, notifier, on_stop);
    });
    let (watcher, mut touches) = watch::spawn(
        config.clone(),
        vec![settings.plugin_dir.clone()],
        shutdown.clone(),
    );
    let plugins = policy.clone();
    let stop = shutdown.clone();
    listeners.spawn(async move {
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
    let state = AppState {
        media: media.clone(),
        registry: registry.clone(),
        config: config.clone(),
        tokens: Arc::new(tokens),
        hooks: hooks.clone(),
        keepalive: keepalive.clone(),
        policy: policy.clone(),
    };
    let hooks_client = hooks;
    let router = api::router(state);
    let served_router = router.clone();

    let http_bind = options.http_listen.or_else(|| {
        settings
            .rest_api_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    let mut http_addr = None;
    if let Some(bind) = http_bind {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for HTTP on {bind}"))?;
        listener.set_nonblocking(true)?;
        http_addr = Some(listener.local_addr()?);
        let handle = stop_on(&shutdown);
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

    let https_bind = options.https_listen.or_else(|| {
        settings
            .rest_api_https_port
            .map(|p| SocketAddr::new(settings.rest_api_address, p))
    });
    let mut https_addr = None;
    if let Some(bind) = https_bind {
        let tls = tls_config(&settings).await?;
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen for HTTPS on {bind}"))?;
        listener.set_nonblocking(true)?;
        https_addr = Some(listener.local_addr()?);
        if let (Some(cert), Some(key)) = (&settings.https_cert, &settings.https_key) {
            listeners.spawn(reload_certificate(
                tls.clone(),
                cert.clone(),
                key.clone(),
                shutdown.clone(),
            ));
        }
        let handle = stop_on(&shutdown);
        let mut server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
        limit_connections(server.http_builder(), &settings);
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        listeners.spawn(async move {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "HTTPS listener ended");
            }
        });
    }

    tracing::info!(http = ?http_addr, https = ?https_addr, media_mux = ?media.mux_addr(), "sluice is serving");
    Ok(RunningServer {
        http_addr,
        https_addr,
        media_mux_addr: media.mux_addr(),
        registry,
        config,
        keepalive,
        policy,
        hooks: hooks_client,
        router: served_router,
        media,
        shutdown,
        listeners,
    })
}

/// How often the certificate files are checked for a change.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Picks up a changed certificate or key without restart. A file that does not load (half
/// written, wrong key) keeps the last good certificate in force and is tried again on the
/// next change.
async fn reload_certificate(
    tls: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    stop: CancellationToken,
) {
    let stamp = |path: &PathBuf| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut last = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (stamp(&cert), stamp(&key));
        if now == last {
            continue;
        }
        last = now;
        match tls.reload_from_pem_file(&cert, &key).await {
            Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(cert = %cert.display(), error = %e, "TLS certificate not reloaded; the previous one stays in force")
            }
        }
    }
}

/// The certificate named in the settings, or a self-signed one for `localhost`.
/// A listener handle that shuts the listener down gracefully when `shutdown` fires.
fn stop_on(shutdown: &CancellationToken) -> axum_server::Handle<SocketAddr> {
    let handle = axum_server::Handle::new();
    let stop = shutdown.clone();
    let on_stop = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        on_stop.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    handle
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

async fn tls_config(settings: &Settings) -> anyhow::Result<RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match (&settings.https_cert, &settings.https_key) {
        (Some(cert), Some(key)) => {
            RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "cannot use TLS certificate {} / key {}",
                        cert.display(),
                        key.display()
                    )
                })
        }
        _ => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let generated = rcgen::generate_simple_self_signed(names)
                .context("cannot generate a self-signed certificate")?;
            RustlsConfig::from_pem(
                generated.cert.pem().into_bytes(),
                generated.signing_key.serialize_pem().into_bytes(),
            )
            .await
            .context("cannot use the self-signed certificate")
        }
    }
}
