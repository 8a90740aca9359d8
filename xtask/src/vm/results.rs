//! What a run printed, read back: libtest's `test NAME ... ok` lines per
//! test binary, between the markers `/init` prints, into a per-test outcome;
//! and the report across kernels, as text and as a Markdown table.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

pub const BEGIN: &str = "SY-VM-BEGIN";
pub const SUITE: &str = "SY-VM-SUITE";
pub const EXIT: &str = "SY-VM-EXIT";
pub const END: &str = "SY-VM-END";
/// The verifier test's feature probe, as one line of JSON.
pub const FEATURES: &str = "SY-VM-FEATURES";
/// A test checking the fallback for a feature the kernel lacks:
/// `SY-VM-FALLBACK <test> <feature>` (the tests' `kernel::lacks`).
pub const FALLBACK: &str = "SY-VM-FALLBACK";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Ignored,
}

impl Outcome {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "ok" {
            Some(Self::Passed)
        } else if text == "FAILED" {
            Some(Self::Failed)
        } else if text.starts_with("ignored") {
            Some(Self::Ignored)
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
pub struct Suite {
    pub tests: BTreeMap<String, Outcome>,
    pub exit: Option<i32>,
}

/// One kernel's run.
#[derive(Debug, Default)]
pub struct Run {
    /// The matrix name (`6.1`, `6.12`, `host`).
    pub kernel: String,
    /// `uname -r` as the run saw it.
    pub release: String,
    /// The Debian package and version, for VM runs.
    pub package: String,
    pub suites: BTreeMap<String, Suite>,
    /// Per `(suite, test)`, the features it found missing and checked the
    /// fallback of.
    pub fallbacks: BTreeMap<(String, String), BTreeSet<String>>,
    /// `KernelFeatures` as the agent probed them (JSON).
    pub features: Option<serde_json::Value>,
    /// Reached the end marker (else the VM died or timed out).
    pub complete: bool,
    pub duration: Duration,
    pub error: Option<String>,
    current: Option<String>,
    pending: Option<String>,
}

impl Run {
    pub fn new(kernel: &str) -> Self {
        Self {
            kernel: kernel.to_owned(),
            ..Self::default()
        }
    }

    /// Takes one line of console (or host) output.
    pub fn line(&mut self, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
        // Written by a running test, so it can land mid-line, after libtest's
        // `test NAME ... `: the part before it is read on its own.
        if let Some(at) = line.find(FALLBACK) {
            let (before, fallback) = line.split_at(at);
            if !before.trim().is_empty() {
                self.line(before);
            }
            self.fallback(&fallback[FALLBACK.len()..]);
            return;
        }
        if let Some(rest) = marker(line, BEGIN) {
            rest.clone_into(&mut self.release);
        } else if let Some(name) = marker(line, SUITE) {
            self.suites.entry(name.to_owned()).or_default();
            self.current = Some(name.to_owned());
            self.pending = None;
        } else if let Some(rest) = marker(line, EXIT) {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(code)) = (words.next(), words.next()) {
                self.suites.entry(name.to_owned()).or_default().exit = code.parse().ok();
            }
            self.current = None;
        } else if let Some(json) = marker(line, FEATURES) {
            self.features = serde_json::from_str(json).ok();
        } else if marker(line, END).is_some() {
            self.complete = true;
        } else {
            self.test_line(line);
        }
    }

    fn fallback(&mut self, rest: &str) {
        let mut words = rest.split_whitespace();
        if let (Some(suite), Some(test), Some(feature)) =
            (self.current.clone(), words.next(), words.next())
        {
            self.fallbacks
                .entry((suite, test.to_owned()))
                .or_default()
                .insert(feature.to_owned());
        }
    }

    /// `test NAME ... ok`; the outcome can land on a later line when a
    /// child process of the test writes to the shared console meanwhile.
    fn test_line(&mut self, line: &str) {
        let Some(suite) = self.current.clone() else {
            return;
        };
        if let Some((name, rest)) = line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
        {
            match Outcome::parse(rest) {
                Some(outcome) => self.record(&suite, name, outcome),
                None => self.pending = Some(name.to_owned()),
            }
            return;
        }
        if let Some(name) = self.pending.clone() {
            let last = line.split_whitespace().last().unwrap_or_default();
            if let Some(outcome) = Outcome::parse(last) {
                self.record(&suite, &name, outcome);
            }
        }
    }

    fn record(&mut self, suite: &str, test: &str, outcome: Outcome) {
        self.pending = None;
        let entry = self.suites.entry(suite.to_owned()).or_default();
        entry.tests.insert(test.to_owned(), outcome);
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.suites
            .values()
            .flat_map(|s| s.tests.values())
            .filter(|o| **o == outcome)
            .count()
    }

    /// Passed: complete, every binary exited 0, nothing failed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.complete
            && self.count(Outcome::Failed) == 0
            && self.suites.values().all(|s| s.exit == Some(0))
    }

