//! The cluster source: kube-rs reflectors for Services, EndpointSlices and
//! this node's own Node, with kube-proxy's informer selectors.
//!
//! Watch events are only ever a hint that something changed: the agent
//! re-reads the stores in full and recomputes, so a dropped or merged event
//! cannot leave it wrong. The watchers relist by themselves after a
//! disconnect or a `410 Gone`; until every store has listed once the source
//! is not `synced` and the agent keeps serving what it adopted.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::manifest::Manifests;

/// kube-proxy's informer selector, on Services and EndpointSlices alike:
/// objects for another proxy, and headless ones, are never even received.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// An API resource the agent reads, and the verbs its watcher uses: the
/// single statement of what RBAC must grant (a test checks deploy/rbac.yaml
/// against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedResource {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// A reflector lists, then watches; it never gets, creates or updates.
const REFLECTOR_VERBS: &[&str] = &["list", "watch"];

pub const WATCHED_RESOURCES: [WatchedResource; WATCHED_KINDS] = [
    WatchedResource {
        group: "",
        resource: "services",
        verbs: REFLECTOR_VERBS,
    },
    WatchedResource {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: REFLECTOR_VERBS,
    },
    WatchedResource {
        group: "",
        resource: "nodes",
        verbs: REFLECTOR_VERBS,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config (pass --kubeconfig outside a pod): {source}")]
    InCluster {
        source: kube::config::InClusterError,
    },
    #[error("creating the API client: {source}")]
    Client { source: kube::Error },
}

pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    changes: mpsc::Receiver<()>,
    listed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

const WATCHED_KINDS: usize = 3;

impl KubeSource {
    pub async fn connect(
        kubeconfig: Option<&Path>,
        node_name: &str,
    ) -> Result<Self, KubeSourceError> {
        let config = match kubeconfig {
            Some(path) => {
                let kubeconfig_error = |source| KubeSourceError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                };
                let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(kubeconfig_error)?
            }
            None => Config::incluster().map_err(|source| KubeSourceError::InCluster { source })?,
        };
        info!(server = %config.cluster_url, "watching the Kubernetes API");
        let client =
            Client::try_from(config).map_err(|source| KubeSourceError::Client { source })?;

        // Capacity 1: a pending tick already means "re-read everything".
        let (sender, changes) = mpsc::channel(1);
        let listed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let proxied = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let services = spawn_reflector(
            Api::<Service>::all(client.clone()),
            proxied.clone(),
            &sender,
            &listed,
            &mut tasks,
        );
        let slices = spawn_reflector(
            Api::<EndpointSlice>::all(client.clone()),
            proxied,
            &sender,
            &listed,
            &mut tasks,
        );
        let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let nodes = spawn_reflector(
            Api::<Node>::all(client),
            own_node,
            &sender,
            &listed,
            &mut tasks,
        );
        Ok(Self {
            services,
            slices,
            nodes,
            changes,
            listed,
            tasks,
        })
    }

    /// Every watcher has completed its first list: the stores hold the
    /// whole cluster and a sync may prune what is not in them.
    pub fn synced(&self) -> bool {
        self.listed.load(Ordering::Acquire) >= WATCHED_KINDS
    }

    /// Waits for the next change (or first list) in any store.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        while self.changes.try_recv().is_ok() {}
    }

    /// The stores' content, in the shape the manifests source gives.
    pub fn snapshot(&self) -> Manifests {
        Manifests {
            services: owned(self.services.state()),
            slices: owned(self.slices.state()),
            nodes: owned(self.nodes.state()),
            ..Manifests::default()
        }
    }
}

fn owned<K: Clone>(state: Vec<Arc<K>>) -> Vec<K> {
    state.into_iter().map(Arc::unwrap_or_clone).collect()
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: &mpsc::Sender<()>,
    listed: &Arc<AtomicUsize>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let sender = changes.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.map_ok(|_event| ()));
        while let Some(event) = stream.next().await {
            match event {
                Ok(()) => {
                    let _already_pending = sender.try_send(());
                }
                // The backoff retries; the stores keep their last content.
                Err(error) => warn!(%kind, %error, "watch failed; retrying"),
            }
        }
    }));
    let ready = reader.clone();
    let sender = changes.clone();
    let listed = Arc::clone(listed);
    tasks.push(tokio::spawn(async move {
        if ready.wait_until_ready().await.is_ok() {
            listed.fetch_add(1, Ordering::AcqRel);
            let _already_pending = sender.try_send(());
        }
    }));
    reader
}
