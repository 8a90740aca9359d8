//! `switchyard explain`'s words: the steps in order, then the verdict.

use std::fmt::Write as _;

use super::{Explanation, Verdict};

pub fn text(explanation: &Explanation) -> String {
    let mut text = String::new();
    for (number, step) in explanation.steps.iter().enumerate() {
        let _infallible = writeln!(text, "{}. {}: {}", number + 1, step.check, step.found);
    }
    let _infallible = match &explanation.verdict {
        Verdict::Passed { why } => writeln!(text, "=> passed: {why}"),
        Verdict::Refused { how, why } => writeln!(text, "=> refused ({why}): {how}"),
        Verdict::Dropped { how, why } => writeln!(text, "=> dropped ({why}): {how}"),
        Verdict::Translated { candidates, chosen } => {
            match chosen {
                Some(chosen) => {
                    let _ = write!(
                        text,
                        "=> translated to {} ({})",
                        chosen.address, chosen.because
                    );
                    if let Some(snat) = chosen.snat {
                        let _ = write!(text, ", source NATed to {snat}");
                    }
                    let _ = writeln!(text);
                }
                None => {
                    let _ = writeln!(
                        text,
                        "=> translated to one of {} backend(s):",
                        candidates.len()
                    );
                }
            }
            for candidate in candidates {
                let address = candidate.address.map_or_else(
                    || format!("missing backend {}", candidate.backend_id),
                    |a| a.to_string(),
                );
                let mut notes = Vec::new();
                if candidate.local {
                    notes.push("on this node");
                }
                if candidate.snat {
                    notes.push("source NATed");
                }
                let notes = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                };
                let _ = writeln!(text, "   slot {}: {address}{notes}", candidate.slot);
            }
            Ok(())
        }
    };
    text
}
