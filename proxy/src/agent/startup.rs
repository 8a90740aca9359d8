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
        detect_local: flags.detect_local.clone(),
        masquerade_all: args.masquerade.masquerade_all,
        cluster_ip_from_outside: args.cluster_ip_from_outside,
        conntrack_capacity,
    }
}

/// How often an HTTP endpoint that could not be bound is tried again
/// (kube-proxy's 5 s).
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// kube-proxy logs a bind failure and keeps proxying, trying the address
/// again every few seconds; so do we: the datapath matters more than its
/// observability. With `--bind-address-hard-fail` a failure stops the agent
/// before anything is loaded.
pub(super) async fn serve_http(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    health: &Arc<Mutex<ProxyHealth>>,
) -> Result<(), AgentError> {
    let servers = [
        (
            args.serving.metrics_bind_address,
            Endpoints::Metrics(Arc::clone(metrics)),
        ),
        (
            args.serving.healthz_bind_address,
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
            Err(source) if args.serving.bind_address_hard_fail => {
                return Err(AgentError::Bind { source });
            }
            Err(bind_error) => {
                error!(error = %bind_error, retry_in = ?BIND_RETRY, "HTTP endpoint not served yet");
                tokio::spawn(bind_until_free(address, endpoints));
            }
        }
    }
    Ok(())
}

/// Tries `address` again until it is free, then serves it.
async fn bind_until_free(address: std::net::SocketAddr, endpoints: Endpoints) {
    loop {
        tokio::time::sleep(BIND_RETRY).await;
        if let Ok(listener) = admin_server::bind(address).await {
            info!(%address, "serving HTTP");
            admin_server::serve(listener, endpoints).await;
            return;
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
