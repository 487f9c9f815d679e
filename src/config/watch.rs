//! The watcher: notices every change to the configuration directory (and the plugin
//! directory) and reloads. It watches directories, not files, so that saving by rename,
//! `sed -i`, `cp` over, delete-and-recreate and `git checkout` are all seen; and it checks the
//! directory's identity, so that a directory deleted, or replaced wholesale, is watched again
//! when it comes back.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ConfigStore;

/// Events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(40);
/// How often the watched directories' identity is checked.
const IDENTITY_CHECK: Duration = Duration::from_millis(500);

/// (device, inode) of a directory, or `None` when it is missing.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// What the watcher tells the rest of the server: a counter bumped after every batch of
/// file changes it handled (whether or not the config changed), for components that re-read
/// files of their own, such as plugins.
pub type Touches = watch::Receiver<u64>;

struct Watched {
    dirs: Vec<(PathBuf, Option<(u64, u64)>)>,
    _debouncer: Option<Debouncer<notify::RecommendedWatcher>>,
}

fn start_watching(dirs: &[PathBuf], events: &mpsc::UnboundedSender<()>) -> Watched {
    let sender = events.clone();
    let debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        if result.is_ok() {
            let _ = sender.send(());
        }
    });
    let mut debouncer = match debouncer {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration; changes are checked every {IDENTITY_CHECK:?} only");
            None
        }
    };
    let mut watched = Vec::new();
    for dir in dirs {
        let id = identity(dir);
        if let (Some(debouncer), Some(_)) = (debouncer.as_mut(), id)
            && let Err(e) = debouncer.watcher().watch(dir, RecursiveMode::Recursive)
        {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
        watched.push((dir.clone(), id));
    }
    Watched {
        dirs: watched,
        _debouncer: debouncer,
    }
}

/// Watches the store's directory and `extra` directories until `stop`; reloads on change.
pub fn spawn(
    store: Arc<ConfigStore>,
    extra: Vec<PathBuf>,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<()>, Touches) {
    let (touched_tx, touched) = watch::channel(0u64);
    let Some(dir) = store.dir().map(Path::to_path_buf) else {
        return (tokio::spawn(async {}), touched);
    };
    let mut dirs: Vec<PathBuf> = extra.into_iter().filter(|d| !d.starts_with(&dir)).collect();
    dirs.insert(0, dir);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Watching starts before this returns, so that a server that says it is ready sees
    // every later edit.
    let mut watched = start_watching(&dirs, &events_tx);
    // An edit made between the first read and the start of watching raised no event: read
    // once more now that watching has begun (a no-op when nothing changed).
    let _ = events_tx.send(());
    let handle = tokio::spawn(async move {
        let mut check = tokio::time::interval(IDENTITY_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => {
                    if event.is_none() { return; }
                    while events.try_recv().is_ok() {}
                }
                _ = check.tick() => {
                    let moved = watched.dirs.iter().any(|(d, id)| identity(d) != *id);
                    if !moved { continue; }
                    // Gone, back, or replaced: watch what is there now, and read it.
                    watched = start_watching(&dirs, &events_tx);
                }
            }
            let _ = store.reload();
            touched_tx.send_modify(|n| *n += 1);
        }
    });
    (handle, touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(store: &ConfigStore) -> u128 {
        store
            .load()
            .settings
            .streaming_sessions_keep_alive_interval
            .as_millis()
    }

    #[tokio::test]
    async fn an_edit_made_before_watching_began_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.properties");
        std::fs::write(&file, "streaming_sessions_keep_alive_interval=5000\n").unwrap();
        let store = ConfigStore::open(Some(dir.path())).unwrap();
        // Between the server's first read and its watcher starting, the file changes.
        std::fs::write(&file, "streaming_sessions_keep_alive_interval=2000\n").unwrap();
        let stop = CancellationToken::new();
        let (handle, mut touches) = spawn(store.clone(), Vec::new(), stop.clone());
        let touched = tokio::time::timeout(Duration::from_secs(2), touches.changed()).await;
        assert!(
            matches!(touched, Ok(Ok(()))),
            "the watcher never read the files"
        );
        assert_eq!(interval(&store), 2000, "the edit was lost");
        stop.cancel();
        handle.await.unwrap();
    }
}
