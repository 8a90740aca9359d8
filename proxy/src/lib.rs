//! Switchyard agent: a pure core (manifests -> service model -> desired
//! datapath state -> ordered map operations) and thin edges (file watcher,
//! BPF loader and map writer, command line).
#![forbid(unsafe_code)]

pub mod address;
pub mod admin_server;
pub mod agent;
pub mod change_set;
pub mod cli;
pub mod conntrack;
pub mod datapath;
pub mod datapath_state;
pub mod desired;
pub mod endpoints;
pub mod health;
pub mod input_error;
pub mod kernel_features;
pub mod kube_proxy_config;
pub mod kube_source;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod node_network;
pub mod packet_path;
pub mod plan;
pub mod runner;
pub mod service;
pub mod service_health_server;
pub mod services_view;
pub mod source;
pub mod sync;
pub mod topology;
pub mod watcher;
