//! The agent's layering, checked: the pure core (`model`, `convert`, `plan`)
//! never imports an edge (`source`, `datapath`, `node`, `serve`, `cli`) or
//! the wiring at the top (`agent`, `runner`, `sync`), so it stays testable
//! without a kernel, a cluster or a file system. docs/design.md explains the
//! layers; this is what keeps the text true.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::cargo;

/// Each core layer and the layers it may import (itself included).
const CORE: &[(&str, &[&str])] = &[
    ("model", &["model"]),
    ("convert", &["model", "convert"]),
    ("plan", &["model", "plan"]),
];

/// One import that breaks the layering.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub imported: String,
}

pub fn run() -> Result<()> {
    let src = cargo::root().join("proxy/src");
    let violations = check(&src)?;
    if violations.is_empty() {
        println!("layering: the core (model, convert, plan) imports no edge");
        return Ok(());
    }
    for violation in &violations {
        eprintln!(
            "layering: {}:{} imports crate::{}, which its layer may not use (docs/design.md)",
            violation.file.display(),
            violation.line,
            violation.imported
        );
    }
    bail!("{} layering violation(s)", violations.len())
}

/// Every violation under `src`, the agent's source folder.
pub fn check(src: &Path) -> Result<Vec<Violation>> {
    let mut violations = Vec::new();
    for &(layer, allowed) in CORE {
        for file in rust_files(&src.join(layer))? {
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for (line, imported) in crate_imports(&text) {
                if !allowed.contains(&imported.as_str()) {
                    violations.push(Violation {
                        file: file.strip_prefix(src).unwrap_or(&file).to_owned(),
                        line,
                        imported,
                    });
                }
            }
        }
    }
    Ok(violations)
}

fn rust_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.insert(path);
        }
    }
    Ok(files)
}

/// The top-level modules a file names through `crate::`, with the line each
/// is on: `crate::a::b`, and every entry of `crate::{a::x, b, c::{..}}`.
/// Comments are skipped, so prose about a module is not an import.
pub fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(at) = code[rest..].find("crate::") {
        let start = rest + at + "crate::".len();
        rest = start;
        if code[start..].starts_with('{') {
            for (offset, name) in group_heads(&code[start + 1..]) {
                found.push((line_of(start + 1 + offset), name));
            }
        } else {
            let name: String = code[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((line_of(start), name));
            }
        }
    }
    found
}

/// The first path segment of each top-level entry of a `{...}` group whose
/// opening brace has been consumed, with its offset.
fn group_heads(group: &str) -> Vec<(usize, String)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expecting = true;
    for (offset, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                let name: String = group[offset..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                heads.push((offset, name));
                expecting = false;
            }
            _ => {}
        }
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        crate_imports(text)
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    #[test]
    fn reads_paths_groups_and_nested_groups() {
        let text = "use crate::model::Frontend;\n\
                    use crate::{\n    datapath::{MapWriter, fake},\n    plan::map_op::MapOp,\n    self,\n};\n\
                    fn f() { crate::serve::metrics::touch(); }\n";
        assert_eq!(names(text), ["model", "datapath", "plan", "self", "serve"]);
    }

    #[test]
    fn reports_the_line_and_skips_comments() {
        let text = "//! crate::datapath is described here\n\n// crate::cli too\nuse crate::cli::Args; // crate::node\n";
        assert_eq!(crate_imports(text), [(4, "cli".to_owned())]);
    }

    #[test]
    fn a_core_file_importing_an_edge_is_a_violation() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("layering-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("plan"))?;
        fs::create_dir_all(dir.join("model"))?;
        fs::create_dir_all(dir.join("convert"))?;
        fs::write(
            dir.join("model/mod.rs"),
            "use crate::model::address::Cidr;\n",
        )?;
        fs::write(
            dir.join("convert/mod.rs"),
            "use crate::{model::Protocol};\n",
        )?;
        fs::write(
            dir.join("plan/mod.rs"),
            "use crate::model::DesiredState;\nuse crate::datapath::MapWriter;\n",
        )?;
        let violations = check(&dir);
        fs::remove_dir_all(&dir)?;
        assert_eq!(
            violations?,
            [Violation {
                file: PathBuf::from("plan/mod.rs"),
                line: 2,
                imported: "datapath".to_owned(),
            }]
        );
        Ok(())
    }

    #[test]
    fn the_agent_keeps_its_layering() -> Result<()> {
        assert_eq!(check(&cargo::root().join("proxy/src"))?, []);
        Ok(())
    }
}
