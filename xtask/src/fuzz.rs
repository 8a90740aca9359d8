//! `cargo xtask fuzz`: the long runs of what `cargo xtask test` runs
//! bounded. Each target gets `--seconds`:
//!
//! - `manifest`: coverage-guided fuzzing (cargo-fuzz, libFuzzer) of
//!   manifest parsing and conversion (`fuzz/fuzz_targets/manifest.rs`),
//!   from `fuzz/seeds/manifest`, its corpus kept in `fuzz/corpus` between
//!   runs. An input that breaks an invariant is left in `fuzz/artifacts`;
//!   once fixed it belongs in `fuzz/regressions/manifest`, which
//!   `cargo xtask test` replays.
//! - `mutations`: the seeded mutation run of `cargo xtask test`, longer.
//! - `packets`: randomized packets through the tc programs
//!   (`tests/tests/packet_fuzz.rs`, root), a fresh seed each run (printed
//!   as `SY_FUZZ_SEED` to repeat it).

use std::process::Command;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::{cargo, setup};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// What each target does per second here, to size its run.
const MUTATIONS_PER_SECOND: u64 = 2_000;
const FRAMES_PER_SECOND: u64 = 50_000;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    #[arg(long = "target", value_enum)]
    targets: Vec<Target>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Manifest,
    Mutations,
    Packets,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    setup::run()?;
    let targets = if args.targets.is_empty() {
        vec![Target::Manifest, Target::Mutations, Target::Packets]
    } else {
        args.targets.clone()
    };
    for target in targets {
        match target {
            Target::Manifest => manifest(args.seconds)?,
            Target::Mutations => cargo::run(
                cargo::command(&["test", "-p", "switchyard", "--lib", "mutation"]).env(
                    "SY_MUTATIONS",
                    (args.seconds * MUTATIONS_PER_SECOND).to_string(),
                ),
            )?,
            Target::Packets => cargo::run(
                cargo::command(&[
                    "test",
                    "-p",
                    "switchyard-tests",
                    "--test",
                    "packet_fuzz",
                    "--",
                    "--nocapture",
                ])
                .env(
                    "SY_PACKET_FUZZ",
                    (args.seconds * FRAMES_PER_SECOND).to_string(),
                ),
            )?,
        }
    }
    Ok(())
}

/// libFuzzer over the manifest target, without a sanitizer (safe Rust: the
/// invariants are what is checked), for `seconds`.
fn manifest(seconds: u64) -> Result<()> {
    setup::cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, &["fuzz", "--version"])?;
    let root = cargo::root();
    std::fs::create_dir_all(root.join("fuzz/corpus/manifest"))?;
    cargo::run(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run"])
            .args(["--fuzz-dir", "fuzz", "--sanitizer", "none", "manifest"])
            .args(["fuzz/corpus/manifest", "fuzz/seeds/manifest"])
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-timeout=10")
            .current_dir(&root),
    )
}
