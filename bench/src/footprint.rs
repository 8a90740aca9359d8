//! What the agent itself costs the node at scale, with no traffic: the time
//! from process start to every Service programmed, peak memory (also
//! through a relist after `410 Gone`), and the CPU an agent with nothing to
//! do spends over whole sync periods. From the API server stand-in and from
//! a manifests folder.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use switchyard_tests::{Agent, AgentConfig, ManifestDir, NodeManifest};

use crate::{
    agent_run::{self, NODE_NAME, RunningAgent, peak_rss_mib},
    catalog::{Catalog, KubeProxyService},
    progress::Progress,
    results::{Footprint, FootprintSource},
    rig::Rig,
    scenario::Options,
};

/// The agent's default `--sync-period`: idle is measured over whole ones.
const SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Idle CPU is read over this long: two full sync periods and a little.
const IDLE_WINDOW: Duration = Duration::from_secs(65);
/// Services per manifest file (a folder of 50 files at 50k).
const SERVICES_PER_FILE: usize = 1_000;

/// One catalog size: `services` Services of `endpoints` endpoints each.
#[derive(Clone, Copy, Debug)]
pub struct FootprintScale {
    pub services: usize,
    pub endpoints: usize,
}

pub fn measure(
    rig: &Rig,
    options: &Options,
    scale: FootprintScale,
    progress: &mut Progress,
) -> Result<Vec<Footprint>> {
    let services = catalog(scale);
    let what = format!("footprint {}x{}", scale.services, scale.endpoints);
    progress.step(&format!("{what} from the API"));
    let from_api = from_api(rig, options, scale, &services)?;
    progress.step(&format!("{what} from manifests"));
    let from_manifests = from_manifests(rig, options, scale, &services)?;
    Ok(vec![from_api, from_manifests])
}

fn from_api(
    rig: &Rig,
    options: &Options,
    scale: FootprintScale,
    services: &[KubeProxyService],
) -> Result<Footprint> {
    let log = options.agent_log(&format!("footprint-api-{}", scale.services));
    let (running, cold) = RunningAgent::start(
        rig,
        &options.agent,
        services,
        &map_sizes(scale),
        log,
        options.ready_timeout,
    )?;
    let peak = peak_rss_mib(&running.agent)?;
    let idle = idle(&running.agent)?;
    let relist_peak = match relist(&running, options.ready_timeout) {
        Ok(()) => Some(peak_rss_mib(&running.agent)?),
        Err(error) => {
            eprintln!("footprint: {error:#}");
            None
        }
    };
    running.stop()?;
    Ok(Footprint {
        source: FootprintSource::Api,
        services: scale.services,
        endpoints: scale.endpoints,
        cold_start_s: cold.as_secs_f64(),
        peak_rss_mib: peak,
        relist_peak_rss_mib: relist_peak,
        idle_cpu_s_per_min: idle.cpu_s_per_min,
        idle_full_pass_ms: idle.full_pass_ms,
        idle_full_passes: idle.full_passes,
    })
}

fn from_manifests(
    rig: &Rig,
    options: &Options,
    scale: FootprintScale,
    services: &[KubeProxyService],
) -> Result<Footprint> {
    let dir = ManifestDir::new(rig.scratch.join(format!("footprint-{}", scale.services)))?;
    dir.write("node.yaml", &[NodeManifest::new(NODE_NAME).to_value()])?;
    for (index, chunk) in services.chunks(SERVICES_PER_FILE).enumerate() {
        let documents: Vec<_> = chunk
            .iter()
            .flat_map(|service| {
                [
                    agent_run::service_object(service),
                    agent_run::slice_object(service, &service.endpoints),
                ]
            })
            .collect();
        dir.write(&format!("services-{index:04}.yaml"), &documents)?;
    }
    let config = map_sizes(scale).into_iter().fold(
        AgentConfig {
            kubeconfig: None,
            manifests: dir.path().to_owned(),
            ..agent_run::config(
                rig,
                &options.agent,
                options.agent_log(&format!("footprint-manifests-{}", scale.services)),
            )
        },
        AgentConfig::arg,
    );
    let started = Instant::now();
    let mut agent = Agent::spawn(config, &rig.node)?;
    if let Err(error) =
        agent_run::wait_programmed(&mut agent, services.len(), options.ready_timeout)
    {
        agent_run::abandon(agent);
        return Err(error);
    }
    let cold = started.elapsed();
    let peak = peak_rss_mib(&agent)?;
    let idle = idle(&agent)?;
    agent_run::stop_and_clean(agent)?;
    std::fs::remove_dir_all(dir.path()).context("removing the footprint manifests")?;
    Ok(Footprint {
        source: FootprintSource::Manifests,
        services: scale.services,
        endpoints: scale.endpoints,
        cold_start_s: cold.as_secs_f64(),
        peak_rss_mib: peak,
        relist_peak_rss_mib: None,
        idle_cpu_s_per_min: idle.cpu_s_per_min,
        idle_full_pass_ms: idle.full_pass_ms,
        idle_full_passes: idle.full_passes,
    })
}

