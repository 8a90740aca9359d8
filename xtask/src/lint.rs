//! `cargo xtask lint`: formatting and clippy, as CI judges them, for the
//! host crates and for the kernel-side crate on its own target.

use anyhow::Result;

use crate::{cargo, layering, setup};

pub fn run() -> Result<()> {
    setup::toolchain()?;
    layering::run()?;
    // rustfmt.toml's import grouping is a nightly option; stable rustfmt
    // would ignore it with a warning and pass an ungrouped tree.
    let mut fmt = std::process::Command::new("rustup");
    fmt.current_dir(cargo::root())
        .args(["run", "nightly", "cargo", "fmt", "--all", "--check"]);
    cargo::run(&mut fmt)?;
    // No `--workspace`: that would add the BPF crate, which only builds for
    // the bpfel target; the default members are what the host builds.
    cargo::run(&mut cargo::command(&[
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The BPF crate needs nightly (build-std); `rustup run` picks it even
    // though cargo xtask itself runs on stable.
    let mut ebpf = std::process::Command::new("rustup");
    ebpf.current_dir(cargo::root()).args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "switchyard-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Zbuild-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    cargo::run(&mut ebpf)
}
