//! `cargo xtask lint`: formatting and clippy, as CI would judge them.

use anyhow::Result;

use crate::cargo;

pub fn run() -> Result<()> {
    cargo::run(&mut cargo::command(&["fmt", "--all", "--check"]))?;
    // No `--workspace`: that would add the BPF crate, which only builds for
    // the bpfel target; the default members are what the host builds.
    cargo::run(&mut cargo::command(&[
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
