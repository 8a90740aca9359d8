//! `switchyard run`: attach the datapath, then keep it equal to what the
//! service source describes until told to stop. Stopping leaves the
//! datapath attached and serving; `switchyard cleanup` removes it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use switchyard_abi::{BACKENDS_MAP, SERVICES_MAP};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::{
    cli::{
        RunArgs,
        checked_flags::{CheckedFlags, FlagError},
    },
    convert::{
        claim::ExternalIpPolicy,
        desired::{desired_state_from, update_services_from},
        input_error::InputError,
        proxy_selector::ProxySelector,
        service_cidr::service_cidrs,
        topology::NodeContext,
    },
    datapath::{DatapathError, loader, pinned::PinnedMaps},
    model::{
        DesiredState, Scope, address::Cidr, balancing::Balancing, counter_policy::CounterPolicy,
    },
    node::{
        kube_proxy_leftovers,
        netns_source::NetnsSources,
        node_network,
        packet_path::{PacketPath, PacketPathError},
        socket_reaper::SocketReaper,
    },
    plan::{
        capacity::{MapCapacity, entries_of},
        counter_labels::CounterLabels,
    },
    runner::SyncRunner,
    serve::{
        health::{ProxyHealth, node_eligible},
        listener,
        metrics::{Metrics, kube_proxy::Pass},
        service_health_server::ServiceHealthServers,
    },
    source::{
        Source, SourceError,
        change_set::{ChangeSet, ChangeTrigger, MAX_TRIGGERS},
    },
    sync::{SyncReport, Syncer},
};

mod room;
mod startup;

use startup::{adopt, node_name, packet_path_config, requested_sizes, serve_http, stop_signals};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    PacketPath(#[from] PacketPathError),
    #[error("installing a signal handler: {source}")]
    Signal { source: std::io::Error },
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("{source} (--bind-address-hard-fail)")]
    Bind {
        source: crate::serve::admin_server::BindError,
    },
}

