//! `cargo xtask vm`: the integration suite on other kernels. Each of
//! Debian's kernels in the matrix boots under QEMU with an initramfs holding
//! the agent, the test binaries and what they need; `host` runs the same
//! binaries on this machine's kernel. The result is a pass/fail per kernel
//! and per test, printed and written as Markdown to `target/vm-report.md`.

mod debian;
mod initramfs;
mod publish;
mod qemu;
mod results;
mod suite;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use results::Run;

use crate::{cargo, setup};

const TIMEOUT_MINUTES: u64 = 60;
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 2;

#[derive(Args)]
pub struct VmArgs {
    /// Which kernel(s): one of Debian's, this machine's, or all of them.
    #[arg(long, value_enum, default_value = "all")]
    kernel: KernelChoice,
    /// Minutes one VM may run before it is killed and counted as failed.
    #[arg(long, default_value_t = TIMEOUT_MINUTES)]
    timeout_minutes: u64,
    /// Memory of each VM (MiB): the initramfs lives in it.
    #[arg(long, default_value_t = MEMORY_MIB)]
    memory_mib: u32,
    /// Virtual CPUs of each VM.
    #[arg(long, default_value_t = CPUS)]
    cpus: u32,
    /// Only these integration-test binaries (e.g. `verifier`); all by default.
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Write this run's kernel and feature tables into the README and every
    /// test's result into docs/kernel-matrix.md (whole suite only).
    #[arg(long)]
    readme: bool,
}

impl VmArgs {
    /// `--kernel 5.10` with the defaults, as `cargo xtask test` runs it: the
    /// oldest kernel, where a regression shows first.
    pub fn oldest_kernel() -> Self {
        Self {
            kernel: KernelChoice::V5_10,
            timeout_minutes: TIMEOUT_MINUTES,
            memory_mib: MEMORY_MIB,
            cpus: CPUS,
            tests: Vec::new(),
            readme: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelChoice {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    Host,
    All,
}

impl KernelChoice {
    fn includes(self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::V5_10 => name == "5.10",
            Self::V6_1 => name == "6.1",
            Self::V6_12 => name == "6.12",
            Self::Host => name == "host",
        }
    }
}

/// Integration tests the VM images leave out, and why: each still runs on
/// the host in `cargo xtask test`.
const HOST_ONLY: [(&str, &str); 2] = [
    (
        "prometheus",
        "Debian's Prometheus (100 MB of binaries) is not in the VM image",
    ),
    (
        "migration",
        "kube-proxy's iptables rule sets need iptables and the x_tables modules, not in the VM image",
    ),
];

pub fn run(args: &VmArgs) -> Result<()> {
    if args.readme && !args.tests.is_empty() {
        bail!("--readme publishes a run of the whole suite: drop --test");
    }
    setup::run()?;
    let mut binaries = suite::build()?;
    for (test, why) in HOST_ONLY {
        if binaries.tests.iter().any(|(name, _)| name == test) {
            println!("vm: {test} runs on the host only: {why}");
        }
    }
    binaries
        .tests
        .retain(|(name, _)| HOST_ONLY.iter().all(|(test, _)| test != name));
    if !args.tests.is_empty() {
        binaries.tests.retain(|(name, _)| args.tests.contains(name));
        if binaries.tests.is_empty() {
            bail!(
                "no integration-test binary is named {}",
                args.tests.join(" or ")
            );
        }
    }
    let cache = cargo::target_dir().join("vm-cache");
    std::fs::create_dir_all(&cache)?;
    let mut runs = Vec::new();
    for source in debian::KERNELS
        .iter()
        .filter(|k| args.kernel.includes(k.name))
    {
        let mut run = Run::new(source.name);
        let started = Instant::now();
        if let Err(error) = run_vm(source, &binaries, &cache, args, &mut run) {
            run.error = Some(format!("{error:#}"));
        }
        run.duration = started.elapsed();
        println!("vm: {}", run.summary());
        runs.push(run);
    }
    if args.kernel.includes("host") {
        let mut run = Run::new("host");
        let features = cache.join("features-host.json");
        if let Err(error) = suite::run_on_host(&binaries, &features, &mut run) {
            run.error = Some(format!("{error:#}"));
        }
        println!("vm: {}", run.summary());
        runs.push(run);
    }
    let report = cargo::target_dir().join("vm-report.md");
    std::fs::write(&report, results::markdown(&runs))?;
    if args.readme {
        let kernel = args
            .kernel
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned());
        publish::write(&runs, &format!("cargo xtask vm --kernel {kernel} --readme"))?;
    }
    println!("\nvm: results per kernel (table in {}):", report.display());
    for run in &runs {
        println!("  {}", run.summary());
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the suite failed on {}", failed.join(", "));
    }
    Ok(())
}

fn run_vm(
    source: &debian::KernelSource,
    binaries: &suite::Binaries,
    cache: &std::path::Path,
    args: &VmArgs,
    run: &mut Run,
) -> Result<()> {
    let kernel = debian::kernel(source, cache)?;
    run.package = format!("{} {}", kernel.package, kernel.version);
    let image = cache.join(format!("initramfs-{}.cpio", source.name));
    initramfs::build(
        &initramfs::Contents {
            agent: &binaries.agent,
            netprobe: &binaries.netprobe,
            tests: &binaries.tests,
            modules: &kernel.modules,
        },
        &cache.join(format!("root-{}", source.name)),
        &image,
    )?;
    let log = cache.join(format!("console-{}.log", source.name));
    println!(
        "vm: booting {} under TCG (console in {})",
        run.package,
        log.display()
    );
    qemu::boot(
        &qemu::Boot {
            vmlinuz: &kernel.vmlinuz,
            initramfs: &image,
            log: &log,
            timeout: Duration::from_secs(args.timeout_minutes * 60),
            memory_mib: args.memory_mib,
            cpus: args.cpus,
        },
        run,
    )
}
