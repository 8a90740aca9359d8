//! What the proxy never reads, dropped from the objects kept whole in a
//! reflector store (this node's Node and the ServiceCIDRs): managed fields,
//! annotations (kubectl's `last-applied-configuration` alone can be most of
//! an object), owner references, a Node's images and conditions. Services
//! and EndpointSlices are not kept as objects at all (see `read_store`).

use k8s_openapi::api::{
    core::v1::{Node, NodeStatus},
    networking::v1::ServiceCIDR,
};
use kube::api::ObjectMeta;

fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.annotations = None;
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
    use super::*;
    use crate::convert::fixtures;

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
