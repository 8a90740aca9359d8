//! Kubernetes manifests for the agent's `--manifests` folder: builders for a
//! Service, an EndpointSlice and a Node, and a folder writer that replaces files
//! atomically, so the agent's watcher never reads half a file.

use std::{
    collections::BTreeMap,
    fmt::Display,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

mod node;
pub use node::{NodeManifest, ZONE_LABEL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The lowercase name iptables, nftables and kube-proxy's chain hashes
    /// use.
    pub fn proto(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// A Service port's `targetPort`: a number or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: Option<TargetPort>,
    pub node_port: Option<u16>,
}

impl ServicePort {
    pub fn new(name: &str, protocol: Protocol, port: u16, target_port: u16) -> Self {
        Self {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol,
            target_port: Some(TargetPort::Number(target_port)),
            node_port: None,
        }
    }

    pub fn tcp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, Protocol::Tcp, port, target_port)
    }

    pub fn udp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, Protocol::Udp, port, target_port)
    }

    /// `nodePort` (NodePort and LoadBalancer Services).
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }

    fn to_value(&self) -> Value {
        let mut v = json!({ "port": self.port, "protocol": self.protocol.as_str() });
        if let Some(name) = &self.name {
            v["name"] = json!(name);
        }
        match &self.target_port {
            Some(TargetPort::Number(n)) => v["targetPort"] = json!(n),
            Some(TargetPort::Name(n)) => v["targetPort"] = json!(n),
            None => {}
        }
        if let Some(n) = self.node_port {
            v["nodePort"] = json!(n);
        }
        v
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

/// `spec.externalTrafficPolicy` (and `internalTrafficPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// `status.loadBalancer.ingress[].ipMode`: `VIP` (the default: the node
/// handles the IP itself) or `Proxy` (traffic comes from the load balancer,
/// so the proxy must not short-circuit it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpMode {
    Vip,
    Proxy,
}

impl IpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IpMode::Vip => "VIP",
            IpMode::Proxy => "Proxy",
        }
    }
}

/// One `status.loadBalancer.ingress` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerIngress {
    pub ip: String,
    pub ip_mode: Option<IpMode>,
}

/// A `v1/Service`. `ipFamilies` and `ipFamilyPolicy` follow from the
/// cluster IPs given, as the API server would fill them in.
#[derive(Clone, Debug)]
pub struct ServiceManifest {
    pub name: String,
    pub namespace: String,
    pub service_type: String,
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub external_traffic_policy: Option<TrafficPolicy>,
    pub external_ips: Vec<String>,
    pub load_balancer_source_ranges: Vec<String>,
    pub health_check_node_port: Option<u16>,
    /// `status.loadBalancer.ingress`, as a cloud controller would set it.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// Extra `spec` fields merged as given (e.g. `internalTrafficPolicy`).
    pub extra_spec: BTreeMap<String, Value>,
}

impl ServiceManifest {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            service_type: "ClusterIP".into(),
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            external_traffic_policy: None,
            external_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
            load_balancer_ingress: Vec::new(),
            extra_spec: BTreeMap::new(),
        }
    }

    pub fn cluster_ip(mut self, ip: impl Display) -> Self {
        self.cluster_ips.push(ip.to_string());
        self
    }

    pub fn port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// `spec.type` as free text (also for values the API would reject).
    pub fn service_type(mut self, ty: &str) -> Self {
        self.service_type = ty.into();
        self
    }

    /// `spec.type`.
    pub fn type_(self, ty: ServiceType) -> Self {
        self.service_type(ty.as_str())
    }

    pub fn external_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.external_traffic_policy = Some(policy);
        self
    }

    /// Adds one `spec.externalIPs` entry.
    pub fn external_ip(mut self, ip: impl Display) -> Self {
        self.external_ips.push(ip.to_string());
        self
    }

    /// Adds one `spec.loadBalancerSourceRanges` CIDR.
    pub fn load_balancer_source_range(mut self, cidr: &str) -> Self {
        self.load_balancer_source_ranges.push(cidr.into());
        self
    }

    /// `spec.healthCheckNodePort` (LoadBalancer with the Local policy).
    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    /// Adds one `status.loadBalancer.ingress` IP without an `ipMode`.
    pub fn load_balancer_ingress(mut self, ip: impl Display) -> Self {
        self.load_balancer_ingress.push(LoadBalancerIngress {
            ip: ip.to_string(),
            ip_mode: None,
        });
        self
    }

    /// Adds one `status.loadBalancer.ingress` IP with an `ipMode`.
    pub fn load_balancer_ingress_with_mode(mut self, ip: impl Display, mode: IpMode) -> Self {
        self.load_balancer_ingress.push(LoadBalancerIngress {
            ip: ip.to_string(),
            ip_mode: Some(mode),
        });
        self
    }

    pub fn spec_field(mut self, key: &str, value: Value) -> Self {
        self.extra_spec.insert(key.into(), value);
        self
    }

    pub fn to_value(&self) -> Value {
        let families: Vec<&str> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect();
        let mut spec = json!({
            "type": self.service_type,
            "ports": self.ports.iter().map(ServicePort::to_value).collect::<Vec<_>>(),
        });
        if let Some(first) = self.cluster_ips.first() {
            spec["clusterIP"] = json!(first);
            spec["clusterIPs"] = json!(self.cluster_ips);
            spec["ipFamilies"] = json!(families);
            let policy = if families.len() > 1 {
                "RequireDualStack"
            } else {
                "SingleStack"
            };
            spec["ipFamilyPolicy"] = json!(policy);
        }
        if let Some(policy) = self.external_traffic_policy {
            spec["externalTrafficPolicy"] = json!(policy.as_str());
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(self.external_ips);
        }
        if !self.load_balancer_source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(self.load_balancer_source_ranges);
        }
        if let Some(port) = self.health_check_node_port {
            spec["healthCheckNodePort"] = json!(port);
        }
        for (k, v) in &self.extra_spec {
            spec[k] = v.clone();
        }
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&self.name, &self.namespace, &self.labels),
            "spec": spec,
        });
        if !self.annotations.is_empty() {
            service["metadata"]["annotations"] = json!(self.annotations);
        }
        if !self.load_balancer_ingress.is_empty() {
            let ingress: Vec<Value> = self
                .load_balancer_ingress
                .iter()
                .map(|i| {
                    let mut v = json!({ "ip": i.ip });
                    if let Some(mode) = i.ip_mode {
                        v["ipMode"] = json!(mode.as_str());
                    }
                    v
                })
                .collect();
            service["status"] = json!({ "loadBalancer": { "ingress": ingress } });
        }
        service
    }
}

