//! The cluster source: kube-rs reflectors for Services, EndpointSlices,
//! this node's own Node and the ServiceCIDRs, with kube-proxy's informer
//! selectors.
//!
//! Watch events say which Services changed, so a pass can recompute just
//! those; anything else (a relist, the Node) asks for a full pass, and the
//! agent runs one every sync period anyway, so a missed event cannot leave
//! it wrong for long. The watchers relist by themselves after a
//! disconnect or a `410 Gone`; until every store has listed once the source
//! is not `synced` and the agent keeps serving what it adopted.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
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
use tracing::info;

use crate::{
    convert::{
        endpoints::{ParsedSlice, SERVICE_NAME_LABEL, read_slice},
        proxy_selector::ProxySelector,
        service::{ParsedService, namespace_of, read_service},
    },
    model::{address::IpFamily, name::NamespacedName},
    source::{
        change_set::{ChangeSet, ChangeTrigger, PendingChanges, ReceivedChanges},
        manifest::Manifests,
        read_store::{ReadStore, Reader},
        trim,
        watch_task::{Listing, Notify, record, spawn_events},
    },
};

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

pub const WATCHED_RESOURCES: [WatchedResource; 4] = [
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
    WatchedResource {
        group: "networking.k8s.io",
        resource: "servicecidrs",
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
    services: Arc<Mutex<ReadStore<Service, ParsedService>>>,
    slices: Arc<Mutex<ReadStore<EndpointSlice, ParsedSlice>>>,
    nodes: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    changes: mpsc::Receiver<()>,
    pending: Arc<PendingChanges>,
    membership: Arc<Mutex<SliceMembership>>,
    listed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

/// The watchers that must have listed before a sync may prune: Services,
/// EndpointSlices and the Node. ServiceCIDRs only add drops of unallocated
/// addresses, and API servers before 1.33 do not serve them.
const REQUIRED_LISTS: usize = 3;

impl KubeSource {
    pub async fn connect(
        kubeconfig: Option<&Path>,
        node_name: &str,
        selector: &ProxySelector,
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
        let pending = Arc::new(PendingChanges::default());
        let mut tasks = Vec::new();
        // kube-proxy's informer selector, on Services and EndpointSlices
        // alike: objects for another proxy, and headless ones, are never
        // even received.
        let proxied = watcher::Config::default().labels(&selector.label_selector());
        let notify = Notify {
            wake: &sender,
            pending: &pending,
            listed: &listed,
        };
        let services = spawn_read_watcher(
            Api::<Service>::all(client.clone()),
            proxied.clone(),
            (&notify, &mut tasks),
            read_service,
            |service: &Service, _deleted: bool, pending: &PendingChanges| {
                let (namespace, name) = namespaced_name(&service.metadata);
                pending.received_service();
                pending.service(namespace, name);
            },
        );
        let membership = Arc::new(Mutex::new(SliceMembership::default()));
        let members = Arc::clone(&membership);
        let slices = spawn_read_watcher(
            Api::<EndpointSlice>::all(client.clone()),
            proxied,
            (&notify, &mut tasks),
            read_slice,
            move |slice: &EndpointSlice, deleted: bool, pending: &PendingChanges| {
                let (namespace, name) = namespaced_name(&slice.metadata);
                pending.received_endpoint_slice(change_trigger(slice));
                let service = slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                    .filter(|_| !deleted);
                let mut members = members
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for service in members.record(namespace, name, service) {
                    pending.service(namespace, &service);
                }
            },
        );
        let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let nodes = spawn_reflector(
            Api::<Node>::all(client.clone()),
            own_node,
            &notify,
            (&mut tasks, Listing::Required),
            trim::node,
            |_node: &Node, _deleted: bool, pending: &PendingChanges| pending.everything(),
        );
        let service_cidrs = spawn_reflector(
            Api::<ServiceCIDR>::all(client),
            watcher::Config::default(),
            &notify,
            (&mut tasks, Listing::Optional),
            trim::service_cidr,
            |_cidr: &ServiceCIDR, _deleted: bool, pending: &PendingChanges| pending.everything(),
        );
        Ok(Self {
            services,
            slices,
            nodes,
            service_cidrs,
            changes,
            pending,
            membership,
            listed,
            tasks,
        })
    }

    /// Every watcher has completed its first list: the stores hold the
    /// whole cluster and a sync may prune what is not in them.
    pub fn synced(&self) -> bool {
        self.listed.load(Ordering::Acquire) >= REQUIRED_LISTS
    }

    /// Waits for the next change (or first list) in any store.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        while self.changes.try_recv().is_ok() {}
    }

    /// What changed since the last call.
    pub fn take_changes(&self) -> ChangeSet {
        self.pending.take()
    }

    pub fn pending_changes(&self) -> ReceivedChanges {
        self.pending.pending()
    }

    /// The named Services that still exist, and every EndpointSlice of
    /// them: what a pass over just those Services reads.
    pub fn services(&self, names: &BTreeSet<NamespacedName>) -> Manifests {
        let mut services = Vec::new();
        let mut errors = Vec::new();
        {
            let store = self
                .services
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for NamespacedName { namespace, name } in names {
                if let Some((parsed, problems)) = store.get(namespace, name) {
                    services.extend(parsed.cloned());
                    errors.extend(problems.iter().cloned());
                }
            }
        }
        let members = self
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let store = self
            .slices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The store is the truth: a name the membership still lists (a
        // slice gone during a relist) simply is not found, and one whose
        // label moved elsewhere is filtered out.
        let mut slices = Vec::new();
        for service in names {
            for slice in members.slices_of(service) {
                let Some((parsed, problems)) = store.get(&service.namespace, slice) else {
                    continue;
                };
                if parsed.is_some_and(|parsed| parsed.service != *service) {
                    continue;
                }
                slices.extend(parsed.cloned());
                errors.extend(problems.iter().cloned());
            }
        }
        Manifests {
            services,
            slices,
            errors,
            ..Manifests::default()
        }
    }

    /// The stores' content, in the shape the manifests source gives.
    pub fn snapshot(&self) -> Manifests {
        let (services, mut errors) = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshot();
        let (slices, slice_errors) = self
            .slices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshot();
        errors.extend(slice_errors);
        Manifests {
            services,
            slices,
            nodes: self.nodes.state(),
            service_cidrs: self.service_cidrs.state(),
            errors,
            ..Manifests::default()
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which EndpointSlices belong to which Service, from the slices' labels
/// as the watch reports them: a slice that moves (its label changed) marks
/// both the Service it left and the one it joined.
#[derive(Debug, Default)]
struct SliceMembership {
    service_of: HashMap<NamespacedName, String>,
    slices: HashMap<NamespacedName, BTreeSet<String>>,
}

impl SliceMembership {
    /// Records that slice `namespace/name` now belongs to `service` (None:
    /// to none, or deleted); returns the Services whose slices changed.
    fn record(&mut self, namespace: &str, name: &str, service: Option<&String>) -> Vec<String> {
        let slice = NamespacedName::new(namespace, name);
        let before = match service {
            Some(service) => self.service_of.insert(slice, service.clone()),
            None => self.service_of.remove(&slice),
        };
        if let Some(left) = &before {
            let key = NamespacedName::new(namespace.to_owned(), left.clone());
            if let Some(names) = self.slices.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.slices.remove(&key);
                }
            }
        }
        if let Some(joined) = service {
            self.slices
                .entry(NamespacedName::new(namespace.to_owned(), joined.clone()))
                .or_default()
                .insert(name.to_owned());
        }
        before.into_iter().chain(service.cloned()).collect()
    }

    fn slices_of(&self, service: &NamespacedName) -> impl Iterator<Item = &String> {
        self.slices.get(service).into_iter().flatten()
    }
}

fn namespaced_name(meta: &kube::api::ObjectMeta) -> (&str, &str) {
    (namespace_of(meta), meta.name.as_deref().unwrap_or_default())
}

/// A reflector whose events are recorded by `changed` (per object) or as
/// "everything" (a relist), then wake the agent.
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: &Notify<'_>,
    (tasks, listing): (&mut Vec<JoinHandle<()>>, Listing),
    trim: fn(&mut K),
    mut changed: impl FnMut(&K, bool, &PendingChanges) + Send + 'static,
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
    // What nothing here reads is dropped before the store keeps a copy
    // (see `trim`).
    let stream = reflector::reflector(writer, watcher(api, config).modify(trim).default_backoff());
    spawn_events(stream, listing, notify, tasks, move |event, pending| {
        record(event, pending, &mut changed);
    });
    if listing == Listing::Optional {
        return reader;
    }
    let ready = reader.clone();
    let sender = notify.wake.clone();
    let listed = Arc::clone(notify.listed);
    tasks.push(tokio::spawn(async move {
        if ready.wait_until_ready().await.is_ok() {
            listed.fetch_add(1, Ordering::AcqRel);
            let _already_pending = sender.try_send(());
        }
    }));
    reader
}

/// A watcher without a reflector store: a [`ReadStore`] of objects as
/// `read` makes them, fed from the events directly; listed once its first
/// list ends.
fn spawn_read_watcher<K, T>(
    api: Api<K>,
    config: watcher::Config,
    (notify, tasks): (&Notify<'_>, &mut Vec<JoinHandle<()>>),
    read: Reader<K, T>,
    mut changed: impl FnMut(&K, bool, &PendingChanges) + Send + 'static,
) -> Arc<Mutex<ReadStore<K, T>>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    T: Send + Sync + 'static,
{
    let store = Arc::new(Mutex::new(ReadStore::new(read)));
    let objects = Arc::clone(&store);
    let listed = Arc::clone(notify.listed);
    let stream = watcher(api, config).default_backoff();
    spawn_events(
        stream,
        Listing::Required,
        notify,
        tasks,
        move |event, pending| {
            let mut store = objects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                    store.apply(object);
                }
                watcher::Event::Delete(object) => store.delete(object),
                watcher::Event::Init => store.relist_started(),
                watcher::Event::InitDone => {
                    if store.relisted() {
                        listed.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
            drop(store);
            record(event, pending, &mut changed);
        },
    );
    store
}

/// The EndpointSlice controller's record of when the change this slice
/// carries was triggered (RFC 3339), with the slice's address family.
fn change_trigger(slice: &EndpointSlice) -> Option<ChangeTrigger> {
    const ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
    let text = slice.metadata.annotations.as_ref()?.get(ANNOTATION)?;
    Some(ChangeTrigger {
        family: IpFamily::from_address_type(&slice.address_type)?,
        at: humantime::parse_rfc3339_weak(text).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_membership_follows_labels() {
        let mut members = SliceMembership::default();
        let web = "web".to_owned();
        let api = "api".to_owned();
        let key = |s: &str| NamespacedName::new("default", s);
        assert_eq!(members.record("default", "s1", Some(&web)), ["web"]);
        assert_eq!(members.record("default", "s2", Some(&web)), ["web"]);
        let of = |m: &SliceMembership, s| m.slices_of(&key(s)).cloned().collect::<Vec<_>>();
        assert_eq!(of(&members, "web"), ["s1", "s2"]);
        // Relabelled: both Services changed.
        assert_eq!(members.record("default", "s1", Some(&api)), ["web", "api"]);
        assert_eq!(of(&members, "web"), ["s2"]);
        assert_eq!(of(&members, "api"), ["s1"]);
        // Deleted.
        assert_eq!(members.record("default", "s2", None), ["web"]);
        assert!(of(&members, "web").is_empty());
        assert!(!members.slices.contains_key(&key("web")));
    }
}
