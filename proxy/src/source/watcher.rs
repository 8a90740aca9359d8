//! Turns file-system events in the manifests folder into "something changed"
//! ticks. The events' content is never used: the agent re-reads the whole
//! folder, so a missed or merged event cannot leave it out of date.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

pub struct ManifestWatcher {
    // Dropping the watcher stops the events, so it lives as long as we do.
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<()>,
}

impl ManifestWatcher {
    pub fn new(dir: &Path) -> Result<Self, WatchError> {
        let watch_error = |source| WatchError {
            path: dir.to_path_buf(),
            source,
        };
        // Capacity 1: a pending tick already means "re-read", more add nothing.
        let (sender, changes) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<_>| {
            if let Ok(notify::Event { kind, .. }) = event
                && !kind.is_access()
            {
                let _already_pending = sender.try_send(());
            }
        })
        .map_err(watch_error)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok(Self {
            _watcher: watcher,
            changes,
        })
    }

    /// Waits for the next change. Cancel-safe: the agent selects on it.
    /// A file caught half-written is simply read again on the next event
    /// (its last write sends one), after the runner's minimum interval.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            // The watcher thread is gone; never report a change again.
            std::future::pending::<()>().await;
        }
    }
}
