//! `cargo xtask vm --readme`: the README's kernel table is this run's, not
//! a hand copy. The kernel and feature tables go between the README's
//! markers; the whole report, with every test on every kernel, goes to
//! `docs/kernel-matrix.md`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::results::{self, Run};
use crate::cargo;

const BEGIN: &str =
    "<!-- kernel-table: written by `cargo xtask vm --readme`; change the code, not this -->";
const END: &str = "<!-- /kernel-table -->";
const MATRIX: &str = "docs/kernel-matrix.md";

pub fn write(runs: &[Run], command: &str) -> Result<()> {
    let commit = Command::new("git")
        .current_dir(cargo::root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
    let provenance = format!("From `{command}` at commit {commit}.");
    let readme = cargo::root().join("README.md");
    let text = std::fs::read_to_string(&readme).context("reading README.md")?;
    let tables = format!(
        "{provenance} Every test on every kernel: [{MATRIX}]({MATRIX}).\n\n{}",
        results::kernels_and_features(runs)
    );
    std::fs::write(&readme, splice(&text, &tables)?)?;
    let matrix = format!(
        "# Every integration test on every kernel\n\n{provenance}\n\n{}",
        results::markdown(runs)
    );
    std::fs::write(cargo::root().join(MATRIX), matrix)?;
    println!("vm: wrote the kernel table into README.md and {MATRIX}");
    Ok(())
}

/// `text` with what lies between the markers replaced by `inner`.
fn splice(text: &str, inner: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md has no kernel-table markers ({BEGIN} ... {END})");
    };
    if end < begin {
        bail!("README.md's kernel-table markers are out of order");
    }
    Ok(format!(
        "{}{BEGIN}\n\n{}\n{}",
        &text[..begin],
        inner.trim_end(),
        &text[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_what_lies_between_the_markers() {
        let text = format!("intro\n{BEGIN}\nold table\n{END}\noutro\n");
        let spliced = splice(&text, "| new |\n").unwrap();
        assert_eq!(
            spliced,
            format!("intro\n{BEGIN}\n\n| new |\n{END}\noutro\n")
        );
        assert_eq!(
            splice(&spliced, "| new |\n").unwrap(),
            spliced,
            "idempotent"
        );
        assert!(splice("no markers", "x").is_err());
    }

    #[test]
    fn the_readme_has_the_markers() {
        let readme = std::fs::read_to_string(cargo::root().join("README.md")).unwrap();
        assert!(splice(&readme, "x").is_ok());
    }
}
