//! `cargo xtask bench [--full]`: setup (plus iptables and nftables), a
//! release build of the agent and the bench, then the bench itself as root.
//! CI never runs this: it takes minutes and measures the machine.

use std::process::Command;

use anyhow::Result;

use crate::{cargo, setup};

/// Tools only the benchmark needs, and their Debian packages.
const BENCH_TOOLS: &[(&str, &str)] = &[("iptables-nft-restore", "iptables"), ("nft", "nftables")];

pub fn run(full: bool, extra: &[String]) -> Result<()> {
    setup::run()?;
    setup::debian_packages(BENCH_TOOLS)?;
    cargo::run(&mut cargo::command(&[
        "build",
        "--release",
        "-p",
        "switchyard",
        "-p",
        "switchyard-bench",
    ]))?;
    let release = cargo::target_dir().join("release");
    let out = cargo::target_dir().join("bench");
    let mut bench = Command::new(release.join("switchyard-bench"));
    bench
        .arg("--agent")
        .arg(release.join("switchyard"))
        .arg("--loadgen")
        .arg(release.join("loadgen"))
        .arg("--out")
        .arg(&out);
    if full {
        bench.arg("--full");
    }
    bench.args(extra);
    cargo::run(&mut bench)
}
