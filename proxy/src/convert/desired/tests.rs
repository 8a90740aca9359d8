use super::*;
use crate::convert::fixtures::objects;

fn render(state: &DesiredState) -> Vec<String> {
    state
        .frontends
        .iter()
        .map(|(frontend, desired)| {
            let backends: Vec<String> = desired.backends.iter().map(ToString::to_string).collect();
            format!("{frontend} {} -> [{}]", desired.service, backends.join(" "))
        })
        .collect()
}

#[test]
fn joins_services_and_slices() {
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            "named target ports resolve through the slice port",
            &[
                "metadata: {name: web}\nspec: {clusterIPs: [10.96.0.10, 'fd00::10'], ports: [{name: http, port: 80, targetPort: web}]}",
            ],
            &[
                "metadata: {name: web-4, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.1]}]",
                "metadata: {name: web-6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: ['fd00::1']}]",
            ],
            &[
                "10.96.0.10:80/TCP default/web:http -> [10.0.0.1:8080/TCP 10.0.0.2:8080/TCP]",
                "[fd00::10]:80/TCP default/web:http -> [[fd00::1]:8080/TCP]",
            ],
            &[],
        ),
        (
            "no endpoints still yields the frontend, to be refused",
            &["metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}"],
            &[],
            &["10.96.0.10:80/TCP default/web -> []"],
            &[],
        ),
        (
            "first Service by namespace/name keeps a contested frontend",
            &[
                "metadata: {name: b}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}",
                "metadata: {name: a}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}, {port: 81, name: x}]}",
            ],
            &[],
            &[
                "10.96.0.10:80/TCP default/a -> []",
                "10.96.0.10:81/TCP default/a:x -> []",
            ],
            &[
                "api: Service default/b: spec.ports[0]: 10.96.0.10:80/TCP is already served by default/a",
            ],
        ),
        (
            "slice errors surface once",
            &[
                "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}, {port: 443}]}",
            ],
            &["metadata: {name: s}\naddressType: IPv4\nendpoints: []"],
            &[
                "10.96.0.10:80/TCP default/web -> []",
                "10.96.0.10:443/TCP default/web -> []",
            ],
            &[
                "api: EndpointSlice default/s: metadata.labels: missing label kubernetes.io/service-name",
            ],
        ),
    ];
    for (name, services, slices, want, want_errors) in cases {
        let (state, errors) = desired_state(
            &objects::<Service>(services),
            &objects::<EndpointSlice>(slices),
            &NodeContext::default(),
        );
        assert_eq!(render(&state), *want, "{name}");
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, *want_errors, "{name}: errors");
    }
}

