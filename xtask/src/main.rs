//! `cargo xtask`: the one entry point for developers and CI.

mod bench;
mod cargo;
mod demo;
mod fuzz;
mod layering;
mod lint;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Switchyard developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (rust-src, bpf-linker, iproute2).
    Setup,
    /// Setup, then build the default workspace members.
    Build {
        /// Also build the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, unit tests, the namespace integration tests, then the
    /// same tests in a VM on Linux 5.10, the oldest kernel of the matrix (root).
    Test {
        /// Skip the VM run (about half an hour under TCG).
        #[arg(long)]
        no_vm: bool,
        /// Only these integration tests (`tests/tests/NAME.rs`), after the
        /// build: no lint, unit tests or VM run.
        #[arg(long = "test", value_name = "NAME")]
        tests: Vec<String>,
    },
    /// Setup, build, then run the demo in network namespaces (root).
    Demo,
    /// rustfmt check, clippy with warnings denied, the layering check.
    Lint,
    /// Release build, then the benchmark (root; never run by CI).
    Bench {
        /// Also 30k and 50k Services.
        #[arg(long)]
        full: bool,
        /// Passed to the bench runner (see `switchyard-bench --help`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// The integration tests inside QEMU VMs on Debian's kernels (root).
    Vm(vm::VmArgs),
    /// Long fuzz runs: coverage-guided over manifests (installs
    /// cargo-fuzz), seeded mutations, random packets through the tc
    /// programs (root).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            cargo::build(release)
        }
        Task::Test { no_vm, tests } => test::run(no_vm, &tests),
        Task::Demo => demo::run(),
        Task::Lint => lint::run(),
        Task::Bench { full, extra } => bench::run(full, &extra),
        Task::Vm(args) => vm::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
