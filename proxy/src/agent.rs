//! `switchyard run`: attach the datapath, then keep it equal to what the
//! service source describes until told to stop. Stopping leaves the
//! datapath attached and serving; `switchyard cleanup` removes it.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Node;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::RunArgs,
    datapath::{DatapathError, loader, pinned::PinnedMaps},
    desired::desired_state,
    manifest::load_dir,
    sync::Syncer,
    topology::{NodeContext, ZONE_LABEL},
    watcher::{ManifestWatcher, WatchError},
};

/// A safety net under the file watcher: re-read the folder this often even
/// when no event arrived.
const RESYNC_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("manifests folder {path}: {source}")]
    ManifestsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Kubernetes API source is not built yet: pass --manifests DIR")]
    NoSource,
    #[error("installing a signal handler: {source}")]
    Signal { source: std::io::Error },
}

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let Some(manifests) = args.manifests.clone() else {
        return Err(AgentError::NoSource);
    };
    if !manifests.is_dir() {
        return Err(AgentError::ManifestsDir {
            path: manifests,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let node_name = node_name(&args);
    info!(node = %node_name, manifests = %manifests.display(), "starting");

    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal { source })?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| AgentError::Signal { source })?;

    loader::attach(&args.pins.bpffs, &args.cgroup)?;
    let mut syncer = Syncer::adopt(PinnedMaps::open(&args.pins.bpffs)?)?;
    info!(
        frontends = syncer.programmed().frontends.len(),
        backends = syncer.programmed().backends.len(),
        "adopted pinned state"
    );
    let mut watcher = ManifestWatcher::new(&manifests)?;
    let mut reported = BTreeSet::new();
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.tick().await;

    loop {
        sync_once(&node_name, &manifests, &mut syncer, &mut reported);
        tokio::select! {
            () = watcher.changed() => {}
            _ = resync.tick() => {}
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
    manifests: &std::path::Path,
    syncer: &mut Syncer<PinnedMaps>,
    reported: &mut BTreeSet<String>,
) {
    let loaded = load_dir(manifests);
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
