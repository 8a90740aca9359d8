//! The two kube-proxy baselines as the node's rule sets: loading the whole
//! set (a full sync), applying one endpoint change (a partial sync) and
//! clearing the node's netfilter state between modes. Each returns how long
//! the kernel took to take the rules, as kube-proxy would wait for it.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{KubeProxyService, iptables, nftables};
use crate::{NetNs, process::run_bounded};

/// iptables through its nf_tables backend, as kube-proxy's iptables mode
/// runs on current distributions (the legacy backend is on its way out).
const IPTABLES_RESTORE: &str = "iptables-nft-restore";
const NFT: &str = "nft";
/// How long a whole rule set may take to load, and one change to apply.
const LOAD_TIMEOUT: Duration = Duration::from_mins(5);
const CHANGE_TIMEOUT: Duration = Duration::from_mins(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSet {
    Iptables,
    Nftables,
}

impl RuleSet {
    /// Loads the full rule set for `services` into `node`.
    pub fn load(
        self,
        node: &NetNs,
        services: &[KubeProxyService],
        scratch: &Path,
    ) -> Result<Duration> {
        match self {
            RuleSet::Iptables => apply(
                node,
                IPTABLES_RESTORE,
                &[],
                &iptables::full(services),
                scratch,
                LOAD_TIMEOUT,
            ),
            RuleSet::Nftables => apply(
                node,
                NFT,
                &["-f"],
                &nftables::full(services),
                scratch,
                LOAD_TIMEOUT,
            ),
        }
    }

    /// Applies one Service's endpoint change the way the proxy's partial
    /// sync would.
    pub fn change(
        self,
        node: &NetNs,
        services: &[KubeProxyService],
        before: &KubeProxyService,
        after: &KubeProxyService,
        scratch: &Path,
    ) -> Result<Duration> {
        match self {
            RuleSet::Iptables => apply(
                node,
                IPTABLES_RESTORE,
                &["--noflush"],
                &iptables::endpoint_change(services, before, after),
                scratch,
                CHANGE_TIMEOUT,
            ),
            RuleSet::Nftables => apply(
                node,
                NFT,
                &["-f"],
                &nftables::endpoint_change(before, after),
                scratch,
                CHANGE_TIMEOUT,
            ),
        }
    }
}

/// Empties the node's whole netfilter configuration: the iptables-nft
/// tables are nf_tables tables too. The namespace is the bench's own.
pub fn clear(node: &NetNs) -> Result<()> {
    node.exec(NFT, &["flush", "ruleset"])?;
    Ok(())
}

/// The versions the report names.
pub fn versions() -> String {
    let version = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map_or_else(
                || format!("{program}: not found"),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            )
    };
    format!(
        "{}; {}",
        version(IPTABLES_RESTORE, "--version"),
        version(NFT, "--version")
    )
}

/// Writes `rules` to a file and has `program ARGS FILE` load it inside
/// `node`, timing only the tool's run, which may take at most `timeout`:
/// past that the baseline is reported as not finishing.
fn apply(
    node: &NetNs,
    program: &str,
    args: &[&str],
    rules: &str,
    scratch: &Path,
    timeout: Duration,
) -> Result<Duration> {
    let file = scratch.join(format!("{program}.rules"));
    std::fs::write(&file, rules)?;
    let mut cmd = Command::new(program);
    cmd.args(args).arg(&file);
    let started = Instant::now();
    let output = run_bounded(&mut cmd, node, None, timeout)
        .with_context(|| format!("{program} (cargo xtask setup installs it)"))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "{program} {} rejected {}: {}",
            args.join(" "),
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(took)
}