/// A relist after `410 Gone`, as an API server that compacted its history
/// forces one: the watches are cut, something changes, the history goes.
/// The watchers list everything again while the old stores still serve.
fn relist(running: &RunningAgent<'_>, timeout: Duration) -> Result<()> {
    let passes = full_passes(&running.agent.log()).len();
    running.api.drop_watches();
    let mut node = NodeManifest::new(NODE_NAME).to_value();
    node["metadata"]["labels"]["bench"] = "relist".into();
    running.api.apply(node);
    running.api.compact();
    let deadline = Instant::now() + timeout;
    while full_passes(&running.agent.log()).len() <= passes {
        if Instant::now() > deadline {
            bail!("no pass after the relist within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Map sizes for the catalog, where it outgrows the defaults: a frontend
/// and a slot per endpoint for every Service, each endpoint a backend,
/// with a quarter to spare.
fn map_sizes(scale: FootprintScale) -> Vec<String> {
    let entries = scale.services * (1 + scale.endpoints) * 5 / 4;
    let backends = scale.services * scale.endpoints * 5 / 4;
    let mut args = Vec::new();
    if entries > switchyard_abi::SERVICES_MAX_ENTRIES as usize {
        args.push(format!("--service-map-entries={entries}"));
    }
    if backends > switchyard_abi::BACKENDS_MAX_ENTRIES as usize {
        args.push(format!("--backend-map-entries={backends}"));
    }
    args
}

/// `services` Services of `endpoints` endpoints, every one a dummy.
fn catalog(scale: FootprintScale) -> Vec<KubeProxyService> {
    let mut services = Catalog::new(scale.services.saturating_sub(2), &[], 1).services;
    let mut next = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    for service in &mut services {
        service.endpoints = (next..).take(scale.endpoints).map(Ipv4Addr::from).collect();
        next += u32::try_from(scale.endpoints).expect("a handful of endpoints");
    }
    services
}

struct Idle {
    cpu_s_per_min: f64,
    /// The slowest full pass in the window: one that had nothing to change.
    full_pass_ms: Option<f64>,
    full_passes: usize,
}

/// CPU the agent spends over [`IDLE_WINDOW`] with nothing changing.
fn idle(agent: &Agent<'_>) -> Result<Idle> {
    // Past the first pass's aftermath (the health check servers, the first
    // conntrack collection).
    std::thread::sleep(Duration::from_secs(2));
    let passes_before = full_passes(&agent.log()).len();
    let before = cpu_seconds(agent)?;
    let started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let spent = cpu_seconds(agent)? - before;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let passes: Vec<f64> = full_passes(&agent.log())
        .into_iter()
        .skip(passes_before)
        .collect();
    debug_assert!(IDLE_WINDOW > SYNC_PERIOD * 2);
    Ok(Idle {
        cpu_s_per_min: spent / minutes,
        full_pass_ms: passes.iter().copied().max_by(f64::total_cmp),
        full_passes: passes.len(),
    })
}

/// `total_ms` of every full pass the log reports, in order.
fn full_passes(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("programmed") && line.contains("pass=\"full\""))
        .filter_map(|line| {
            line.split("total_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// User and system CPU time of the agent so far.
fn cpu_seconds(agent: &Agent<'_>) -> Result<f64> {
    let pid = agent.pid().context("agent not running")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|field| field.parse::<f64>().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "ticks per second, about 100")]
    Ok(ticks / hz.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_passes_are_read_from_the_log() {
        let log = "x INFO switchyard::agent: programmed pass=\"full\" frontends=2 total_ms=12.5\n\
                   x INFO switchyard::agent: programmed pass=\"changed\" frontends=2 total_ms=0.5\n\
                   x INFO switchyard::agent: programmed pass=\"full\" frontends=2 total_ms=3\n";
        assert_eq!(full_passes(log), [12.5, 3.0]);
    }

    #[test]
    fn maps_are_sized_only_past_the_defaults() {
        let at = |services, endpoints| {
            map_sizes(FootprintScale {
                services,
                endpoints,
            })
        };
        assert!(at(50_000, 4).is_empty());
        assert_eq!(
            at(100_000, 10),
            [
                "--service-map-entries=1375000",
                "--backend-map-entries=1250000"
            ]
        );
    }

    #[test]
    fn the_catalog_has_distinct_endpoints_of_the_asked_count() {
        let services = catalog(FootprintScale {
            services: 100,
            endpoints: 10,
        });
        assert_eq!(services.len(), 100);
        let mut all: Vec<_> = services.iter().flat_map(|s| s.endpoints.clone()).collect();
        assert_eq!(all.len(), 1_000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1_000);
    }
}
