//! `cargo xtask test`: unit tests of every default member, then the
//! integration tests in network namespaces, one at a time (they share the
//! machine's netns and cgroup namespaces, and the 2 cores).

use anyhow::Result;

use crate::{cargo, lint, setup, vm};

pub fn run(no_vm: bool, only: &[String]) -> Result<()> {
    setup::run()?;
    cargo::build(false)?;
    if !only.is_empty() {
        return integration(only);
    }
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
    integration(&["*".to_owned()])?;
    // The oldest kernel of the matrix, where the verifier is strictest and
    // there is no tcx; it fits in CI's 90 minutes (see the README).
    if no_vm {
        println!("test: VM run skipped (--no-vm)");
        return Ok(());
    }
    vm::run(&vm::VmArgs::oldest_kernel())
}

/// The integration tests named (`*` for all), one at a time, against the
/// agent just built.
fn integration(names: &[String]) -> Result<()> {
    let mut args = vec!["test", "-p", "switchyard-tests"];
    for name in names {
        args.extend(["--test", name.as_str()]);
    }
    args.extend(["--", "--test-threads=1"]);
    let mut command = cargo::command(&args);
    command.env("SWITCHYARD_BIN", cargo::agent_binary());
    command.env(
        "SWITCHYARD_PROMETHEUS",
        setup::prometheus_dir().join("usr/bin"),
    );
    cargo::run(&mut command)
}
