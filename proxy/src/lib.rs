//! Switchyard agent, by layer (docs/design.md says what each may import;
//! `cargo xtask lint` checks it):
//!
//! - pure core, no I/O: [`model`] (what is served), [`convert`]
//!   (Kubernetes objects -> desired state), [`plan`] (desired x programmed
//!   -> ordered map operations);
//! - edges: [`source`] (manifests folder, API reflectors), [`datapath`]
//!   (BPF programs and maps), [`node`] (devices, the per-packet path),
//!   [`serve`] (HTTP endpoints, metrics), [`cli`] (flags and views);
//! - wiring: [`agent`] (`switchyard run`), [`runner`] (when to sync),
//!   [`sync`] (one pass, applied through the datapath).
// Two audited exceptions: `datapath::bpf_syscall` makes the bpf(2) calls
// aya 0.14 has no API for, and `node::netns_source` the one getsockopt std
// and nix do not name. Nothing else may use `unsafe`.
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod convert;
pub mod datapath;
pub mod explain;
pub mod model;
pub mod node;
pub mod plan;
pub mod runner;
pub mod serve;
pub mod source;
pub mod sync;
