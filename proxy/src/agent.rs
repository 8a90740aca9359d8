//! `switchyard run`: attach the datapath, then keep it equal to what the
//! service source describes until told to stop. Stopping leaves the
//! datapath attached and serving; `switchyard cleanup` removes it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};
use tracing::{info, warn};

use crate::{
    cli::RunArgs,
    datapath::{DatapathError, loader, pinned::PinnedMaps},
    desired::desired_state,
    runner::SyncRunner,
    source::{Source, SourceError},
    sync::Syncer,
    topology::{NodeContext, ZONE_LABEL},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("installing a signal handler: {source}")]
    Signal { source: std::io::Error },
}

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let node_name = node_name(&args);
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal { source })?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| AgentError::Signal { source })?;

    let mut source = match &args.manifests {
        Some(dir) => {
            info!(node = %node_name, manifests = %dir.display(), "starting");
            Source::manifests(dir.clone())?
        }
        None => {
            info!(node = %node_name, "starting");
            Source::cluster(args.kubeconfig.as_deref(), &node_name).await?
        }
    };

    loader::attach(&args.pins.bpffs, &args.cgroup)?;
    let mut syncer = Syncer::adopt(PinnedMaps::open(&args.pins.bpffs)?)?;
    info!(
        frontends = syncer.programmed().frontends.len(),
        backends = syncer.programmed().backends.len(),
        "adopted pinned state"
    );
    let mut runner = SyncRunner::new(args.min_sync_period, args.sync_period);
    let mut reported = BTreeSet::new();
    loop {
        let due = runner.next_run(Instant::now());
        tokio::select! {
            () = source.changed() => runner.request(),
            // Until every list is in, the adopted state keeps serving.
            () = sleep_until(due), if source.synced() => {
                runner.ran(Instant::now());
                sync_once(&node_name, &source, &mut syncer, &mut reported);
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("stopping; the datapath stays attached (switchyard cleanup removes it)");
    Ok(())
}

/// This node's name and, when its Node object is known, its zone.
fn node_context(name: &str, nodes: &[Node]) -> NodeContext {
    let zone = nodes
        .iter()
        .find(|node| node.metadata.name.as_deref() == Some(name))
        .and_then(|node| node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
    NodeContext {
        name: name.to_owned(),
        zone,
    }
}

fn sync_once(
    node_name: &str,
    source: &Source,
    syncer: &mut Syncer<PinnedMaps>,
    reported: &mut BTreeSet<String>,
) {
    let loaded = source.snapshot();
    let node = node_context(node_name, &loaded.nodes);
    let (desired, conversion_errors) = desired_state(&loaded.services, &loaded.slices, &node);
    // Each bad object is reported once, when it first appears, not on every
    // pass: a log line per pass would bury everything else.
    let current: BTreeSet<String> = conversion_errors
        .into_iter()
        .map(|error| loaded.attribute(error))
        .chain(loaded.errors.iter().cloned())
        .map(|error| error.to_string())
        .collect();
    for line in current.difference(reported) {
        warn!("{line}");
    }
    *reported = current;

    let report = syncer.sync(&desired);
    info!(
        frontends = syncer.programmed().frontends.len(),
        backends = syncer.programmed().backends.len(),
        applied = report.applied,
        failed = report.failed.len(),
        held_back = report.held_back,
        skipped_objects = reported.len(),
        "programmed"
    );
}

fn node_name(args: &RunArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
    })
}
