//! Kubernetes objects to the desired state: the one entry point of the
//! conversion layer.

use std::{borrow::Borrow, collections::BTreeSet};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    convert::{
        endpoints::{ParsedSlice, SliceIndex, read_slices},
        input_error::{InputError, Reason},
        service::{ParsedService, read_services},
        topology::{Candidate, NodeContext, TrafficPolicy, select_endpoints},
    },
    model::{
        DesiredFrontend, DesiredState, Endpoint, Frontend, HealthCheck, Scope, ServicePortName,
        name::NamespacedName,
    },
};

/// Slots are `u16` and slot 0 is the frontend itself.
pub const MAX_BACKENDS_PER_FRONTEND: usize = u16::MAX as usize;

/// Everything the datapath should serve, and every problem found on the
/// way; a bad object or field is left out and the rest is still served.
pub fn desired_state<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    node: &NodeContext,
) -> (DesiredState, Vec<InputError>) {
    let (slices, mut errors) = read_slices(slices);
    let (services, service_errors) = read_services(services);
    errors.extend(service_errors);
    let (state, more) = desired_state_from(&services, &slices, node);
    errors.extend(more);
    (state, errors)
}

/// [`desired_state`] from Services and slices read when they arrived (their
/// problems were reported then).
pub fn desired_state_from<S: Borrow<ParsedService>, P: Borrow<ParsedSlice>>(
    services: &[S],
    slices: &[P],
    node: &NodeContext,
) -> (DesiredState, Vec<InputError>) {
    let index = SliceIndex::new(slices);
    let mut errors = Vec::new();
    let mut state = DesiredState {
        service_cidrs: node.service_cidrs.iter().copied().collect(),
        ..DesiredState::default()
    };
    // Sorted so that which of two Services claiming one frontend wins does
    // not depend on watch event order.
    let mut ordered: Vec<&ParsedService> = services.iter().map(Borrow::borrow).collect();
    ordered.sort_by(|a, b| a.object.cmp(&b.object));
    for service in ordered {
        add_service(&mut state, service, &index, node, &mut errors);
    }
    (state, errors)
}

/// A change [`update_services`] cannot apply on its own: it touches a
/// frontend or port another Service also claims.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsFullPass;

/// Applies changes to a few Services to `state`, which a full pass (and
/// maybe earlier updates) built from the same node context: their old
/// entries go, their new ones come in. `services` holds the changed ones
/// that still exist, `slices` every EndpointSlice of the changed ones.
/// Returns the frontends whose desired entry may have changed.
///
/// On `Err` the state is half-updated and must be rebuilt by a full pass.
pub fn update_services<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    state: &mut DesiredState,
    changed: &BTreeSet<NamespacedName>,
    services: &[S],
    slices: &[E],
    node: &NodeContext,
) -> Result<(BTreeSet<Frontend>, Vec<InputError>), NeedsFullPass> {
    let (slices, mut errors) = read_slices(slices);
    let (services, service_errors) = read_services(services);
    errors.extend(service_errors);
    let (touched, more) = update_services_from(state, changed, &services, &slices, node)?;
    errors.extend(more);
    Ok((touched, errors))
}

/// [`update_services`] from Services and slices read when they arrived.
pub fn update_services_from<S: Borrow<ParsedService>, P: Borrow<ParsedSlice>>(
    state: &mut DesiredState,
    changed: &BTreeSet<NamespacedName>,
    services: &[S],
    slices: &[P],
    node: &NodeContext,
) -> Result<(BTreeSet<Frontend>, Vec<InputError>), NeedsFullPass> {
    let owned_by_changed = |service: &ServicePortName| {
        changed.iter().any(|NamespacedName { namespace, name }| {
            *namespace == service.namespace && *name == service.name
        })
    };
    let mut touched = BTreeSet::new();
    for service in changed {
        for frontend in state.owners.remove(service).unwrap_or_default() {
            if state.contested.contains(&frontend) {
                return Err(NeedsFullPass);
            }
            state.frontends.remove(&frontend);
            touched.insert(frontend);
        }
    }
    let stale_ports: Vec<u16> = state
        .health_checks
        .iter()
        .filter(|(_, check)| {
            changed.contains(&NamespacedName::new(
                check.namespace.clone(),
                check.name.clone(),
            ))
        })
        .map(|(port, _)| *port)
        .collect();
    for port in stale_ports {
        if state.contested_ports.contains(&port) {
            return Err(NeedsFullPass);
        }
        state.health_checks.remove(&port);
    }
    state.no_local.retain(|service| !owned_by_changed(service));

    let index = SliceIndex::new(slices);
    let mut errors = Vec::new();
    let mut ordered: Vec<&ParsedService> = services.iter().map(Borrow::borrow).collect();
    ordered.sort_by(|a, b| a.object.cmp(&b.object));
    for service in ordered {
        let contests = add_service(state, service, &index, node, &mut errors);
        // A contest with a Service this update did not touch: which one
        // wins depends on both, and only a full pass sees both.
        let foreign = contests.frontends.iter().any(|frontend| {
            state
                .frontends
                .get(frontend)
                .is_none_or(|owner| !owned_by_changed(&owner.service))
        });
        if foreign || !contests.ports.is_empty() {
            return Err(NeedsFullPass);
        }
    }
    for service in changed {
        touched.extend(state.owners.get(service).into_iter().flatten().copied());
    }
    Ok((touched, errors))
}

