//! Where Services, EndpointSlices and Nodes come from: a manifests folder
//! or the Kubernetes API. Both give the same snapshot shape, so everything
//! downstream is one code path.

pub mod change_set;
pub mod folder_stamp;
pub mod kube_source;
pub mod manifest;
pub mod read_store;
pub mod trim;
pub mod watch_task;
pub mod watcher;

use std::{collections::BTreeSet, path::PathBuf};

use crate::{
    convert::proxy_selector::ProxySelector,
    model::name::NamespacedName,
    source::{
        change_set::{ChangeSet, ReceivedChanges},
        folder_stamp::FolderStamp,
        kube_source::{KubeSource, KubeSourceError},
        manifest::{Manifests, load_dir},
        watcher::{ManifestWatcher, WatchError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifests folder {path}: not a readable directory")]
    ManifestsDir { path: PathBuf },
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
}

pub enum Source {
    Manifests {
        dir: PathBuf,
        selector: ProxySelector,
        watcher: ManifestWatcher,
        /// The folder as it was just before the last read.
        read: Option<FolderStamp>,
    },
    Cluster(Box<KubeSource>),
}

impl Source {
    pub fn manifests(dir: PathBuf, selector: ProxySelector) -> Result<Self, SourceError> {
        if !dir.is_dir() {
            return Err(SourceError::ManifestsDir { path: dir });
        }
        let watcher = ManifestWatcher::new(&dir)?;
        Ok(Self::Manifests {
            dir,
            selector,
            watcher,
            read: None,
        })
    }

    pub async fn cluster(
        kubeconfig: Option<&std::path::Path>,
        node_name: &str,
        selector: &ProxySelector,
    ) -> Result<Self, SourceError> {
        Ok(Self::Cluster(Box::new(
            KubeSource::connect(kubeconfig, node_name, selector).await?,
        )))
    }

    /// Whether the snapshot is complete: pruning on a partial one would
    /// delete services that are merely not listed yet.
    pub fn synced(&self) -> bool {
        match self {
            Self::Manifests { .. } => true,
            Self::Cluster(source) => source.synced(),
        }
    }

    pub async fn changed(&mut self) {
        match self {
            Self::Manifests { watcher, .. } => watcher.changed().await,
            Self::Cluster(source) => source.changed().await,
        }
    }

    /// What changed since the last call. A manifests folder is re-read
    /// whole, so it reports everything, or nothing while its stamp is the
    /// one taken before the last read.
    /// Changes received and not yet taken (the manifests folder counts
    /// none: it is read whole).
    pub fn pending_changes(&self) -> ReceivedChanges {
        match self {
            Self::Manifests { .. } => ReceivedChanges::default(),
            Self::Cluster(source) => source.pending_changes(),
        }
    }

    pub fn take_changes(&self) -> ChangeSet {
        match self {
            Self::Manifests { dir, read, .. } => {
                if read.is_some() && *read == FolderStamp::of(dir) {
                    ChangeSet::default()
                } else {
                    ChangeSet::everything()
                }
            }
            Self::Cluster(source) => source.take_changes(),
        }
    }

    /// The named Services and their EndpointSlices, where the source can
    /// read just those.
    pub fn services(&self, names: &BTreeSet<NamespacedName>) -> Option<Manifests> {
        match self {
            Self::Manifests { .. } => None,
            Self::Cluster(source) => Some(source.services(names)),
        }
    }

    pub fn snapshot(&mut self) -> Manifests {
        match self {
            Self::Manifests {
                dir,
                read,
                selector,
                ..
            } => {
                // Stamped before reading: a write during the read changes
                // the next stamp, so it is read again.
                *read = FolderStamp::of(dir);
                load_dir(dir, selector)
            }
            Self::Cluster(source) => source.snapshot(),
        }
    }
}