#[test]
fn declared_addresses_never_take_allocated_ones() {
    use crate::convert::claim::ExternalIpPolicy;
    const KUBE_DNS: &str = "metadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}";
    const THIEF: &str = "metadata: {name: dns-thief}\nspec: {clusterIP: 10.96.0.99, externalIPs: [10.96.0.10], ports: [{name: dns, port: 53, protocol: UDP}]}";
    const ON_NODE: &str = "metadata: {name: ssh}\nspec: {clusterIP: 10.96.0.22, externalIPs: [192.168.1.5, 198.51.100.7], ports: [{port: 22}]}";
    const NODE_PORT: &str = "metadata: {name: np}\nspec: {type: NodePort, clusterIP: 10.96.0.30, ports: [{port: 80, nodePort: 30080}]}";
    const NP_THIEF: &str = "metadata: {name: a-np-thief}\nspec: {clusterIP: 10.96.0.31, externalIPs: [192.168.1.5], ports: [{port: 30080}]}";
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Option<&'a [&'a str]>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            "an externalIP on kube-dns's ClusterIP takes neither scope, whatever the names' order",
            &[THIEF, KUBE_DNS],
            None,
            &[
                "10.96.0.10:53/UDP kube-system/kube-dns:dns -> []",
                "10.96.0.99:53/UDP default/dns-thief:dns -> []",
            ],
            &[
                "api: Service default/dns-thief: spec.ports[0] (spec.externalIPs[0]): 10.96.0.10:53/UDP is already served by kube-system/kube-dns:dns (an externalIP or LoadBalancer IP never takes an address and port another Service holds)",
                "api: Service default/dns-thief: spec.ports[0] (spec.externalIPs[0]): 10.96.0.10:53/UDP (external) is already served by kube-system/kube-dns:dns (an externalIP or LoadBalancer IP never takes an address and port another Service holds)",
            ],
        ),
        (
            "an externalIP on the node's own address is refused, the others served",
            &[ON_NODE],
            None,
            &[
                "10.96.0.22:22/TCP default/ssh -> []",
                "198.51.100.7:22/TCP default/ssh -> []",
                "198.51.100.7:22/TCP (external) default/ssh -> []",
            ],
            &[
                "api: Service default/ssh: spec.ports[0] (spec.externalIPs[0]): 192.168.1.5 is this node's own address; list it in --external-ip-ranges to serve it",
            ],
        ),
        (
            "the ranges flag restricts externalIPs and may allow the node's address",
            &[ON_NODE],
            Some(&["192.168.1.5/32"]),
            &[
                "10.96.0.22:22/TCP default/ssh -> []",
                "192.168.1.5:22/TCP default/ssh -> []",
                "192.168.1.5:22/TCP (external) default/ssh -> []",
            ],
            &[
                "api: Service default/ssh: spec.ports[0] (spec.externalIPs[1]): 198.51.100.7 is outside --external-ip-ranges",
            ],
        ),
        (
            "a NodePort keeps its port from an externalIP allowed on the node's address",
            &[NP_THIEF, NODE_PORT],
            Some(&["192.168.1.0/24"]),
            &[
                "10.96.0.30:80/TCP default/np -> []",
                "10.96.0.31:30080/TCP default/a-np-thief -> []",
                "192.168.1.5:30080/TCP default/np -> []",
                "192.168.1.5:30080/TCP (external) default/np -> []",
            ],
            &[
                "api: Service default/a-np-thief: spec.ports[0] (spec.externalIPs[0]): 192.168.1.5:30080/TCP is already served by default/np (an externalIP or LoadBalancer IP never takes an address and port another Service holds)",
                "api: Service default/a-np-thief: spec.ports[0] (spec.externalIPs[0]): 192.168.1.5:30080/TCP (external) is already served by default/np (an externalIP or LoadBalancer IP never takes an address and port another Service holds)",
            ],
        ),
    ];
    for (name, services, ranges, want, want_errors) in cases {
        let node_ip: std::net::IpAddr = "192.168.1.5".parse().unwrap();
        let node = NodeContext {
            node_port_addresses: vec![node_ip],
            external_ips: ExternalIpPolicy {
                allowed: ranges.map(|r| r.iter().map(|cidr| cidr.parse().unwrap()).collect()),
                node_addresses: vec![node_ip],
            },
            ..NodeContext::default()
        };
        let (state, errors) = desired_state(
            &objects::<Service>(services),
            &[] as &[EndpointSlice],
            &node,
        );
        assert_eq!(render(&state), *want, "{name}");
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, *want_errors, "{name}: errors");
    }
}

#[test]
fn caps_backends_at_slot_count() {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
    let mut slice: EndpointSlice = serde_yaml::from_str(
        "metadata: {name: big, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6",
    )
    .unwrap();
    slice.ports = Some(vec![EndpointPort {
        port: Some(80),
        ..Default::default()
    }]);
    slice.endpoints = (0..70_000u32)
        .map(|i| Endpoint {
            addresses: vec![format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff)],
            ..Default::default()
        })
        .collect();
    let services: Vec<Service> =
        objects(&["metadata: {name: web}\nspec: {clusterIP: 'fd00::10', ports: [{port: 80}]}"]);
    let (state, errors) = desired_state(&services, &[slice], &NodeContext::default());
    let backends = &state.frontends.values().next().unwrap().backends;
    assert_eq!(backends.len(), MAX_BACKENDS_PER_FRONTEND);
    assert!(backends.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(backends[0].ip.to_string(), "fd00::");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reason(), "too_many_endpoints");
}

fn names(pairs: &[(&str, &str)]) -> BTreeSet<NamespacedName> {
    pairs
        .iter()
        .map(|(ns, name)| NamespacedName::new(*ns, *name))
        .collect()
}

const WEB: &str =
    "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}";
const API: &str = "metadata: {name: api}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}";
const WEB_SLICE: &str = "metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]";
const WEB_SLICE_MOVED: &str = "metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]";
const API_SLICE: &str = "metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}\naddressType: IPv4\nports: [{port: 8443}]\nendpoints: [{addresses: [10.0.0.9]}]";

