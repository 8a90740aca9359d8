//! `cargo xtask demo`: builds the agent and the harness binaries, then runs
//! the demo (which needs root for its namespaces).

use anyhow::Result;

use crate::{cargo, setup};

pub fn run() -> Result<()> {
    setup::run()?;
    cargo::build(false)?;
    // `cargo run --bin demo` alone would not build netprobe, which the demo
    // starts in every pod.
    cargo::run(&mut cargo::command(&[
        "build",
        "-p",
        "switchyard-tests",
        "--bins",
    ]))?;
    let mut demo = cargo::command(&["run", "-q", "-p", "switchyard-tests", "--bin", "demo"]);
    demo.env("SWITCHYARD_BIN", cargo::agent_binary());
    cargo::run(&mut demo)
}
