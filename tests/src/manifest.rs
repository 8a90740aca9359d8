//! Kubernetes manifests for the agent's `--manifests` folder: builders for a
//! Service, an EndpointSlice and a Node, and a folder writer that replaces files
//! atomically, so the agent's watcher never reads half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
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
            external_traffic_policy: None,
            external_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
            load_balancer_ingress: Vec::new(),
            extra_spec: BTreeMap::new(),
        }
    }

    pub fn cluster_ip(mut self, ip: impl ToString) -> Self {
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
    pub fn external_ip(mut self, ip: impl ToString) -> Self {
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
    pub fn load_balancer_ingress(mut self, ip: impl ToString) -> Self {
        self.load_balancer_ingress.push(LoadBalancerIngress {
            ip: ip.to_string(),
            ip_mode: None,
        });
        self
    }

    /// Adds one `status.loadBalancer.ingress` IP with an `ipMode`.
    pub fn load_balancer_ingress_with_mode(mut self, ip: impl ToString, mode: IpMode) -> Self {
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
    pub fn ready(address: impl ToString) -> Self {
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
    pub fn internal_ip(mut self, ip: impl ToString) -> Self {
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
mod tests {
    use super::*;

    #[test]
    fn dual_stack_service_renders_families_and_ports() {
        let svc = ServiceManifest::new("web", "default")
            .cluster_ip("10.96.0.10")
            .cluster_ip("fd00:96::10")
            .port(ServicePort::tcp("http", 80, 8080))
            .label("app", "web")
            .to_value();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(svc["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080})
        );
        assert_eq!(svc["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn slice_carries_service_label_and_conditions() {
        let slice = EndpointSliceManifest::new("web-v4", "default", "web", AddressType::IPv4)
            .port(EndpointPort::new("http", Protocol::Tcp, 8080))
            .endpoint(Endpoint::ready("10.244.0.10").node("node-a"))
            .endpoint(Endpoint::ready("10.244.0.11").conditions(false, true, true))
            .to_value();
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["endpoints"][0]["nodeName"], "node-a");
        assert_eq!(
            slice["endpoints"][1]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn load_balancer_service_renders_node_ports_policy_and_status() {
        let svc = ServiceManifest::new("lb", "default")
            .type_(ServiceType::LoadBalancer)
            .cluster_ip("10.96.0.20")
            .port(ServicePort::tcp("http", 80, 8080).node_port(30080))
            .external_traffic_policy(TrafficPolicy::Local)
            .health_check_node_port(32000)
            .external_ip("192.168.77.100")
            .load_balancer_source_range("192.168.77.0/24")
            .load_balancer_ingress("203.0.113.10")
            .load_balancer_ingress_with_mode("fd00:203::10", IpMode::Proxy)
            .to_value();
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "LoadBalancer");
        assert_eq!(spec["ports"][0]["nodePort"], 30080);
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["healthCheckNodePort"], 32000);
        assert_eq!(spec["externalIPs"], json!(["192.168.77.100"]));
        assert_eq!(spec["loadBalancerSourceRanges"], json!(["192.168.77.0/24"]));
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.10"}, {"ip": "fd00:203::10", "ipMode": "Proxy"}])
        );
        let plain = ServiceManifest::new("c", "default").to_value();
        assert!(plain.get("status").is_none(), "{plain}");
        assert!(plain["spec"].get("externalTrafficPolicy").is_none());
    }

    #[test]
    fn node_renders_zone_addresses_and_pod_cidrs() {
        let node = NodeManifest::new("node-1")
            .zone("zone-a")
            .internal_ip("192.168.77.11")
            .internal_ip("fd00:77::11")
            .pod_cidr("10.244.1.0/24")
            .to_value();
        assert_eq!(node["kind"], "Node");
        assert_eq!(node["metadata"]["labels"][ZONE_LABEL], "zone-a");
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            "node-1"
        );
        assert_eq!(
            node["status"]["addresses"][1],
            json!({"type": "InternalIP", "address": "fd00:77::11"})
        );
        assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
        let endpoint = Endpoint::ready("10.244.1.10").node("node-1").zone("zone-a");
        assert_eq!(endpoint.to_value()["zone"], "zone-a");
    }

    #[test]
    fn written_file_is_yaml_that_reads_back() {
        let dir = std::env::temp_dir().join(crate::name::unique("manifest-test"));
        let manifests = ManifestDir::new(&dir).unwrap();
        let svc = ServiceManifest::new("a", "ns").cluster_ip("10.96.0.1");
        let path = manifests
            .write("a.yaml", &[svc.to_value(), svc.to_value()])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], svc.to_value());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use serde::Deserialize;
}
