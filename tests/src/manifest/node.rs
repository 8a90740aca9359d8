//! The `v1/Node` manifest writer.

use std::{collections::BTreeMap, fmt::Display};

use serde_json::{Value, json};

/// The zone label a Node carries and topology-aware routing reads.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A `v1/Node`: what the agent reads of its own node (name, zone label,
/// addresses, pod CIDRs).
#[derive(Clone, Debug)]
pub struct NodeManifest {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `status.addresses` as (type, address), e.g. ("InternalIP", "192.168.77.11").
    pub addresses: Vec<(String, String)>,
    pub pod_cidrs: Vec<String>,
}

impl NodeManifest {
    /// With the `kubernetes.io/hostname` label the kubelet always sets.
    pub fn new(name: &str) -> Self {
        let labels = BTreeMap::from([("kubernetes.io/hostname".to_owned(), name.to_owned())]);
        Self {
            name: name.into(),
            labels,
            addresses: Vec::new(),
            pod_cidrs: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The `topology.kubernetes.io/zone` label.
    pub fn zone(self, zone: &str) -> Self {
        self.label(ZONE_LABEL, zone)
    }

    /// Adds an `InternalIP` address.
    pub fn internal_ip(mut self, ip: impl Display) -> Self {
        self.addresses.push(("InternalIP".into(), ip.to_string()));
        self
    }

    /// Adds a `spec.podCIDRs` entry (the first is also `spec.podCIDR`).
    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.pod_cidrs.push(cidr.into());
        self
    }

    pub fn to_value(&self) -> Value {
        let mut metadata = json!({ "name": self.name });
        if !self.labels.is_empty() {
            metadata["labels"] = json!(self.labels);
        }
        let mut spec = json!({});
        if let Some(first) = self.pod_cidrs.first() {
            spec["podCIDR"] = json!(first);
            spec["podCIDRs"] = json!(self.pod_cidrs);
        }
        let addresses: Vec<Value> = self
            .addresses
            .iter()
            .map(|(ty, address)| json!({ "type": ty, "address": address }))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": metadata,
            "spec": spec,
            "status": { "addresses": addresses },
        })
    }
}
