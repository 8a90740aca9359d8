use super::*;
use crate::convert::fixtures::service;

/// Frontends as "frontend name field" and errors as their display lines.
fn run(yaml: &str) -> (Vec<String>, Vec<String>) {
    let (frontends, errors) = service_frontends(&service(yaml), &[]);
    (
        frontends
            .iter()
            .map(|f| format!("{} {} {}", f.frontend, f.service, f.field))
            .collect(),
        errors.iter().map(ToString::to_string).collect(),
    )
}

/// One Service in, the frontends it gives and the error lines it raises.
struct FrontendCase<'a> {
    name: &'a str,
    yaml: &'a str,
    want_frontends: &'a [&'a str],
    want_errors: &'a [&'a str],
}

#[test]
fn service_frontends_follow_kube_proxy() {
    let cases: &[FrontendCase] = &[
        FrontendCase { name: "single unnamed port defaults to TCP and namespace default", yaml: "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}", want_frontends: &["10.96.0.10:80/TCP default/web spec.ports[0]"], want_errors: &[] },
        FrontendCase { name: "clusterIPs win over clusterIP and each family is served", yaml: "metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.99
  clusterIPs: [10.96.0.10, 'fd00::10']
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: s, port: 9, protocol: SCTP}]", want_frontends: &[
                "10.96.0.10:80/TCP shop/web:http spec.ports[0]",
                "10.96.0.10:53/UDP shop/web:dns spec.ports[1]",
                "10.96.0.10:9/SCTP shop/web:s spec.ports[2]",
                "[fd00::10]:80/TCP shop/web:http spec.ports[0]",
                "[fd00::10]:53/UDP shop/web:dns spec.ports[1]",
                "[fd00::10]:9/SCTP shop/web:s spec.ports[2]",
            ], want_errors: &[] },
        FrontendCase { name: "legacy leading-zero IPv4 is decimal", yaml: "metadata: {name: old}\nspec: {clusterIP: 010.096.000.010, ports: [{port: 80}]}", want_frontends: &["10.96.0.10:80/TCP default/old spec.ports[0]"], want_errors: &[] },
        FrontendCase { name: "bad ports are skipped, good ones served", yaml: "metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: a, port: 80}, {name: b, port: 0}, {name: c}, {name: d, port: 70000}, {name: e, port: 81, protocol: ICMP}, {name: f, port: -1}]", want_frontends: &["10.96.0.10:80/TCP default/web:a spec.ports[0]"], want_errors: &[
                "api: Service default/web: spec.ports[1].port: must be 1-65535, got 0 or nothing",
                "api: Service default/web: spec.ports[2].port: must be 1-65535, got 0 or nothing",
                "api: Service default/web: spec.ports[3].port: must be 1-65535, got 70000",
                "api: Service default/web: spec.ports[4].protocol: unknown protocol \"ICMP\", expected TCP, UDP or SCTP",
                "api: Service default/web: spec.ports[5].port: must be 1-65535, got -1",
            ] },
        FrontendCase { name: "a bad IP is skipped, the other family still served", yaml: "metadata: {name: web}\nspec: {clusterIPs: [10.96.0.300, 'fd00::10'], ports: [{port: 80}]}", want_frontends: &["[fd00::10]:80/TCP default/web spec.ports[0]"], want_errors: &["api: Service default/web: spec.clusterIPs[0]: not an IP address: \"10.96.0.300\""] },
        FrontendCase { name: "bad clusterIP without clusterIPs names the singular field", yaml: "metadata: {name: web}\nspec: {clusterIP: banana, ports: [{port: 80}]}", want_frontends: &[], want_errors: &["api: Service default/web: spec.clusterIP: not an IP address: \"banana\""] },
        FrontendCase { name: "a second IP of one family is not served", yaml: "metadata: {name: web}\nspec: {clusterIPs: [10.96.0.10, 10.96.0.11], ports: [{port: 80}]}", want_frontends: &["10.96.0.10:80/TCP default/web spec.ports[0]"], want_errors: &["api: Service default/web: spec.clusterIPs[1]: 10.96.0.11 is a second address of the family of 10.96.0.10; only the first is served"] },
        FrontendCase { name: "headless", yaml: "metadata: {name: db}\nspec: {clusterIP: None, ports: [{port: 5432}]}", want_frontends: &[], want_errors: &[] },
        FrontendCase { name: "headless via clusterIPs", yaml: "metadata: {name: db}\nspec: {clusterIPs: [None], ports: [{port: 5432}]}", want_frontends: &[], want_errors: &[] },
        FrontendCase { name: "ExternalName", yaml: "metadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com, clusterIP: 10.96.0.10, ports: [{port: 80}]}", want_frontends: &[], want_errors: &[] },
        FrontendCase { name: "no cluster IP is reported", yaml: "metadata: {name: web}\nspec: {ports: [{port: 80}]}", want_frontends: &[], want_errors: &["api: Service default/web: spec.clusterIP: missing; standalone mode allocates no cluster IPs"] },
        FrontendCase { name: "no spec", yaml: "metadata: {name: web}", want_frontends: &[], want_errors: &["api: Service default/web: spec: missing"] },
        FrontendCase { name: "no ports serves nothing without complaint", yaml: "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10}", want_frontends: &[], want_errors: &[] },
    ];
    for FrontendCase {
        name,
        yaml,
        want_frontends,
        want_errors,
    } in cases
    {
        let (frontends, errors) = run(yaml);
        assert_eq!(frontends, *want_frontends, "{name}: frontends");
        assert_eq!(errors, *want_errors, "{name}: errors");
    }
}

