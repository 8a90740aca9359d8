//! The nftables rule generator against kube-proxy's own shapes.

use switchyard_tests::kube_proxy_rules::nftables::*;

use crate::catalog::{Placement, test_catalog as catalog};

#[test]
fn service_dispatch_is_one_map_lookup() {
    let catalog = catalog(98);
    let script = full(&catalog.services);
    // No per-service rule in `services`: only the vmap elements grow.
    assert_eq!(
        script.matches("add rule ip kube-proxy services ").count(),
        2
    );
    assert_eq!(
        script
            .matches("add element ip kube-proxy service-ips ")
            .count(),
        100
    );
    let probe = catalog.probe(Placement::Last);
    assert!(script.contains(&format!(
        "add element ip kube-proxy service-ips {{ {} . tcp . 80 : goto {} }}",
        probe.cluster_ip,
        service_chain(probe)
    )));
    assert!(script.contains("numgen random mod 4 vmap { 0 : goto endpoint-"));
    assert!(script.contains("meta l4proto tcp dnat to 10.244.0.10:8080\n"));
}

#[test]
fn chain_names_carry_hash_and_identity() {
    let catalog = catalog(0);
    let probe = catalog.probe(Placement::Last);
    let chain = service_chain(probe);
    assert!(chain.starts_with("service-"));
    assert!(chain.ends_with("-bench/probe-last/tcp/http"));
    assert_eq!(
        chain.len(),
        "service-".len() + 8 + "-bench/probe-last/tcp/http".len()
    );
    assert!(endpoint_chain(probe, probe.endpoints[0]).ends_with("__10.244.0.10/8080"));
}

#[test]
fn endpoint_change_touches_one_service() {
    let catalog = catalog(10);
    let before = catalog.probe(Placement::Last).clone();
    let mut after = before.clone();
    after.endpoints = vec![before.endpoints[1]];
    let delta = endpoint_change(&before, &after);
    assert_eq!(delta.matches("delete chain").count(), 3);
    assert!(delta.contains("numgen random mod 1 vmap { 0 : goto endpoint-"));
    assert!(!delta.contains("svc-"));
}
