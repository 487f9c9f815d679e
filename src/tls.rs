//! The HTTPS listener's certificate: the one named in the settings (or a self-signed one for
//! `localhost`), and its reload when the files change on disk. The reload is driven by the
//! same `notify` debouncer the configuration uses, on the directories that hold the files,
//! so a renewal by rename (certbot's symlink swap, `mv`, `cp` over) is seen at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// Events closer together than this are one change (a certificate and its key are written
/// one after the other).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The certificate named in the settings, or a self-signed one for `localhost`.
pub async fn config(settings: &Settings) -> anyhow::Result<RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match (&settings.rest_api_https_cert, &settings.rest_api_https_key) {
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

/// The content of both files, to tell a real change from a touch.
fn fingerprint(cert: &Path, key: &Path) -> Option<(String, String)> {
    let hash = |path: &Path| {
        std::fs::read(path)
            .ok()
            .map(|b| crate::config::content_hash(&b))
    };
    Some((hash(cert)?, hash(key)?))
}

/// Picks up a changed certificate or key without restart, until `stop`. A pair that does not
/// load (half written, a key that does not match) keeps the last good certificate in force
/// and is tried again on the next change.
pub async fn reload_on_change(
    tls: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    stop: CancellationToken,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        if result.is_ok() {
            let _ = events_tx.send(());
        }
    });
    let mut debouncer = match debouncer {
        Ok(debouncer) => debouncer,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the TLS certificate; a new one needs a restart");
            return;
        }
    };
    let dirs: BTreeSet<PathBuf> = [&cert, &key]
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    for dir in &dirs {
        if let Err(e) = debouncer.watcher().watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch the TLS certificate's directory");
        }
    }
    let mut last = fingerprint(&cert, &key);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => if event.is_none() { return },
        }
        while events.try_recv().is_ok() {}
        let now = fingerprint(&cert, &key);
        if now.is_none() || now == last {
            continue;
        }
        match tls.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                last = now;
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(cert = %cert.display(), error = %e, "TLS certificate not reloaded; the previous one stays in force")
            }
        }
    }
}