#[test]
fn errors_carry_machine_reasons() {
    let (_, errors) = service_frontends(
        &service(
            "metadata: {name: web}\nspec: {clusterIPs: [x], ports: [{port: 0}, {port: 1, protocol: Q}]}",
        ),
        &[],
    );
    let reasons: Vec<_> = errors.iter().map(InputError::reason).collect();
    assert_eq!(reasons, ["invalid_ip", "invalid_port", "unsupported"]);
}

struct PolicyCase<'a> {
    extra: &'a str,
    policy: TrafficPolicy,
    timeout: u32,
    error: Option<&'a str>,
}

#[test]
fn policies_and_session_affinity_table() {
    let cases: &[PolicyCase] = &[
        PolicyCase {
            extra: "",
            policy: TrafficPolicy::Cluster,
            timeout: 0,
            error: None,
        },
        PolicyCase {
            extra: "internalTrafficPolicy: Local",
            policy: TrafficPolicy::Local,
            timeout: 0,
            error: None,
        },
        PolicyCase {
            extra: "internalTrafficPolicy: Nearby",
            policy: TrafficPolicy::Cluster,
            timeout: 0,
            error: Some("internalTrafficPolicy"),
        },
        PolicyCase {
            extra: "sessionAffinity: None",
            policy: TrafficPolicy::Cluster,
            timeout: 0,
            error: None,
        },
        PolicyCase {
            extra: "sessionAffinity: ClientIP",
            policy: TrafficPolicy::Cluster,
            timeout: 10_800,
            error: None,
        },
        PolicyCase {
            extra: "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}",
            policy: TrafficPolicy::Cluster,
            timeout: 60,
            error: None,
        },
        PolicyCase {
            extra: "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            policy: TrafficPolicy::Cluster,
            timeout: 10_800,
            error: Some("timeoutSeconds"),
        },
        PolicyCase {
            extra: "sessionAffinity: Cookie",
            policy: TrafficPolicy::Cluster,
            timeout: 0,
            error: Some("sessionAffinity"),
        },
    ];
    for PolicyCase {
        extra,
        policy,
        timeout,
        error,
    } in cases
    {
        let yaml = format!(
            "metadata: {{name: web}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80}}]\n  {extra}"
        );
        let (frontends, errors) = service_frontends(&service(&yaml), &[]);
        assert_eq!(frontends.len(), 1, "{extra}");
        assert_eq!(frontends[0].policy, *policy, "{extra}");
        assert_eq!(frontends[0].affinity_timeout, *timeout, "{extra}");
        match error {
            None => assert!(errors.is_empty(), "{extra}: {errors:?}"),
            Some(fragment) => {
                assert_eq!(errors.len(), 1, "{extra}: {errors:?}");
                assert!(
                    errors[0].to_string().contains(fragment),
                    "{extra}: {errors:?}"
                );
            }
        }
    }
}

