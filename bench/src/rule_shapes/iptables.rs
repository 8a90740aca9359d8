//! The iptables rule generator against kube-proxy's own shapes.

use switchyard_tests::kube_proxy_rules::iptables::*;

use crate::catalog::{Placement, test_catalog as catalog};

#[test]
fn one_service_has_kube_proxys_shape() {
    let catalog = catalog(0);
    let rules = full(&catalog.services);
    let probe = catalog.probe(Placement::Last);
    let svc = svc_chain(probe);
    assert!(rules.contains(&format!(
        "-A KUBE-SERVICES -m comment --comment \"bench/probe-last:http cluster IP\" -m tcp -p tcp -d {} --dport 80 -j {svc}\n",
        probe.cluster_ip
    )));
    let probabilities: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("statistic"))
        .map(|l| {
            l.split("--probability ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        probabilities,
        ["0.2500000000", "0.3333333333", "0.5000000000"]
    );
    assert!(rules.contains("-j DNAT --to-destination 10.244.0.13:8080\n"));
    assert_eq!(rules.matches("COMMIT\n").count(), 2);
    assert!(!rules.contains("KUBE-EXT-"));
}

#[test]
fn node_port_goes_through_the_external_chain() {
    let catalog = catalog(0).with_node_port(30080);
    let rules = full(&catalog.services);
    let probe = catalog.probe(Placement::Last);
    let ext = ext_chain(probe);
    assert!(rules.contains(&format!(":{ext} - [0:0]\n")));
    assert!(rules.contains(&format!("-m tcp -p tcp --dport 30080 -j {ext}\n")));
    assert!(rules.contains(&format!("-A {ext} -j {}\n", svc_chain(probe))));
}

#[test]
fn rule_counts_scale_with_services() {
    let catalog = catalog(998);
    let rules = full(&catalog.services);
    let count = |prefix: &str| rules.lines().filter(|l| l.starts_with(prefix)).count();
    // One KUBE-SERVICES rule per service, plus the NodePort rule.
    assert_eq!(count("-A KUBE-SERVICES "), 1_001);
    // Per service: masquerade check + 4 endpoint jumps; per endpoint 2.
    assert_eq!(count("-A KUBE-SVC-"), 1_000 * 5);
    assert_eq!(count("-A KUBE-SEP-"), 1_000 * 4 * 2);
    // Every referenced chain is declared.
    assert_eq!(count(":KUBE-SEP-"), 4_000);
}

#[test]
fn endpoint_change_rewrites_only_what_moved() {
    let catalog = catalog(10);
    let before = catalog.probe(Placement::Last).clone();
    let mut after = before.clone();
    after.endpoints.truncate(1);
    let delta = endpoint_change(&catalog.services, &before, &after);
    assert_eq!(delta.matches("-X KUBE-SEP-").count(), 3);
    assert_eq!(delta.matches("-j DNAT").count(), 1);
    assert!(!delta.contains("statistic"));
    assert_eq!(
        delta
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .count(),
        13
    );
}
