//! Test harness for Switchyard: guards for every kernel object a test creates
//! (network namespaces, cgroups, bpffs mounts, processes, scratch dirs), a
//! one-node and a multi-node topology builder, Kubernetes manifest writers, a
//! guard for the agent itself, and the JSON types of the `netprobe` tool.
//!
//! Safety rules (docs/design.md lists them with the test tiers): non-loopback
//! traffic only ever leaves a process inside a namespace created here; socket
//! hooks only go on a cgroup created here; pins only under a bpffs mounted
//! here; every object is removed by a `Drop` guard, also when a test panics;
//! every loop is bounded.

pub mod agent;
pub mod apiserver;
pub mod bpffs;
pub mod capability;
pub mod cgroup;
pub mod client;
pub mod command;
pub mod control_flow;
pub mod kernel;
pub mod kube_proxy_rules;
pub mod manifest;
pub mod migration_lab;
pub mod mount;
pub mod multinode;
pub mod name;
pub mod netns;
pub mod packet;
pub mod patience;
pub mod probe;
pub mod process;
pub mod rng;
pub mod scratch;
pub mod stack_depth;
pub mod topology;
pub mod wiring;
pub mod xdp_peer;

pub use agent::{Agent, AgentConfig};
pub use apiserver::FakeApiServer;
pub use bpffs::BpfFs;
pub use capability::CapabilitySet;
pub use cgroup::Cgroup;
pub use client::Prober;
pub use manifest::{
    AddressType, Endpoint, EndpointPort, EndpointSliceManifest, IpMode, LoadBalancerIngress,
    ManifestDir, NodeManifest, Protocol, ServiceManifest, ServicePort, ServiceType, TargetPort,
    TrafficPolicy,
};
pub use multinode::{ClusterNode, MultiNodeCluster, MultiNodeSpec, NodeSpec, Outside};
pub use netns::NetNs;
pub use probe::{Attempt, Datagram, HttpResult, Reply, Summary};
pub use process::Spawned;
pub use scratch::Scratch;
pub use topology::{Client, Cluster, ClusterSpec, Node, PendingSummary, Pod};