#[test]
fn external_frontends_follow_kube_proxy() {
    use switchyard_abi::{FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES};
    let node: Vec<IpAddr> = ["192.168.77.11", "fd00:77::11"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let render = |yaml: &str| -> (Vec<String>, Vec<String>) {
        let (frontends, errors) = service_frontends(&service(yaml), &node);
        let lines = frontends
            .iter()
            .filter(|f| f.frontend.scope == Scope::External || f.frontend.port != 80)
            .map(|f| {
                let mut flags = Vec::new();
                if f.flags & FRONTEND_SNAT_REMOTE != 0 {
                    flags.push("snat".to_owned());
                }
                if f.flags & FRONTEND_SOURCE_RANGES != 0 {
                    let ranges: Vec<String> =
                        f.source_ranges.iter().map(ToString::to_string).collect();
                    flags.push(format!("from={}", ranges.join(",")));
                }
                format!("{} {:?} {}", f.frontend, f.policy, flags.join(" "))
                    .trim_end()
                    .to_owned()
            })
            .collect();
        (lines, errors.iter().map(ToString::to_string).collect())
    };
    let cases: &[FrontendCase] = &[
        FrontendCase {
            name: "NodePort: every node address of the Service's families, both scopes",
            yaml: "metadata: {name: np}\nspec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}",
            want_frontends: &[
                "192.168.77.11:30080/TCP Cluster",
                "192.168.77.11:30080/TCP (external) Cluster snat",
            ],
            want_errors: &[],
        },
        FrontendCase {
            name: "Local policy: no SNAT; externalIPs on any type",
            yaml: "metadata: {name: l}\nspec: {externalTrafficPolicy: Local, clusterIPs: [10.96.0.1, 'fd00::1'], externalIPs: [198.51.100.1, bad], ports: [{port: 80}]}",
            want_frontends: &["198.51.100.1:80/TCP (external) Local"],
            want_errors: &[
                "api: Service default/l: spec.externalIPs[1]: not an IP address: \"bad\"",
            ],
        },
        FrontendCase {
            name: "LoadBalancer: ingress IPs with source ranges of their family; ipMode Proxy left alone",
            yaml: "metadata: {name: lb}\nspec: {type: LoadBalancer, clusterIPs: [10.96.0.1, 'fd00::1'], loadBalancerSourceRanges: [10.0.0.0/8, 'fd00::/8'], ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1}, {ip: 203.0.113.2, ipMode: Proxy}, {ip: 'fd00:203::1'}]}}",
            want_frontends: &[
                "203.0.113.1:80/TCP (external) Cluster snat from=10.0.0.0/8",
                "[fd00:203::1]:80/TCP (external) Cluster snat from=fd00::/8",
            ],
            want_errors: &[],
        },
    ];
    for FrontendCase {
        name,
        yaml,
        want_frontends: want,
        want_errors,
    } in cases
    {
        let (got, errors) = render(yaml);
        let got: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|line| line.contains("(external)") || line.contains(":30080/TCP Cluster"))
            .collect();
        assert_eq!(got, *want, "{name}");
        assert_eq!(errors, *want_errors, "{name}: errors");
    }
}

#[test]
fn a_loopback_node_port_address_is_served_to_local_processes_only() {
    let node: Vec<IpAddr> = ["127.0.0.1", "192.168.77.11"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let yaml = "metadata: {name: np}\nspec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}";
    let (frontends, errors) = service_frontends(&service(yaml), &node);
    assert!(errors.is_empty(), "{errors:?}");
    let node_ports: Vec<String> = frontends
        .iter()
        .filter(|f| f.frontend.port == 30080)
        .map(|f| f.frontend.to_string())
        .collect();
    assert_eq!(
        node_ports,
        [
            "127.0.0.1:30080/TCP",
            "192.168.77.11:30080/TCP",
            "192.168.77.11:30080/TCP (external)",
        ]
    );
}
