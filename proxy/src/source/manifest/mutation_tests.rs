//! Bounded mutation runs over manifest parsing and conversion, from the
//! fuzz seeds (`fuzz/seeds/manifest`), through the invariants the fuzz
//! target checks: whatever bytes a file holds, nothing panics and every
//! problem is one line naming its document, or its object and field.
//! Deterministic (a fixed seed), so a failure replays; `SY_MUTATIONS` runs
//! longer. Every seed and every input the fuzzer ever broke the code with
//! (`fuzz/regressions/manifest`) is replayed as it is, too.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
};

use super::invariants::{Met, check_manifest};

const SEEDS: &[&str] = &[
    include_str!("../../../../fuzz/seeds/manifest/load_balancer.yaml"),
    include_str!("../../../../fuzz/seeds/manifest/endpoint_slice.yaml"),
    include_str!("../../../../fuzz/seeds/manifest/list.yaml"),
    include_str!("../../../../fuzz/seeds/manifest/node_and_cidr.yaml"),
];

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

/// Bytes YAML gives meaning to, and ones that make numbers and IPs odd.
const INTERESTING: &[u8] = b"-:{}[],'\"\n #&*!|>%@`0123456789.x:/";

fn mutate(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if !bytes.is_empty() => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
            _ => {
                // A line of another seed spliced in.
                let other = SEEDS[rng.below(SEEDS.len())];
                let line = other
                    .lines()
                    .nth(rng.below(other.lines().count()))
                    .unwrap_or("");
                bytes.splice(at..at, format!("{line}\n").into_bytes());
            }
        }
    }
    bytes
}

/// [`check_manifest`], with the input in the failure.
fn checked(what: &str, bytes: &[u8]) -> Met {
    catch_unwind(AssertUnwindSafe(|| check_manifest(bytes))).unwrap_or_else(|_| {
        panic!(
            "{what} broke an invariant:\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

#[test]
fn mutated_manifests_never_panic_and_every_error_is_one_named_line() {
    let runs: usize = std::env::var("SY_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_500);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut total = Met::default();
    let seed = SEEDS.join("---\n");
    for run in 0..runs {
        let met = checked(&format!("run {run}"), &mutate(&mut rng, &seed));
        total.objects += met.objects;
        total.document_errors += met.document_errors;
        total.field_errors += met.field_errors;
    }
    assert!(
        total.objects > runs && total.document_errors > runs / 20 && total.field_errors > runs / 20,
        "{total:?} in {runs} runs"
    );
}

#[test]
fn every_seed_and_regression_of_the_fuzzer_replays_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["seeds/manifest", "regressions/manifest"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            checked(&path.display().to_string(), &std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= SEEDS.len(), "only {replayed} inputs replayed");
}