    pub fn summary(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let mut text = format!(
            "{verdict} {} ({}): {} passed, {} failed, {} ignored in {:.0?}",
            self.kernel,
            self.release,
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Ignored),
            self.duration,
        );
        if !self.complete {
            text.push_str(", did not finish");
        }
        if let Some(error) = &self.error {
            let _ = write!(text, ": {error}");
        }
        for (name, suite) in &self.suites {
            if suite.exit != Some(0) {
                let _ = write!(text, "\n  {name}: exit {:?}", suite.exit);
            }
        }
        text
    }
}

fn marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    // The console may prefix kernel messages on the same line; the marker
    // is found wherever it starts.
    let at = line.find(marker)?;
    Some(line[at + marker.len()..].trim())
}

/// The whole report: the kernels, the features, and per test one column
/// per kernel.
pub fn markdown(runs: &[Run]) -> String {
    let mut out = kernels_and_features(runs);
    tests(&mut out, runs);
    out
}

/// One line per kernel run, then one per feature with a column per kernel:
/// what the README's kernel table is made of.
pub fn kernels_and_features(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| kernel | release | package | result | time |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for run in runs {
        let verdict = if run.passed() { "pass" } else { "FAIL" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {verdict}: {} passed, {} failed, {} ignored | {:.0?} |",
            run.kernel,
            run.release,
            if run.package.is_empty() {
                "(host)"
            } else {
                &run.package
            },
            run.count(Outcome::Passed),
            run.count(Outcome::Failed),
            run.count(Outcome::Ignored),
            run.duration,
        );
    }
    features(&mut out, runs);
    out
}

