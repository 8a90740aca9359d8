//! What the agent sets up before its loop: the map sizes and packet path
//! its flags ask for, its HTTP endpoints, the signals that stop it, and
//! the name of the node it serves.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use super::AgentError;
use crate::{
    cli::{RunArgs, checked_flags::CheckedFlags},
    datapath::{loader::MapSizes, pinned::PinnedMaps, stats_table::StatsTable},
    node::{cpu_set, node_network::DeviceSelection, packet_path::PacketPathConfig},
    plan::{capacity::MapCapacity, counter_labels::CounterLabels},
    serve::{
        admin_server::{self, Endpoints},
        health::ProxyHealth,
        metrics::Metrics,
    },
    sync::Syncer,
};

/// The map sizes `--service-map-entries`, `--backend-map-entries` and the
/// conntrack flags ask.
pub(super) fn requested_sizes(args: &RunArgs) -> MapSizes {
    let entries = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
    MapSizes {
        capacity: MapCapacity {
            service_entries: entries(args.service_map_entries),
            backends: entries(args.backend_map_entries),
        },
        conntrack: args.conntrack.entries(cpu_set::allowed_cpus()),
    }
}

pub(super) fn packet_path_config(
    args: &RunArgs,
    flags: &CheckedFlags,
    conntrack_capacity: usize,
) -> PacketPathConfig {
    PacketPathConfig {
        devices: DeviceSelection::from_flag(&args.devices),
        node_port_addresses: flags.node_port_addresses.clone(),
        timeouts: args.conntrack.timeouts(),
        nat_port_range: args.nat_port_range,
        cluster_cidrs: flags.cluster_cidrs.clone(),
        cluster_ip_from_outside: args.cluster_ip_from_outside,
        conntrack_capacity,
    }
}

/// kube-proxy logs a bind failure and keeps proxying; so do we: the
/// datapath matters more than its observability.
pub(super) async fn serve_http(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    health: &Arc<Mutex<ProxyHealth>>,
) {
    let servers = [
        (
            args.metrics_bind_address,
            Endpoints::Metrics(Arc::clone(metrics)),
        ),
        (
            args.healthz_bind_address,
            Endpoints::Health {
                health: Arc::clone(health),
                metrics: Arc::clone(metrics),
            },
        ),
    ];
    for (address, endpoints) in servers {
        match admin_server::bind(address).await {
            Ok(listener) => {
                info!(%address, "serving HTTP");
                tokio::spawn(admin_server::serve(listener, endpoints));
            }
            Err(bind_error) => error!(error = %bind_error, "HTTP endpoint not served"),
        }
    }
}

/// SIGINT and SIGTERM, each of which stops the agent (the datapath stays).
pub(super) fn stop_signals() -> Result<(Signal, Signal), AgentError> {
    let stop = |kind| signal(kind).map_err(|source| AgentError::Signal { source });
    Ok((
        stop(SignalKind::interrupt())?,
        stop(SignalKind::terminate())?,
    ))
}

pub(super) fn node_name(args: &RunArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Starts from what a previous agent left in the maps, and points the
/// per-Service series at the kernel's counters and what they count for.
pub(super) fn adopt(
    pin_dir: &std::path::Path,
    metrics: &Metrics,
) -> Result<Syncer<PinnedMaps>, AgentError> {
    let syncer = Syncer::adopt(PinnedMaps::open(pin_dir)?)?;
    info!(
        frontends = syncer.programmed().frontends.len(),
        backends = syncer.programmed().backends.len(),
        "adopted pinned state"
    );
    metrics.service_counters.attach(
        StatsTable::open(pin_dir)?,
        CounterLabels::of(syncer.programmed()),
    );
    Ok(syncer)
}