fn metadata(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Value {
    let mut m = json!({ "name": name, "namespace": namespace });
    if !labels.is_empty() {
        m["labels"] = json!(labels);
    }
    m
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

#[derive(Clone, Debug)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl EndpointPort {
    pub fn new(name: &str, protocol: Protocol, port: u16) -> Self {
        Self {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol,
        }
    }
}

/// One endpoint; conditions left `None` are omitted (the API treats an
/// absent `ready` as true).
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<String>,
    /// `zone`: the zone of the endpoint's node.
    pub zone: Option<String>,
    /// `hints.forZones`, as the EndpointSlice controller sets them.
    pub zone_hints: Vec<String>,
}

impl Endpoint {
    /// A ready, serving, not terminating endpoint.
    pub fn ready(address: impl Display) -> Self {
        Self {
            addresses: vec![address.to_string()],
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            node_name: None,
            zone: None,
            zone_hints: Vec::new(),
        }
    }

    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        (self.ready, self.serving, self.terminating) =
            (Some(ready), Some(serving), Some(terminating));
        self
    }

    pub fn node(mut self, node_name: &str) -> Self {
        self.node_name = Some(node_name.into());
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.into());
        self
    }

    pub fn zone_hint(mut self, zone: &str) -> Self {
        self.zone_hints.push(zone.into());
        self
    }

    fn to_value(&self) -> Value {
        let mut conditions = json!({});
        for (key, value) in [
            ("ready", self.ready),
            ("serving", self.serving),
            ("terminating", self.terminating),
        ] {
            if let Some(v) = value {
                conditions[key] = json!(v);
            }
        }
        let mut v = json!({ "addresses": self.addresses, "conditions": conditions });
        if let Some(node) = &self.node_name {
            v["nodeName"] = json!(node);
        }
        if let Some(zone) = &self.zone {
            v["zone"] = json!(zone);
        }
        if !self.zone_hints.is_empty() {
            let zones: Vec<Value> = self
                .zone_hints
                .iter()
                .map(|z| json!({ "name": z }))
                .collect();
            v["hints"] = json!({ "forZones": zones });
        }
        v
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice joined to its Service by the
/// `kubernetes.io/service-name` label.
#[derive(Clone, Debug)]
pub struct EndpointSliceManifest {
    pub name: String,
    pub namespace: String,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
    pub labels: BTreeMap<String, String>,
}

impl EndpointSliceManifest {
    pub fn new(name: &str, namespace: &str, service: &str, address_type: AddressType) -> Self {
        let labels =
            BTreeMap::from([("kubernetes.io/service-name".to_owned(), service.to_owned())]);
        Self {
            name: name.into(),
            namespace: namespace.into(),
            address_type,
            ports: Vec::new(),
            endpoints: Vec::new(),
            labels,
        }
    }

    pub fn port(mut self, port: EndpointPort) -> Self {
        self.ports.push(port);
        self
    }

    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({ "port": p.port, "protocol": p.protocol.as_str() });
                if let Some(name) = &p.name {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": metadata(&self.name, &self.namespace, &self.labels),
            "addressType": self.address_type.as_str(),
            "ports": ports,
            "endpoints": self.endpoints.iter().map(Endpoint::to_value).collect::<Vec<_>>(),
        })
    }
}

/// Renders documents as one multi-document YAML stream.
pub fn render(documents: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in documents {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

/// The folder the agent watches.
#[derive(Clone, Debug)]
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// Uses (and creates) `path`.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `file` (e.g. `web.yaml`) with `documents`. The content goes to
    /// a hidden temp file first and is renamed over the target: rename is
    /// atomic, and the temp name (leading dot, `.tmp` suffix) is one a
    /// manifests watcher skips.
    pub fn write(&self, file: &str, documents: &[Value]) -> Result<PathBuf> {
        let target = self.path.join(file);
        let temp = self.path.join(format!(".{file}.tmp"));
        std::fs::write(&temp, render(documents)?)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, &target)
            .with_context(|| format!("cannot rename to {}", target.display()))?;
        Ok(target)
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        let target = self.path.join(file);
        std::fs::remove_file(&target).with_context(|| format!("cannot remove {}", target.display()))
    }
}

#[cfg(test)]
mod tests;