/// What one Service claimed that another already held.
#[derive(Default)]
struct Contests {
    frontends: Vec<Frontend>,
    ports: Vec<u16>,
}

/// Adds one Service's frontends and health check to `state`, first come
/// first served.
fn add_service(
    state: &mut DesiredState,
    service: &ParsedService,
    index: &SliceIndex<'_>,
    node: &NodeContext,
    errors: &mut Vec<InputError>,
) -> Contests {
    let mut contests = Contests::default();
    let object = &service.object;
    let frontends = service.frontends(&node.node_port_addresses);
    let health_check_port = service.health_check_port;
    let mut local_endpoints = BTreeSet::new();
    for claim in frontends {
        if let Some(owner) = state.frontends.get(&claim.frontend) {
            errors.push(InputError::field(
                object,
                claim.field,
                Reason::Conflict,
                format!("{} is already served by {}", claim.frontend, owner.service),
            ));
            state.contested.insert(claim.frontend);
            contests.frontends.push(claim.frontend);
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
            state.no_local.insert(claim.service.clone());
            // Endpoints elsewhere but none here: kube-proxy drops (both
            // policies); with none anywhere it rejects.
            if !select_endpoints(&candidates, TrafficPolicy::Cluster, node).is_empty() {
                flags |= switchyard_abi::FRONTEND_DROP_NO_LOCAL;
            }
        }
        if backends.len() > MAX_BACKENDS_PER_FRONTEND {
            errors.push(InputError::field(
                object,
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
            // kube-proxy's health check counts Ready local endpoints only:
            // a node left with terminating ones answers 503 and is drained,
            // while they still serve as the fallback.
            local_endpoints.extend(
                backends
                    .iter()
                    .filter(|b| b.local && is_ready(&candidates, b))
                    .map(|b| b.ip),
            );
        }
        state
            .owners
            .entry(NamespacedName::new(
                object.namespace.clone(),
                object.name.clone(),
            ))
            .or_default()
            .insert(claim.frontend);
        state.frontends.insert(
            claim.frontend,
            DesiredFrontend {
                service: claim.service,
                draining: draining(&candidates, &backends),
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
                object,
                "spec.healthCheckNodePort",
                Reason::Conflict,
                format!(
                    "port {port} is already served for {}/{}",
                    taken.namespace, taken.name
                ),
            ));
            state.contested_ports.insert(port);
            contests.ports.push(port);
        } else {
            state.health_checks.insert(port, check);
        }
    }
    contests
}

fn is_ready(candidates: &[Candidate], backend: &Endpoint) -> bool {
    candidates
        .iter()
        .any(|c| c.ready && c.endpoint.ip == backend.ip && c.endpoint.port == backend.port)
}

/// The serving candidates that are not among `backends`, sorted.
fn draining(candidates: &[Candidate], backends: &[Endpoint]) -> Vec<Endpoint> {
    let mut draining: Vec<Endpoint> = candidates
        .iter()
        .filter(|c| {
            (c.ready || c.serving)
                && !backends
                    .iter()
                    .any(|b| b.ip == c.endpoint.ip && b.port == c.endpoint.port)
        })
        .map(|c| c.endpoint)
        .collect();
    draining.sort();
    draining
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::fixtures::objects;

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
        let twin = "metadata: {name: twin}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}";
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
        let (mut state, _) =
            desired_state(&objects::<Service>(&[WEB]), &[] as &[EndpointSlice], &node);
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
}
