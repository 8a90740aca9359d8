use serde::Deserialize;

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
