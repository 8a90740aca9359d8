//! Coverage-guided fuzzing of manifest parsing and conversion: any bytes as
//! a manifests file, through the same invariants the bounded run of
//! `cargo xtask test` checks (`switchyard::source::manifest::invariants`).
//! Run by `cargo xtask fuzz`.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    switchyard::source::manifest::invariants::check_manifest(bytes);
});
