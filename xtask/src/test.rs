//! `cargo xtask test`: unit tests of every default member, then the
//! integration tests in network namespaces, one at a time (they share the
//! machine's netns and cgroup namespaces, and the 2 cores).

use anyhow::Result;

use crate::{cargo, lint, setup, vm};

pub fn run(no_vm: bool) -> Result<()> {
    setup::run()?;
    cargo::build(false)?;
    lint::run()?;
    // Everything that needs no root: the agent's unit tests and its
    // deploy/ checks, the ABI, the harness library.
    cargo::run(&mut cargo::command(&[
        "test",
        "-p",
        "switchyard",
        "-p",
        "switchyard-abi",
        "-p",
        "xtask",
        "-p",
        "switchyard-bench",
    ]))?;
    cargo::run(&mut cargo::command(&[
        "test",
        "-p",
        "switchyard-tests",
        "--lib",
        "--bins",
    ]))?;
    let agent = cargo::agent_binary();
    let mut integration = cargo::command(&[
        "test",
        "-p",
        "switchyard-tests",
        "--test",
        "*",
        "--",
        "--test-threads=1",
    ]);
    integration.env("SWITCHYARD_BIN", &agent);
    cargo::run(&mut integration)?;
    // The oldest kernel of the matrix, where the verifier is strictest and
    // there is no tcx; it fits in CI's 90 minutes (see the README).
    if no_vm {
        println!("test: VM run skipped (--no-vm)");
        return Ok(());
    }
    vm::run(&vm::VmArgs::oldest_kernel())
}