/// How often the namespaces of the hooked cgroup are looked for, while
/// any frontend has `loadBalancerSourceRanges`.
const NAMESPACE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let flags = CheckedFlags::check(&args)?;
    listener::raise_open_file_limit();
    let node_name = node_name(&args);
    let (mut interrupt, mut terminate) = stop_signals()?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Mutex::new(ProxyHealth::new(args.sync_period)));
    serve_http(&args, &metrics, &health).await?;

    let source = open_source(&args, &node_name).await?;

    let mut programs = loader::load(&args.pins.bpffs, requested_sizes(&args))?;
    metrics.set_kernel_features(programs.features());
    programs.attach_sockets(&args.cgroup)?;
    programs.set_xdp(args.xdp);
    let mut packet_path = PacketPath::new(
        packet_path_config(&args, &flags, programs.conntrack_entries()),
        &args.pins.bpffs,
        &metrics,
    )?;
    // Subscribed before the first read, so no change falls in between.
    let mut network_changes = node_network::watch().map_err(PacketPathError::from)?;
    packet_path.refresh(&mut programs, &metrics).await?;
    programs.retire_older_generations();
    let mut collect = tokio::time::interval(args.conntrack.gc_interval);
    let syncer = adopt(&args.pins.bpffs, &metrics)?;
    let mut netns_sources = NetnsSources::open(&args.cgroup, &args.pins.bpffs)?;
    // New pods' namespaces must be known soon after they start, for the
    // socket path's `loadBalancerSourceRanges` (see `netns_source`).
    let mut learn_namespaces = tokio::time::interval(NAMESPACE_REFRESH);
    let sockets = SocketReaper::new(
        args.cgroup.clone(),
        args.pins.bpffs.clone(),
        args.destroy_tcp_to_removed_backends,
        Arc::clone(&metrics),
    );
    let mut agent = Agent {
        node_name,
        source,
        syncer,
        metrics,
        health: Arc::clone(&health),
        packet_path,
        health_checks: ServiceHealthServers::new(Vec::new(), Arc::clone(&health)),
        sockets,
        reported: BTreeMap::new(),
        triggers: Vec::new(),
        desired: None,
        node: NodeContext::default(),
        service_cidrs: flags.service_cidrs,
        external_ip_ranges: flags.external_ip_ranges,
        node_eligible: true,
        last_full: None,
        full_pending: true,
        sync_period: args.sync_period,
        capacity: programs.capacity(),
        entry_budget: usize::try_from(args.service_entry_budget).unwrap_or(usize::MAX),
        refusing: false,
        drift: DriftWatch::new(),
        counters: flags.counters,
        balancing: flags.balancing,
        kube_proxy_cleanup: if args.takeover.cleanup_kube_proxy {
            KubeProxyCleanup::Pending
        } else {
            KubeProxyCleanup::NotAsked
        },
    };
    let mut runner = SyncRunner::new(args.min_sync_period, args.sync_period);
    loop {
        let due = runner.next_run(Instant::now());
        tokio::select! {
            () = agent.source.changed() => {
                runner.request();
                agent.queued();
            }
            // Until every list is in, the adopted state keeps serving.
            () = sleep_until(due), if agent.source.synced() => {
                runner.ran(Instant::now());
                agent.sync().await;
            }
            Some(()) = network_changes.recv() => {
                match agent.packet_path.refresh(&mut programs, &agent.metrics).await {
                    Ok(true) => {
                        agent.full_pending = true;
                        runner.request();
                    }
                    Ok(false) => {}
                    Err(error) => warn!(%error, "re-reading the node's network"),
                }
            }
            _ = collect.tick() => agent.packet_path.collect(&agent.metrics),
            _ = learn_namespaces.tick(), if !agent.syncer.programmed().source_ranges.is_empty() => {
                netns_sources.refresh();
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("stopping; the datapath stays attached (switchyard cleanup removes it)");
    Ok(())
}

struct Agent {
    node_name: String,
    source: Source,
    syncer: Syncer<PinnedMaps>,
    metrics: Arc<Metrics>,
    health: Arc<Mutex<ProxyHealth>>,
    packet_path: PacketPath,
    health_checks: ServiceHealthServers,
    /// Input problems of the last pass, by their log line.
    reported: BTreeMap<String, InputError>,
    /// Trigger times of the EndpointSlice changes not yet programmed.
    triggers: Vec<ChangeTrigger>,
    /// What the last pass programmed, and the node it was computed for:
    /// the base a pass over a few changed Services patches.
    desired: Option<DesiredState>,
    node: NodeContext,
    /// `--service-cluster-ip-range`; a full pass adds the ServiceCIDR
    /// objects' ranges.
    service_cidrs: Vec<Cidr>,
    /// `--external-ip-ranges`.
    external_ip_ranges: Option<Vec<Cidr>>,
    node_eligible: bool,
    last_full: Option<Instant>,
    /// Something only a full pass takes in (the node's network changed, or
    /// a pass left work undone).
    full_pending: bool,
    sync_period: std::time::Duration,
    sockets: SocketReaper,
    /// What the service and backend maps hold at most.
    capacity: MapCapacity,
    /// `--service-entry-budget`.
    entry_budget: usize,
    /// The last full pass left Services out for want of room: until it
    /// stops, every pass is a full one, so they come in when room appears.
    refusing: bool,
    drift: DriftWatch,
    /// `--service-counters*`.
    counters: CounterPolicy,
    /// `--lb-algorithm`, `--maglev-table-size`.
    balancing: Balancing,
    /// `--cleanup-kube-proxy`: whether kube-proxy's rules are still to go.
    kube_proxy_cleanup: KubeProxyCleanup,
}

/// When the maps were last read back and compared (once a sync period),
/// and whether they had drifted then.
struct DriftWatch {
    checked: Instant,
    drifting: bool,
}

impl DriftWatch {
    fn new() -> Self {
        Self {
            checked: Instant::now(),
            drifting: false,
        }
    }
}

impl Agent {
    fn health(&self) -> std::sync::MutexGuard<'_, ProxyHealth> {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // health record itself is still meaningful.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queued(&mut self) {
        let now = SystemTime::now();
        self.health().queued_update(now);
        self.metrics.kube_proxy.observe_queued(now);
        self.metrics
            .kube_proxy
            .set_pending(self.source.pending_changes());
    }

    async fn sync(&mut self) {
        let started = Instant::now();
        let mut changes = self.source.take_changes();
        self.metrics.kube_proxy.count_changes(changes.received);
        self.metrics
            .kube_proxy
            .set_pending(self.source.pending_changes());
        // Kept until a pass completes (one that leaves work undone has not
        // programmed them), as many as one pass's worth.
        let room = MAX_TRIGGERS.saturating_sub(self.triggers.len());
        self.triggers
            .extend(std::mem::take(&mut changes.triggers).into_iter().take(room));
        if self.drift.checked.elapsed() >= self.sync_period && self.drifted() {
            self.full_pending = true;
        }
        if changes.is_empty() && !self.full_pending && self.desired.is_some() {
            self.unchanged_pass(started).await;
            return;
        }
        let (report, pass) = match self.changed_pass(&changes) {
            Some(report) => (report, Pass::Partial),
            None => (self.full_pass(), Pass::Full),
        };
        let written = started.elapsed();
        for (_, failure) in &report.failed {
            let map = failure.map_name().unwrap_or("none");
            self.metrics.record_map_failure(map, failure.reason());
        }
        let complete = report.failed.is_empty() && report.held_back == 0;
        self.sockets.reap(report.stale);
        if report.applied > 0 {
            let labels = CounterLabels::of(self.syncer.programmed());
            self.metrics.service_counters.set_labels(labels);
        }
        // A later pass over a few Services assumes everything else matches.
        self.full_pending |= !complete;
        let desired = self.desired.take().unwrap_or_default();
        self.sync_health_checks(&desired).await;
        self.observe(&desired, started, pass, complete);
        self.desired = Some(desired);
        if complete && pass == Pass::Full && !self.refusing {
            self.take_over_from_kube_proxy().await;
        }
        info!(
            pass = pass.label(),
            frontends = self.syncer.programmed().frontends.len(),
            backends = self.syncer.programmed().backends.len(),
            applied = report.applied,
            failed = report.failed.len(),
            held_back = report.held_back,
            skipped_objects = self.reported.len(),
            written_ms = written.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "programmed"
        );
    }

    /// The sync period came and nothing changed since the last complete
    /// pass: the inputs are what that pass read, so recomputing them would
    /// give the same desired state and no operation. What a full pass
    /// would also catch is covered where it happens: a relist, the Node, a
    /// ServiceCIDR or the node's network ask for one, and a pass that left
    /// work undone sets `full_pending`.
    async fn unchanged_pass(&mut self, started: Instant) {
        let desired = self.desired.take().unwrap_or_default();
        // A health check port that could not be bound is tried again.
        self.sync_health_checks(&desired).await;
        self.observe(&desired, started, Pass::Partial, true);
        self.desired = Some(desired);
        self.last_full = Some(Instant::now());
        debug!(pass = "unchanged", "nothing to program");
    }

    /// Reads the maps back; when they differ from what was programmed,
    /// says so once per episode, counts it, and asks for the full pass
    /// that repairs them.
    fn drifted(&mut self) -> bool {
        self.drift.checked = Instant::now();
        let drift = match self.syncer.check_drift() {
            Ok(drift) => drift,
            Err(error) => {
                warn!(%error, "reading the maps back to check them");
                return false;
            }
        };
        self.metrics.set_drift(&drift);
        if !drift.is_empty() && !self.drift.drifting {
            let maps: Vec<String> = drift
                .maps()
                .map(|(map, entries)| format!("{map}: {entries}"))
                .collect();
            warn!(
                drifted = maps.join(", "),
                "map entries differ from what was programmed (changed behind the agent's \
                 back): repairing"
            );
        }
        self.drift.drifting = !drift.is_empty();
        self.drift.drifting
    }

    async fn sync_health_checks(&mut self, desired: &DesiredState) {
        for error in self.health_checks.sync(&desired.health_checks).await {
            warn!("{error}");
            self.metrics.count_health_check_failure();
        }
    }

    /// Recomputes and rewrites only the Services in `changes`, when that
    /// gives what a full pass would: the source can name them, the last
    /// full pass is recent, complete and for the same node, and none of
    /// them contests a frontend with another Service.
    fn changed_pass(&mut self, changes: &ChangeSet) -> Option<SyncReport> {
        let fresh = self
            .last_full
            .is_some_and(|at| at.elapsed() < self.sync_period);
        if changes.everything || self.full_pending || self.refusing || !fresh {
            return None;
        }
        let desired = self.desired.as_mut()?;
        let loaded = self.source.services(&changes.services)?;
        let updated = update_services_from(
            desired,
            &changes.services,
            &loaded.services,
            &loaded.slices,
            &self.node,
        );
        // A changed Service over its budget is refused by a full pass.
        let within_budget = changes
            .services
            .iter()
            .all(|service| entries_of(desired, service) <= self.entry_budget);
        let Ok((scope, errors)) = updated
            .map_err(drop)
            .and_then(|found| if within_budget { Ok(found) } else { Err(()) })
        else {
            self.desired = None;
            return None;
        };
        // Errors of these Services are added, not replaced: the next full
        // pass settles which still stand.
        let mut new = Vec::new();
        for error in errors.into_iter().chain(loaded.errors) {
            let line = error.to_string();
            if let std::collections::btree_map::Entry::Vacant(entry) = self.reported.entry(line) {
                warn!("{}", entry.key());
                new.push(error.clone());
                entry.insert(error);
            }
        }
        self.metrics.set_input_errors(self.reported.values(), &new);
        Some(self.syncer.sync_frontends(desired, &scope))
    }

    /// Re-reads every object, recomputes the whole desired state and
    /// rewrites whatever differs.
    fn full_pass(&mut self) -> SyncReport {
        // The last pass's desired state is not read from here on (the plan
        // compares with what the maps hold): freed first, it is not held
        // beside the new one, a second copy of the catalog.
        self.desired = None;
        let loaded = self.source.snapshot();
        let own_node = loaded
            .nodes
            .iter()
            .find(|node| node.metadata.name.as_deref() == Some(self.node_name.as_str()))
            .map(|node| &**node);
        self.node_eligible = own_node.is_none_or(node_eligible);
        if let Err(error) = self.packet_path.set_local_cidrs(&pod_cidrs(own_node)) {
            warn!(%error, "writing detect-local's pod CIDRs");
        }
        let (service_cidrs, cidr_errors) =
            service_cidrs(&self.service_cidrs, &loaded.service_cidrs);
        self.node = NodeContext::new(
            &self.node_name,
            own_node,
            self.packet_path.node_port_addresses(),
            &service_cidrs,
            ExternalIpPolicy {
                allowed: self.external_ip_ranges.clone(),
                node_addresses: self.packet_path.node_addresses(),
            },
        )
        .with_counters(self.counters.clone())
        .with_balancing(self.balancing);
        self.metrics.kube_proxy.set_families(&self.node.families());
        let (mut desired, conversion_errors) =
            desired_state_from(&loaded.services, &loaded.slices, &self.node);
        let refusals = room::refusals(
            &mut desired,
            self.capacity,
            self.entry_budget,
            self.syncer.programmed(),
        );
        self.refusing = !refusals.is_empty();
        let current: BTreeMap<String, InputError> = conversion_errors
            .into_iter()
            .chain(cidr_errors)
            .chain(refusals)
            .map(|error| loaded.attribute(error))
            .chain(loaded.errors.iter().cloned())
            .map(|error| (error.to_string(), error))
            .collect();
        // Each bad object is reported once, when it first appears, not on
        // every pass: a log line per pass would bury everything else.
        let new: Vec<&InputError> = current
            .iter()
            .filter(|(line, _)| !self.reported.contains_key(*line))
            .map(|(line, error)| {
                warn!("{line}");
                error
            })
            .collect();
        self.metrics.set_input_errors(current.values(), new);
        self.reported = current;
        let report = self.syncer.sync(&desired);
        self.desired = Some(desired);
        self.last_full = Some(Instant::now());
        self.full_pending = false;
        report
    }

    fn observe(&mut self, desired: &DesiredState, started: Instant, pass: Pass, complete: bool) {
        let now = SystemTime::now();
        let kube_proxy = &self.metrics.kube_proxy;
        kube_proxy.observe_sync(pass, started.elapsed(), complete.then_some(now));
        if complete {
            kube_proxy.observe_programmed(&self.triggers, now);
            self.triggers.clear();
        }
        let programmed = self.syncer.programmed();
        self.metrics.set_programmed(
            programmed.active_frontends().count(),
            programmed.backends.len(),
        );
        self.metrics.set_map_usage(
            SERVICES_MAP,
            programmed.service_entries(),
            self.capacity.service_entries,
        );
        self.metrics.set_map_usage(
            BACKENDS_MAP,
            programmed.backends.len(),
            self.capacity.backends,
        );
        for (scope, policy) in [(Scope::Internal, "internal"), (Scope::External, "external")] {
            for (family, services) in desired.no_local_by_family(scope) {
                kube_proxy.set_no_local_endpoints(family, policy, services);
            }
        }
        let mut health = self.health();
        // As kube-proxy: a pass that left changes unapplied (a full map, say)
        // is not an update, so a problem that persists turns /healthz 503.
        if complete {
            health.updated(now);
        }
        // A node not (yet) known is eligible, as in kube-proxy.
        health.set_node_eligible(self.node_eligible);
    }
}

/// The Node's `spec.podCIDRs` (or the older single `spec.podCIDR`).
fn pod_cidrs(node: Option<&k8s_openapi::api::core::v1::Node>) -> Vec<String> {
    let Some(spec) = node.and_then(|node| node.spec.as_ref()) else {
        return Vec::new();
    };
    match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(cidrs), _) if !cidrs.is_empty() => cidrs.clone(),
        (_, Some(cidr)) => vec![cidr.clone()],
        _ => Vec::new(),
    }
}

