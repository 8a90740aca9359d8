//! What the proxy never reads, dropped from each object before a store
//! keeps a copy: managed fields, annotations (kubectl's
//! `last-applied-configuration` alone can be most of an object), owner
//! references, a Service's selector and conditions, a Node's images and
//! conditions. On a real cluster these are most of every object's size;
//! the stores hold one copy of each object for as long as it exists.
//! EndpointSlices are not stored as objects at all (see `slice_store`).

use k8s_openapi::api::{
    core::v1::{Node, NodeStatus, Service},
    networking::v1::ServiceCIDR,
};
use kube::api::ObjectMeta;

/// kube-proxy measures network programming latency from it (kept for
/// that).
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| key == TRIGGER_TIME_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

pub fn service(service: &mut Service) {
    metadata(&mut service.metadata);
    if let Some(spec) = &mut service.spec {
        spec.selector = None;
    }
    if let Some(status) = &mut service.status {
        status.conditions = None;
    }
}

/// The Node keeps its name, labels (the zone), deletion time, taints, pod
/// CIDRs and addresses.
pub fn node(node: &mut Node) {
    metadata(&mut node.metadata);
    node.status = node.status.take().map(|status| NodeStatus {
        addresses: status.addresses,
        ..NodeStatus::default()
    });
}

pub fn service_cidr(cidr: &mut ServiceCIDR) {
    metadata(&mut cidr.metadata);
    cidr.status = None;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::convert::{desired::desired_state, fixtures, topology::NodeContext};

    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"a very": "long text"}'
  ownerReferences: [{apiVersion: v1, kind: X, name: x, uid: u}]
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  loadBalancerSourceRanges: [192.0.2.0/24]
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.5}]
  conditions: [{type: Ready, status: "True", reason: r, message: m, lastTransitionTime: "2026-01-01T00:00:00Z"}]
"#;

    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: "2026-01-01T00:00:00Z"
    other: dropped
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  zone: z1
  hints: {forZones: [{name: z1}]}
  targetRef: {kind: Pod, name: web-5d4f, namespace: shop, uid: 0000-1111}
- addresses: [10.244.1.5]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-b
  zone: z1
  hints: {forZones: [{name: z1}]}
  targetRef: {kind: Pod, name: web-7a9c, namespace: shop, uid: 2222-3333}
"#;

    #[test]
    fn trimmed_objects_convert_exactly_as_whole_ones() {
        let whole = (fixtures::service(SERVICE), fixtures::slice(SLICE));
        let mut trimmed = whole.clone();
        service(&mut trimmed.0);
        assert_ne!(trimmed, whole, "something was dropped");
        let node = NodeContext {
            name: "node-a".into(),
            zone: Some("z1".into()),
            ..NodeContext::default()
        };
        let convert = |(service, slice): &(Service, EndpointSlice)| {
            desired_state(&[service], &[slice], &node)
        };
        assert_eq!(convert(&trimmed), convert(&whole));
        assert!(trimmed.0.metadata.annotations.is_none());
    }

    #[test]
    fn a_node_keeps_what_the_agent_reads() {
        let mut node_object = fixtures::node(
            r"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: z1}
spec:
  taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]
status:
  addresses: [{type: InternalIP, address: 192.0.2.10}]
  images: [{names: [registry.example/app:1], sizeBytes: 1000}]
",
        );
        node(&mut node_object);
        assert!(node_object.metadata.labels.is_some());
        assert!(node_object.spec.unwrap().taints.is_some());
        let status = node_object.status.unwrap();
        assert!(status.addresses.is_some() && status.images.is_none());
    }
}
