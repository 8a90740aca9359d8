//! EndpointSlices to backends, as kube-proxy's `endpointslicecache.go`
//! reads them.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::debug;

use crate::{
    convert::{
        input_error::{InputError, ObjectRef, Reason},
        service::{namespace_of, port_protocol},
        topology::{Candidate, NodeContext, TrafficPolicy, select_endpoints},
    },
    model::{Endpoint, Frontend, Protocol, address::parse_ip_sloppy, name::NamespacedName},
};

/// The label that joins a slice to its Service, in the slice's namespace.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub fn slice_ref(slice: &EndpointSlice) -> ObjectRef {
    let meta = &slice.metadata;
    ObjectRef::new(
        "EndpointSlice",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEndpoint {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<String>,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

/// What the conversion needs of one EndpointSlice, read once when the
/// slice arrives: the sources keep this, not the object (a slice of four
/// endpoints is a few hundred bytes here, several kilobytes as an object).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedSlice {
    /// The Service it belongs to: its namespace and
    /// `kubernetes.io/service-name`.
    pub service: NamespacedName,
    /// The slice's own name, which orders duplicated endpoints.
    pub name: String,
    family: Family,
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

/// Reads one EndpointSlice (the sources leave out another proxy's, see
/// `proxy_selector`): what is usable of it (nothing for an FQDN one or one without a usable address type) and
/// each problem found, said once and left out.
pub fn read_slice(slice: &EndpointSlice) -> (Option<ParsedSlice>, Vec<InputError>) {
    let object = slice_ref(slice);
    let mut errors = Vec::new();
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        .filter(|name| !name.is_empty());
    let Some(service) = service else {
        errors.push(InputError::field(
            &object,
            "metadata.labels",
            Reason::MissingField,
            format!("missing label {SERVICE_NAME_LABEL}"),
        ));
        return (None, errors);
    };
    let service = NamespacedName::new(object.namespace.clone(), service.clone());
    let parsed = parse_slice(&object, slice, &mut errors).map(|parts| ParsedSlice {
        service,
        name: object.name,
        family: parts.family,
        ports: parts.ports,
        endpoints: parts.endpoints,
    });
    (parsed, errors)
}

/// [`read_slice`] over many: the usable slices, and every problem.
pub fn read_slices<E: Borrow<EndpointSlice>>(slices: &[E]) -> (Vec<ParsedSlice>, Vec<InputError>) {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for slice in slices {
        let (slice, found) = read_slice(slice.borrow());
        parsed.extend(slice);
        errors.extend(found);
    }
    (parsed, errors)
}

/// What `parse_slice` makes of a slice's own fields.
struct SliceParts {
    family: Family,
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

/// All usable slices, grouped by the Service they belong to, borrowed from
/// wherever they are kept.
#[derive(Clone, Debug, Default)]
pub struct SliceIndex<'a> {
    /// Each list in slice-name order, which decides which copy of a
    /// duplicated endpoint counts.
    by_service: BTreeMap<&'a NamespacedName, Vec<&'a ParsedSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new<P: Borrow<ParsedSlice>>(slices: &'a [P]) -> Self {
        let mut by_service: BTreeMap<&NamespacedName, Vec<&ParsedSlice>> = BTreeMap::new();
        for slice in slices.iter().map(Borrow::borrow) {
            by_service.entry(&slice.service).or_default().push(slice);
        }
        for slices in by_service.values_mut() {
            slices.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Self { by_service }
    }

    /// Every endpoint of one Service port on one frontend, deduplicated
    /// across slices, with the conditions and hints `topology` decides on.
    pub fn candidates(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        frontend: &Frontend,
    ) -> Vec<Candidate> {
        let key = NamespacedName::new(namespace, service);
        let Some(slices) = self.by_service.get(&key) else {
            return Vec::new();
        };
        let family = Family::of(frontend.ip);
        let mut seen = BTreeSet::new();
        let mut candidates = Vec::new();
        for slice in slices.iter().filter(|s| s.family == family) {
            let Some(port) = slice
                .ports
                .iter()
                .find(|p| p.name == port_name && p.protocol == frontend.protocol)
            else {
                continue;
            };
            for found in &slice.endpoints {
                let endpoint = Endpoint {
                    ip: found.ip,
                    port: port.port,
                    protocol: frontend.protocol,
                    // Decided with the node in view, by `topology`.
                    local: false,
                };
                // kube-proxy keeps the first copy in slice-name order.
                if seen.insert(endpoint) {
                    candidates.push(Candidate {
                        endpoint,
                        ready: found.ready,
                        serving: found.serving,
                        terminating: found.terminating,
                        node_name: found.node_name.clone(),
                        zone_hints: found.zone_hints.clone(),
                        node_hints: found.node_hints.clone(),
                    });
                }
            }
        }
        candidates
    }

    /// The backends with traffic policy Cluster and no topology: Ready
    /// endpoints, or the Serving-and-Terminating ones when none is Ready.
    pub fn endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        frontend: &Frontend,
    ) -> Vec<Endpoint> {
        let candidates = self.candidates(namespace, service, port_name, frontend);
        select_endpoints(&candidates, TrafficPolicy::Cluster, &NodeContext::default())
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one validation step per EndpointSlice field, in the order the API documents them"
)]
fn parse_slice(
    object: &ObjectRef,
    slice: &EndpointSlice,
    errors: &mut Vec<InputError>,
) -> Option<SliceParts> {
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => {
            debug!(slice = %object, "ignoring FQDN slice");
            return None;
        }
        "" => {
            errors.push(InputError::field(
                object,
                "addressType",
                Reason::MissingField,
                "missing",
            ));
            return None;
        }
        other => {
            errors.push(InputError::field(
                object,
                "addressType",
                Reason::Unsupported,
                format!("must be IPv4, IPv6 or FQDN, got {other:?}"),
            ));
            return None;
        }
    };

    let mut ports = Vec::new();
    for (index, port) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{index}]");
        // A slice may list a port with no number: it means "all ports",
        // which kube-proxy has no rule for. It is skipped, and said once.
        let number = match port.port {
            None | Some(0) => {
                errors.push(InputError::field(
                    object,
                    format!("{field}.port"),
                    Reason::InvalidPort,
                    "no port number; this port is ignored, as kube-proxy does",
                ));
                continue;
            }
            Some(number) => {
                if let Ok(number) = u16::try_from(number) {
                    number
                } else {
                    errors.push(InputError::field(
                        object,
                        format!("{field}.port"),
                        Reason::InvalidPort,
                        format!("must be 1-65535, got {number}"),
                    ));
                    continue;
                }
            }
        };
        let Some(protocol) = port_protocol(object, &field, port.protocol.as_deref(), errors) else {
            continue;
        };
        ports.push(SlicePort {
            name: port.name.clone().unwrap_or_default(),
            protocol,
            port: number,
        });
    }

    let mut endpoints = Vec::new();
    for (index, endpoint) in slice.endpoints.iter().enumerate() {
        // Only the first address counts: the API documents the others as
        // fungible and kube-proxy never reads them.
        let Some(text) = endpoint.addresses.first() else {
            continue;
        };
        let field = format!("endpoints[{index}].addresses[0]");
        let Some(ip) = parse_ip_sloppy(text) else {
            errors.push(InputError::field(
                object,
                field,
                Reason::InvalidIp,
                format!("not an IP address: {text:?}"),
            ));
            continue;
        };
        if Family::of(ip) != family {
            errors.push(InputError::field(
                object,
                field,
                Reason::InvalidIp,
                format!("{ip} does not match addressType {}", slice.address_type),
            ));
            continue;
        }
        let conditions = endpoint.conditions.as_ref();
        let hints = endpoint.hints.as_ref();
        endpoints.push(SliceEndpoint {
            ip,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: endpoint.node_name.clone(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|zone| zone.name.clone())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|node| node.name.clone())
                .collect(),
        });
    }
    Some(SliceParts {
        family,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests;