/// `--cleanup-kube-proxy`'s progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KubeProxyCleanup {
    NotAsked,
    /// Waiting for a complete full pass that left no Service out.
    Pending,
    Done,
}

impl Agent {
    /// Removes kube-proxy's rules once this agent serves every Service:
    /// called after a complete full pass that left none out, so no Service
    /// kube-proxy served is without a proxy in between. A failure is said
    /// and tried again after the next such pass.
    async fn take_over_from_kube_proxy(&mut self) {
        if self.kube_proxy_cleanup != KubeProxyCleanup::Pending {
            return;
        }
        info!("every Service is served: removing kube-proxy's rules (--cleanup-kube-proxy)");
        match tokio::task::spawn_blocking(kube_proxy_leftovers::remove).await {
            Ok(Ok(removed)) => {
                self.metrics.set_kube_proxy_cleanup(&removed);
                self.kube_proxy_cleanup = KubeProxyCleanup::Done;
            }
            Ok(Err(error)) => {
                warn!(%error, "kube-proxy's rules stay; retried after the next full pass");
            }
            Err(error) => {
                warn!(%error, "kube-proxy's rules stay; retried after the next full pass");
            }
        }
    }
}

/// The manifests folder or the API, with the Services this proxy serves.
async fn open_source(args: &RunArgs, node_name: &str) -> Result<Source, AgentError> {
    let selector = ProxySelector::new(args.takeover.service_proxy_name.as_deref());
    if let Some(name) = &args.takeover.service_proxy_name {
        info!(%name, "serving only the Services labelled service.kubernetes.io/service-proxy-name={name}");
    }
    Ok(if let Some(dir) = &args.manifests {
        info!(node = %node_name, manifests = %dir.display(), "starting");
        Source::manifests(dir.clone(), selector)?
    } else {
        info!(node = %node_name, "starting");
        Source::cluster(args.kubeconfig.as_deref(), node_name, &selector).await?
    })
}
