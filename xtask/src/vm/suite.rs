//! The binaries a run needs, built by cargo and found through its JSON
//! messages, and the same suite run on the host kernel for the report.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::results::{BEGIN, END, EXIT, FEATURES, Run, SUITE};
use crate::cargo;

pub struct Binaries {
    pub agent: PathBuf,
    pub netprobe: PathBuf,
    /// (name, executable) of each integration-test binary.
    pub tests: Vec<(String, PathBuf)>,
}

/// Builds the agent, netprobe and every integration-test binary (debug, as
/// `cargo xtask test` does).
pub fn build() -> Result<Binaries> {
    cargo::run(&mut cargo::command(&[
        "build",
        "-p",
        "switchyard",
        "-p",
        "switchyard-tests",
        "--bins",
    ]))?;
    let mut cmd = cargo::command(&[
        "test",
        "-p",
        "switchyard-tests",
        "--test",
        "*",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    cmd.stderr(Stdio::inherit());
    let out = cmd.output().context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    tests.sort();
    if tests.is_empty() {
        bail!("cargo reported no integration-test executables");
    }
    let debug = cargo::target_dir().join("debug");
    Ok(Binaries {
        agent: cargo::agent_binary(),
        netprobe: debug.join("netprobe"),
        tests,
    })
}

/// Runs every test binary on this machine's kernel, as the VM's `/init`
/// does, reading the output into `run`.
pub fn run_on_host(binaries: &Binaries, features: &Path, run: &mut Run) -> Result<()> {
    let started = Instant::now();
    let _ = std::fs::remove_file(features);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    run.line(&format!("{BEGIN} {}", release.trim()));
    for (name, exe) in &binaries.tests {
        run.line(&format!("{SUITE} {name}"));
        let code = run_one(binaries, exe, features, run)?;
        run.line(&format!("{EXIT} {name} {code}"));
    }
    if let Ok(json) = std::fs::read_to_string(features) {
        run.line(&format!("{FEATURES} {json}"));
    }
    run.line(END);
    run.duration = started.elapsed();
    Ok(())
}

fn run_one(binaries: &Binaries, exe: &Path, features: &Path, run: &mut Run) -> Result<i32> {
    // One stream, as on the VM console, so an outcome stays after its name.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --test-threads=1 2>&1")
        .arg(exe)
        .env("SWITCHYARD_BIN", &binaries.agent)
        .env("NETPROBE_BIN", &binaries.netprobe)
        .env("SWITCHYARD_FEATURES_OUT", features)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        if line.starts_with("test ") {
            println!("  [{}] {line}", run.kernel);
        }
        run.line(&line);
    }
    let status = child.wait()?;
    Ok(status.code().unwrap_or(-1))
}
