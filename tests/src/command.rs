//! Running short-lived host tools (`ip`, `mount`...) with their failure turned
//! into an error that names the command and carries its stderr.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to completion; fails unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = output(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`run`] but returns the whole output; still fails on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let shown = describe(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// `ip ARGS...`, the one tool every topology step goes through.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The command line as a person would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut shown = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}
