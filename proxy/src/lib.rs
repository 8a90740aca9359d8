//! Switchyard agent: a pure core (manifests -> service model -> desired
//! datapath state -> ordered map operations) and thin edges (file watcher,
//! BPF loader and map writer, command line).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod services_view;
pub mod sync;
pub mod watcher;
