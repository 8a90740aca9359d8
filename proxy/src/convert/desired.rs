//! Kubernetes objects to the desired state: the one entry point of the
//! conversion layer.

use std::{borrow::Borrow, collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    convert::{
        claim::AddressOrigin,
        endpoints::{ParsedSlice, SliceIndex, read_slices},
        input_error::{InputError, ObjectRef, Reason},
        service::{ParsedService, ServiceFrontend, read_services},
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
        counters: node.counters.clone(),
        ..DesiredState::default()
    };
    // Sorted so that which of two Services claiming one frontend wins does
    // not depend on watch event order.
    let mut ordered: Vec<&ParsedService> = services.iter().map(Borrow::borrow).collect();
    ordered.sort_by(|a, b| a.object.cmp(&b.object));
    add_services(&mut state, &ordered, &index, node, &mut errors);
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
    state
        .no_local
        .retain(|(service, _)| !owned_by_changed(service));

    let index = SliceIndex::new(slices);
    let mut errors = Vec::new();
    let mut ordered: Vec<&ParsedService> = services.iter().map(Borrow::borrow).collect();
    ordered.sort_by(|a, b| a.object.cmp(&b.object));
    let contests = add_services(state, &ordered, &index, node, &mut errors);
    // A contest with a Service this update did not touch: which one wins
    // depends on both, and only a full pass sees both.
    let foreign = contests.frontends.iter().any(|frontend| {
        state
            .frontends
            .get(frontend)
            .is_none_or(|owner| !owned_by_changed(&owner.service))
    });
    if foreign || !contests.ports.is_empty() {
        return Err(NeedsFullPass);
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

/// Adds the Services' frontends and health checks to `state`: every
/// allocated address (cluster IPs, NodePorts) first, then the declared
/// ones (externalIPs, LoadBalancer IPs), each first come first served in
/// the order given, so a declared address never takes an allocated one.
fn add_services(
    state: &mut DesiredState,
    services: &[&ParsedService],
    index: &SliceIndex<'_>,
    node: &NodeContext,
    errors: &mut Vec<InputError>,
) -> Contests {
    let mut contests = Contests::default();
    // The endpoints on this node of each Service with a health check.
    let mut local: Vec<BTreeSet<IpAddr>> = vec![BTreeSet::new(); services.len()];
    for declared in [false, true] {
        for (service, local) in services.iter().zip(&mut local) {
            let claims = service
                .frontends(&node.node_port_addresses)
                .into_iter()
                .filter(|claim| claim.origin.declared() == declared);
            let local = service.health_check_port.map(|_| local);
            add_claims(
                state,
                service,
                claims,
                index,
                node,
                local,
                errors,
                &mut contests,
            );
        }
    }
    for (service, local) in services.iter().zip(&local) {
        add_health_check(state, service, local, errors, &mut contests);
    }
    contests
}

/// Adds the frontends of one Service that no other Service holds yet;
/// records its Ready endpoints on this node in `local`, when given.
#[expect(clippy::too_many_arguments, reason = "one pass's working state")]
fn add_claims(
    state: &mut DesiredState,
    service: &ParsedService,
    claims: impl Iterator<Item = ServiceFrontend>,
    index: &SliceIndex<'_>,
    node: &NodeContext,
    mut local: Option<&mut BTreeSet<IpAddr>>,
    errors: &mut Vec<InputError>,
    contests: &mut Contests,
) {
    let object = &service.object;
    for claim in claims {
        if claim.origin == AddressOrigin::ExternalIp
            && let Some(refusal) = node.external_ips.refusal(claim.frontend.ip)
        {
            // Said once per address, not once per scope.
            if claim.frontend.scope == Scope::Internal {
                errors.push(InputError::field(
                    object,
                    claim.field,
                    Reason::Refused,
                    refusal,
                ));
            }
            continue;
        }
        if let Some((held, owner)) = holder(state, object, &claim) {
            let rule = if claim.origin.declared() {
                " (an externalIP or LoadBalancer IP never takes an address and port another Service holds)"
            } else {
                ""
            };
            errors.push(InputError::field(
                object,
                claim.field,
                Reason::Conflict,
                format!("{} is already served by {owner}{rule}", claim.frontend),
            ));
            state.contested.insert(held);
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
            state
                .no_local
                .insert((claim.service.clone(), claim.frontend.scope));
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
        if let (Scope::External, Some(local)) = (claim.frontend.scope, local.as_deref_mut()) {
            // kube-proxy's health check counts Ready local endpoints only:
            // a node left with terminating ones answers 503 and is drained,
            // while they still serve as the fallback.
            local.extend(
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
                // Maglev serves connections from outside only: the socket
                // path has no flow to hash before the kernel picks a port.
                maglev_table_size: if claim.frontend.scope == Scope::External {
                    node.balancing.table_size_for(claim.algorithm)
                } else {
                    0
                },
                flags,
                source_ranges: claim.source_ranges,
            },
        );
    }
}

/// The frontend another Service holds that `claim` would take, and who
/// holds it. A declared address is also kept off a port another Service
/// holds in the other scope: an externalIP on a cluster IP would otherwise
/// take that cluster IP's traffic from outside the node.
fn holder(
    state: &DesiredState,
    object: &ObjectRef,
    claim: &ServiceFrontend,
) -> Option<(Frontend, ServicePortName)> {
    if let Some(owner) = state.frontends.get(&claim.frontend) {
        return Some((claim.frontend, owner.service.clone()));
    }
    if !claim.origin.declared() {
        return None;
    }
    let twin = Frontend {
        scope: match claim.frontend.scope {
            Scope::Internal => Scope::External,
            Scope::External => Scope::Internal,
        },
        ..claim.frontend
    };
    let owner = state.frontends.get(&twin)?;
    (owner.service.namespace != object.namespace || owner.service.name != object.name)
        .then(|| (twin, owner.service.clone()))
}

/// kube-proxy's health check node port of one Service, counting `local`.
fn add_health_check(
    state: &mut DesiredState,
    service: &ParsedService,
    local: &BTreeSet<IpAddr>,
    errors: &mut Vec<InputError>,
    contests: &mut Contests,
) {
    let Some(port) = service.health_check_port else {
        return;
    };
    let object = &service.object;
    let check = HealthCheck {
        namespace: object.namespace.clone(),
        name: object.name.clone(),
        // A dual-stack pod has an endpoint per family; kube-proxy's
        // per-family proxiers each count their own.
        local_endpoints: local
            .iter()
            .filter(|ip| ip.is_ipv4())
            .count()
            .max(local.iter().filter(|ip| ip.is_ipv6()).count()),
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
mod tests;
