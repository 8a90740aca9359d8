//! Running cargo itself from the xtask, always at the workspace root so that
//! a plain `cargo build` selects the default members (the BPF crate only
//! builds for its own target, through the agent's build script).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask/..).
pub fn root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().expect("xtask/ has a parent").to_owned()
}

/// Where cargo puts build output.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The built agent of the debug profile.
pub fn agent_binary() -> PathBuf {
    target_dir().join("debug/switchyard")
}

/// `cargo ARGS...` at the workspace root.
pub fn command(args: &[&str]) -> Command {
    // `cargo xtask` runs us through cargo, which tells us which one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    cmd
}

/// Runs a command, echoing it; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Builds the default members (debug; and release if asked).
pub fn build(release: bool) -> Result<()> {
    run(&mut command(&["build"]))?;
    if release {
        run(&mut command(&["build", "--release"]))?;
    }
    Ok(())
}
