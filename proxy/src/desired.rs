//! Kubernetes objects to the desired state: the one entry point of the
//! conversion layer.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::endpoints::SliceIndex;
use crate::input_error::{InputError, Reason};
use crate::model::{DesiredFrontend, DesiredState, HealthCheck, Scope};
use crate::service::{health_check_node_port, service_frontends, service_ref};
use crate::topology::{NodeContext, TrafficPolicy, select_endpoints};

/// Slots are `u16` and slot 0 is the frontend itself.
pub const MAX_BACKENDS_PER_FRONTEND: usize = u16::MAX as usize;

/// Everything the datapath should serve, and every problem found on the
/// way; a bad object or field is left out and the rest is still served.
pub fn desired_state(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeContext,
) -> (DesiredState, Vec<InputError>) {
    let (index, mut errors) = SliceIndex::build(slices);
    let mut state = DesiredState::default();
    let mut no_local = std::collections::BTreeSet::new();

    // Sorted so that which of two Services claiming one frontend wins does
    // not depend on watch event order.
    let mut ordered: Vec<&Service> = services.iter().collect();
    ordered.sort_by_cached_key(|service| service_ref(service));

    for service in ordered {
        let object = service_ref(service);
        let (frontends, service_errors) = service_frontends(service, &node.node_port_addresses);
        errors.extend(service_errors);
        let health_check_port = health_check_node_port(service);
        let mut local_endpoints = std::collections::BTreeSet::new();
        for claim in frontends {
            if let Some(owner) = state.frontends.get(&claim.frontend) {
                errors.push(InputError::field(
                    &object,
                    claim.field,
                    Reason::Conflict,
                    format!("{} is already served by {}", claim.frontend, owner.service),
                ));
                continue;
            }
            let candidates = index.candidates(
                &claim.service.namespace,
                &claim.service.name,
                &claim.service.port,
                &claim.frontend,
            );
            let mut backends = select_endpoints(&candidates, claim.policy, node);
            let mut flags = claim.flags;
            if claim.policy == TrafficPolicy::Local && backends.is_empty() {
                no_local.insert(claim.service.clone());
                if claim.frontend.scope == Scope::External
                    && !select_endpoints(&candidates, TrafficPolicy::Cluster, node).is_empty()
                {
                    flags |= switchyard_abi::FRONTEND_DROP_NO_LOCAL;
                }
            }
            if backends.len() > MAX_BACKENDS_PER_FRONTEND {
                errors.push(InputError::field(
                    &object,
                    claim.field,
                    Reason::TooManyEndpoints,
                    format!(
                        "{} has {} endpoints; serving the first {MAX_BACKENDS_PER_FRONTEND}",
                        claim.frontend,
                        backends.len()
                    ),
                ));
                backends.truncate(MAX_BACKENDS_PER_FRONTEND);
            }
            if claim.frontend.scope == Scope::External {
                local_endpoints.extend(backends.iter().filter(|b| b.local).map(|b| b.ip));
            }
            state.frontends.insert(
                claim.frontend,
                DesiredFrontend {
                    service: claim.service,
                    backends,
                    affinity_timeout: claim.affinity_timeout,
                    flags,
                    source_ranges: claim.source_ranges,
                },
            );
        }
        if let Some(port) = health_check_port {
            let check = HealthCheck {
                namespace: object.namespace.clone(),
                name: object.name.clone(),
                // A dual-stack pod has an endpoint per family; kube-proxy's
                // per-family proxiers each count their own.
                local_endpoints: local_endpoints
                    .iter()
                    .filter(|ip| ip.is_ipv4())
                    .count()
                    .max(local_endpoints.iter().filter(|ip| ip.is_ipv6()).count()),
            };
            if let Some(taken) = state.health_checks.get(&port) {
                errors.push(InputError::field(
                    &object,
                    "spec.healthCheckNodePort",
                    Reason::Conflict,
                    format!(
                        "port {port} is already served for {}/{}",
                        taken.namespace, taken.name
                    ),
                ));
            } else {
                state.health_checks.insert(port, check);
            }
        }
    }
    state.no_local_endpoints = no_local.len();
    (state, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects<T: serde::de::DeserializeOwned>(yamls: &[&str]) -> Vec<T> {
        yamls
            .iter()
            .map(|y| serde_yaml::from_str(y).unwrap())
            .collect()
    }

    fn render(state: &DesiredState) -> Vec<String> {
        state
            .frontends
            .iter()
            .map(|(frontend, desired)| {
                let backends: Vec<String> =
                    desired.backends.iter().map(ToString::to_string).collect();
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
                &objects(services),
                &objects(slices),
                &NodeContext::default(),
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
        let services =
            objects(&["metadata: {name: web}\nspec: {clusterIP: 'fd00::10', ports: [{port: 80}]}"]);
        let (state, errors) = desired_state(&services, &[slice], &NodeContext::default());
        let backends = &state.frontends.values().next().unwrap().backends;
        assert_eq!(backends.len(), MAX_BACKENDS_PER_FRONTEND);
        assert!(backends.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(backends[0].ip.to_string(), "fd00::");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reason(), "too_many_endpoints");
    }
}