#[test]
fn an_update_lands_where_a_full_pass_does() {
    struct Step<'a> {
        name: &'a str,
        services: &'a [&'a str],
        slices: &'a [&'a str],
        changed: &'a [(&'a str, &'a str)],
    }
    let node = NodeContext::default();
    let steps: &[Step] = &[
        Step {
            name: "endpoints move",
            services: &[WEB, API],
            slices: &[WEB_SLICE_MOVED, API_SLICE],
            changed: &[("default", "web")],
        },
        Step {
            name: "a Service goes",
            services: &[API],
            slices: &[API_SLICE],
            changed: &[("default", "web")],
        },
        Step {
            name: "a Service comes",
            services: &[WEB, API],
            slices: &[WEB_SLICE, API_SLICE],
            changed: &[("default", "web")],
        },
        Step {
            name: "its slice goes",
            services: &[WEB, API],
            slices: &[API_SLICE],
            changed: &[("default", "web")],
        },
    ];
    let (mut state, _) = desired_state(
        &objects::<Service>(&[WEB, API]),
        &objects::<EndpointSlice>(&[WEB_SLICE, API_SLICE]),
        &node,
    );
    for Step {
        name,
        services,
        slices,
        changed,
    } in steps
    {
        let changed = names(changed);
        let services: Vec<Service> = objects(services);
        let slices: Vec<EndpointSlice> = objects(slices);
        let (full, _) = desired_state(&services, &slices, &node);
        let changed_services: Vec<Service> = services
            .iter()
            .filter(|s| {
                changed.contains(&NamespacedName::new(
                    "default",
                    s.metadata.name.clone().unwrap(),
                ))
            })
            .cloned()
            .collect();
        let (touched, _) =
            update_services(&mut state, &changed, &changed_services, &slices, &node).unwrap();
        assert_eq!(render(&state), render(&full), "{name}");
        assert_eq!(state.health_checks, full.health_checks, "{name}");
        assert_eq!(state.no_local, full.no_local, "{name}");
        assert!(
            touched
                .iter()
                .all(|f| !f.to_string().contains("10.96.0.11")),
            "{name}: {touched:?}"
        );
    }
}

#[test]
fn a_contested_frontend_needs_a_full_pass() {
    let node = NodeContext::default();
    let twin =
        "metadata: {name: twin}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}";
    let (mut state, errors) = desired_state(
        &objects::<Service>(&[WEB, twin]),
        &[] as &[EndpointSlice],
        &node,
    );
    assert_eq!(errors.len(), 1);
    let changed = names(&[("default", "web")]);
    let result = update_services(
        &mut state,
        &changed,
        &objects::<Service>(&[WEB]),
        &[] as &[EndpointSlice],
        &node,
    );
    assert_eq!(result.err(), Some(NeedsFullPass));

    // A new claim on a frontend someone else holds is one too.
    let (mut state, _) = desired_state(&objects::<Service>(&[WEB]), &[] as &[EndpointSlice], &node);
    let changed = names(&[("default", "twin")]);
    let result = update_services(
        &mut state,
        &changed,
        &objects::<Service>(&[twin]),
        &[] as &[EndpointSlice],
        &node,
    );
    assert_eq!(result.err(), Some(NeedsFullPass));
}

/// Maglev serves external frontends only, by the Service's annotation or
/// the node default; a bad annotation is one line and the default.
#[test]
fn maglev_tables_go_to_external_frontends_by_annotation_or_default() {
    use crate::model::balancing::{Algorithm, Balancing};
    let service = |annotation: &str| {
        format!(
            "metadata: {{name: web{annotation}}}\nspec: {{type: NodePort, clusterIP: 10.96.0.10, \
             ports: [{{port: 80, nodePort: 30080}}]}}"
        )
    };
    let cases = [
        ("", Algorithm::Random, 0, None),
        ("", Algorithm::Maglev, 1_021, None),
        (
            ", annotations: {service.switchyard.io/lb-algorithm: maglev}",
            Algorithm::Random,
            1_021,
            None,
        ),
        (
            ", annotations: {service.switchyard.io/lb-algorithm: random}",
            Algorithm::Maglev,
            0,
            None,
        ),
        (
            ", annotations: {service.switchyard.io/lb-algorithm: ring}",
            Algorithm::Maglev,
            1_021,
            Some(
                "api: Service default/web: \
                 metadata.annotations[service.switchyard.io/lb-algorithm]: \"ring\" is no \
                 algorithm: random or maglev; using the node default",
            ),
        ),
    ];
    for (annotation, default, want_size, want_error) in cases {
        let node = NodeContext {
            node_port_addresses: vec!["192.168.1.5".parse().unwrap()],
            ..NodeContext::default()
        }
        .with_balancing(Balancing::new(default, 1_021).unwrap());
        let services: Vec<Service> = objects(&[service(annotation).as_str()]);
        let (state, errors) = desired_state(&services, &[] as &[EndpointSlice], &node);
        for (frontend, want) in &state.frontends {
            let size = if frontend.scope == Scope::External {
                want_size
            } else {
                0
            };
            assert_eq!(
                want.maglev_table_size, size,
                "{annotation} {default}: {frontend}"
            );
        }
        assert_eq!(
            state.frontends.len(),
            3,
            "ClusterIP, NodePort, NodePort (external)"
        );
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            want_error.into_iter().collect::<Vec<_>>(),
            "{annotation}"
        );
    }
}