fn tests(out: &mut String, runs: &[Run]) {
    let tests: BTreeSet<(String, String)> = runs
        .iter()
        .flat_map(|r| r.suites.iter())
        .flat_map(|(suite, s)| s.tests.keys().map(|t| (suite.clone(), t.clone())))
        .collect();
    let _ = writeln!(out);
    let header: Vec<&str> = runs.iter().map(|r| r.kernel.as_str()).collect();
    let _ = writeln!(out, "| test | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(runs.len()));
    for (suite, test) in tests {
        let cells: Vec<String> = runs
            .iter()
            .map(|run| {
                let outcome = match run.suites.get(&suite).and_then(|s| s.tests.get(&test)) {
                    Some(Outcome::Passed) => "pass",
                    Some(Outcome::Failed) => "**FAIL**",
                    Some(Outcome::Ignored) => "ignored",
                    None => "not run",
                };
                match run.fallbacks.get(&(suite.clone(), test.clone())) {
                    Some(missing) => format!(
                        "{outcome} (without {})",
                        missing
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => outcome.to_owned(),
                }
            })
            .collect();
        let _ = writeln!(out, "| `{suite}::{test}` | {} |", cells.join(" | "));
    }
}

/// Per feature, one column per kernel, from the probe each run reported.
fn features(out: &mut String, runs: &[Run]) {
    let Some(first) = runs.iter().find_map(|r| r.features.as_ref()) else {
        return;
    };
    let names: Vec<&str> = runs.iter().map(|r| r.kernel.as_str()).collect();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| feature | since | used for | without it | {} |",
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|---|---|---|{}", "---|".repeat(runs.len()));
    for feature in first["features"].as_array().into_iter().flatten() {
        let name = feature["feature"].as_str().unwrap_or_default();
        let cells: Vec<String> = runs
            .iter()
            .map(|run| {
                let status = run.features.as_ref().and_then(|f| {
                    f["features"]
                        .as_array()?
                        .iter()
                        .find(|s| s["feature"] == name)
                        .cloned()
                });
                match status {
                    None => "?".to_owned(),
                    Some(s) => match s["availability"].as_str() {
                        Some("available") => "yes".to_owned(),
                        Some("missing") => "**no**".to_owned(),
                        Some("not_probed") => "unused".to_owned(),
                        _ => format!("unknown ({})", s["availability"]),
                    },
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} | {} |",
            feature["since"].as_str().unwrap_or_default(),
            feature["used_for"].as_str().unwrap_or_default(),
            feature["without_it"].as_str().unwrap_or_default(),
            cells.join(" | ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(lines: &[&str]) -> Run {
        let mut run = Run::new("6.1");
        for line in lines {
            run.line(line);
        }
        run
    }

    #[test]
    fn reads_outcomes_between_markers() {
        let run = run_of(&[
            "[    1.0] random kernel line",
            "SY-VM-BEGIN 6.1.0-50-cloud-amd64\r",
            "SY-VM-SUITE harness",
            "test a ... ok",
            "test b ... 2026-01-01 INFO agent says hi",
            "FAILED",
            "test c ... ignored, needs a cluster",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored",
            "SY-VM-EXIT harness 101",
            "SY-VM-END",
        ]);
        assert_eq!(run.release, "6.1.0-50-cloud-amd64");
        let suite = &run.suites["harness"];
        assert_eq!(suite.tests["a"], Outcome::Passed);
        assert_eq!(suite.tests["b"], Outcome::Failed);
        assert_eq!(suite.tests["c"], Outcome::Ignored);
        assert_eq!(suite.exit, Some(101));
        assert!(run.complete);
        assert!(!run.passed());
    }

    #[test]
    fn a_test_checking_a_fallback_says_which() {
        let run = run_of(&[
            "SY-VM-SUITE node_port",
            "test ranges ... SY-VM-FALLBACK ranges so_netns_cookie",
            "ok",
            "test other ... ok",
            "SY-VM-EXIT node_port 0",
            "SY-VM-END",
        ]);
        assert!(run.passed());
        assert_eq!(run.suites["node_port"].tests["ranges"], Outcome::Passed);
        let table = markdown(&[run]);
        assert!(
            table.contains("| `node_port::ranges` | pass (without so_netns_cookie) |"),
            "{table}"
        );
        assert!(table.contains("| `node_port::other` | pass |"), "{table}");
    }

    #[test]
    fn an_unfinished_run_does_not_pass() {
        let run = run_of(&["SY-VM-SUITE x", "test a ... ok", "SY-VM-EXIT x 0"]);
        assert!(!run.passed());
        let done = run_of(&[
            "SY-VM-SUITE x",
            "test a ... ok",
            "SY-VM-EXIT x 0",
            "SY-VM-END",
        ]);
        assert!(done.passed());
    }

    #[test]
    fn table_has_a_column_per_kernel() {
        let mut one = run_of(&[
            "SY-VM-SUITE s",
            "test a ... ok",
            "SY-VM-EXIT s 0",
            "SY-VM-END",
        ]);
        one.kernel = "6.1".into();
        let mut two = run_of(&["SY-VM-SUITE s", "test a ... FAILED", "SY-VM-EXIT s 101"]);
        two.kernel = "host".into();
        one.line(r#"SY-VM-FEATURES {"release":"6.1.0","features":[{"feature":"tcx","availability":"missing","since":"6.6","used_for":"links","without_it":"clsact","degraded":"clsact"}]}"#);
        let table = markdown(&[one, two]);
        assert!(table.contains("| `s::a` | pass | **FAIL** |"), "{table}");
        assert!(
            table.contains("| `tcx` | 6.6 | links | clsact | **no** | ? |"),
            "{table}"
        );
    }
}
