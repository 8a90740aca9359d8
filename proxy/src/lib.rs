//! Switchyard agent: a pure core (manifests -> service model -> desired
//! datapath state -> ordered map operations) and thin edges (file watcher,
//! BPF loader and map writer, command line).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod convert;
pub mod datapath;
pub mod model;
pub mod node;
pub mod plan;
pub mod runner;
pub mod serve;
pub mod source;
pub mod sync;
