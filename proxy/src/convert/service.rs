//! Services to frontends, as kube-proxy's `serviceport.go` reads them.

use std::net::IpAddr;

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use switchyard_abi::FRONTEND_CLUSTER_IP;
use tracing::debug;

use crate::{
    convert::{
        claim::AddressOrigin,
        input_error::{InputError, ObjectRef, Reason},
        topology::TrafficPolicy,
    },
    model::{
        Frontend, Protocol, Scope, ServicePortName,
        address::{Cidr, parse_ip_sloppy},
        balancing::{ALGORITHM_ANNOTATION, Algorithm},
    },
};

mod external;

pub use external::health_check_node_port;

/// Set on objects another proxy implementation serves; kube-proxy's
/// informers exclude them by label selector, on Services and slices alike.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The namespace an object without one lives in, as `kubectl apply` puts it.
pub const DEFAULT_NAMESPACE: &str = "default";

pub(crate) fn namespace_of(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        None | Some("") => DEFAULT_NAMESPACE,
        Some(namespace) => namespace,
    }
}

/// A port's `protocol` field: TCP when absent, as the API server defaults
/// it; an unknown one is reported and the port skipped (`None`).
pub(crate) fn port_protocol(
    object: &ObjectRef,
    field: &str,
    protocol: Option<&str>,
    errors: &mut Vec<InputError>,
) -> Option<Protocol> {
    match protocol {
        None | Some("") => Some(Protocol::Tcp),
        Some(text) => match text.parse() {
            Ok(protocol) => Some(protocol),
            Err(error) => {
                errors.push(InputError::field(
                    object,
                    format!("{field}.protocol"),
                    Reason::Unsupported,
                    crate::model::UnknownProtocol::to_string(&error),
                ));
                None
            }
        },
    }
}

pub fn service_ref(service: &Service) -> ObjectRef {
    let meta = &service.metadata;
    ObjectRef::new(
        "Service",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// One port of one Service on one of its cluster IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFrontend {
    pub frontend: Frontend,
    pub service: ServicePortName,
    /// The port's place in the Service, for errors: `spec.ports[1]`.
    pub field: String,
    /// `spec.internalTrafficPolicy`, which governs cluster IPs.
    pub policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 is none.
    pub affinity_timeout: u32,
    /// The Service's `lb-algorithm` annotation; `None`: the node default.
    pub algorithm: Option<Algorithm>,
    /// `switchyard_abi::FRONTEND_*` bits.
    pub flags: u16,
    /// `loadBalancerSourceRanges` of the frontend's family.
    pub source_ranges: Vec<Cidr>,
    /// Who gave the Service this address, which decides who keeps it
    /// when another Service claims it too.
    pub origin: AddressOrigin,
}

/// A Service's ports, validated once and crossed with each cluster IP.
struct PortSpec {
    name: String,
    port: u16,
    protocol: Protocol,
    /// `nodePort`, when the Service has one.
    node_port: Option<u16>,
    field: String,
}

/// What the conversion needs of one Service, read once when it arrives
/// (the sources keep this, not the object): its frontends on its own
/// addresses, and what is crossed with the node's NodePort addresses at
/// each pass, since those change without the Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedService {
    pub object: ObjectRef,
    /// Frontends on cluster IPs, in spec order.
    cluster: Vec<ServiceFrontend>,
    /// Each port's frontend (its address left unset) and its nodePort.
    ports: Vec<(ServiceFrontend, Option<u16>)>,
    exposure: external::Exposure,
    /// kube-proxy's health check node port, for `externalTrafficPolicy:
    /// Local` Services that have one.
    pub health_check_port: Option<u16>,
}

impl ParsedService {
    /// The frontends the Service asks for on a node whose NodePorts answer
    /// on `node_port_addresses`, in spec order: cluster IPs, then NodePorts,
    /// externalIPs and LoadBalancer IPs.
    pub fn frontends(&self, node_port_addresses: &[IpAddr]) -> Vec<ServiceFrontend> {
        let mut frontends = self.cluster.clone();
        for (base, node_port) in &self.ports {
            self.exposure
                .frontends(base, *node_port, node_port_addresses, &mut frontends);
        }
        frontends
    }
}

/// The frontends a Service asks for (see [`read_service`] and
/// [`ParsedService::frontends`]).
pub fn service_frontends(
    service: &Service,
    node_port_addresses: &[IpAddr],
) -> (Vec<ServiceFrontend>, Vec<InputError>) {
    let (parsed, errors) = read_service(service);
    let frontends = parsed.map_or_else(Vec::new, |parsed| parsed.frontends(node_port_addresses));
    (frontends, errors)
}

/// [`read_service`] over many: the Services to serve, and every problem.
pub fn read_services<S: std::borrow::Borrow<Service>>(
    services: &[S],
) -> (Vec<ParsedService>, Vec<InputError>) {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for service in services {
        let (service, found) = read_service(service.borrow());
        parsed.extend(service);
        errors.extend(found);
    }
    (parsed, errors)
}

/// Reads one Service (the sources leave out those of another proxy, see
/// `proxy_selector`): nothing for a headless or an ExternalName one; bad IPs and ports are reported and left out while
/// the rest of the Service is still served.
pub fn read_service(service: &Service) -> (Option<ParsedService>, Vec<InputError>) {
    let object = service_ref(service);
    let mut errors = Vec::new();
    let Some(spec) = &service.spec else {
        errors.push(InputError::field(
            &object,
            "spec",
            Reason::MissingField,
            "missing",
        ));
        return (None, errors);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        debug!(service = %object, "skipping ExternalName service");
        return (None, errors);
    }

    let (ips_field, texts): (&str, Vec<&str>) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => {
            ("spec.clusterIPs", ips.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    match texts.first().copied() {
        Some("None") => {
            debug!(service = %object, "skipping headless service");
            return (None, errors);
        }
        // kube-proxy skips these silently because the API server always
        // allocates one; only a hand-written manifest lacks it, and its
        // author wants to know why nothing is served.
        None | Some("") => {
            errors.push(InputError::field(
                &object,
                "spec.clusterIP",
                Reason::MissingField,
                "missing; standalone mode allocates no cluster IPs",
            ));
            return (None, errors);
        }
        Some(_) => {}
    }

    let ips = cluster_ips(&object, ips_field, &texts, &mut errors);
    let ports = port_specs(&object, service, &mut errors);
    let namespace = object.namespace.clone();
    let policy = internal_traffic_policy(
        &object,
        spec.internal_traffic_policy.as_deref(),
        &mut errors,
    );
    let affinity_timeout = client_ip_affinity(&object, spec, &mut errors);
    let algorithm = algorithm(&object, service, &mut errors);
    // One port on one cluster IP; external frontends start from it too.
    let port_frontend = |ip: IpAddr, port: &PortSpec| ServiceFrontend {
        frontend: Frontend {
            ip,
            port: port.port,
            protocol: port.protocol,
            scope: Scope::Internal,
        },
        service: ServicePortName {
            namespace: namespace.clone(),
            name: object.name.clone(),
            port: port.name.clone(),
        },
        field: port.field.clone(),
        policy,
        affinity_timeout,
        algorithm,
        flags: 0,
        source_ranges: Vec::new(),
        origin: AddressOrigin::Allocated,
    };
    let cluster: Vec<ServiceFrontend> = ips
        .iter()
        .flat_map(|&ip| ports.iter().map(move |port| (ip, port)))
        .map(|(ip, port)| ServiceFrontend {
            flags: FRONTEND_CLUSTER_IP,
            ..port_frontend(ip, port)
        })
        .collect();
    let exposure = external::Exposure::read(&object, service, &ips, &mut errors);
    let ports = ports
        .iter()
        .map(|port| {
            (
                port_frontend(IpAddr::from([0, 0, 0, 0]), port),
                port.node_port,
            )
        })
        .collect();
    let parsed = ParsedService {
        health_check_port: health_check_node_port(service),
        object,
        cluster,
        ports,
        exposure,
    };
    (Some(parsed), errors)
}

/// kube-proxy's default and ceiling for `timeoutSeconds` (3 hours, 1 day).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// `sessionAffinity: ClientIP` -> its timeout; `None` or absent -> 0.
fn client_ip_affinity(
    object: &ObjectRef,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    errors: &mut Vec<InputError>,
) -> u32 {
    match spec.session_affinity.as_deref() {
        None | Some("" | "None") => 0,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(seconds @ 1..=MAX_AFFINITY_TIMEOUT) => seconds.unsigned_abs(),
                Some(other) => {
                    errors.push(InputError::field(
                        object,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        Reason::InvalidPort,
                        format!("must be 1-{MAX_AFFINITY_TIMEOUT}, got {other}; using {DEFAULT_AFFINITY_TIMEOUT}"),
                    ));
                    DEFAULT_AFFINITY_TIMEOUT
                }
            }
        }
        Some(other) => {
            errors.push(InputError::field(
                object,
                "spec.sessionAffinity",
                Reason::Unsupported,
                format!("must be None or ClientIP, got {other:?}; using None"),
            ));
            0
        }
    }
}

/// The [`ALGORITHM_ANNOTATION`]: absent is the node default; a value that
/// names no algorithm is reported and the default used.
fn algorithm(
    object: &ObjectRef,
    service: &Service,
    errors: &mut Vec<InputError>,
) -> Option<Algorithm> {
    let text = service
        .metadata
        .annotations
        .as_ref()?
        .get(ALGORITHM_ANNOTATION)?;
    match text.trim().parse() {
        Ok(algorithm) => Some(algorithm),
        Err(bad) => {
            errors.push(InputError::field(
                object,
                format!("metadata.annotations[{ALGORITHM_ANNOTATION}]"),
                Reason::Unsupported,
                format!("{bad}; using the node default"),
            ));
            None
        }
    }
}

fn internal_traffic_policy(
    object: &ObjectRef,
    text: Option<&str>,
    errors: &mut Vec<InputError>,
) -> TrafficPolicy {
    traffic_policy(object, "spec.internalTrafficPolicy", text, errors)
}

/// Absent means Cluster, as the API server defaults it; an unknown value is
/// reported and served as Cluster, which reaches every endpoint.
fn traffic_policy(
    object: &ObjectRef,
    field: &str,
    text: Option<&str>,
    errors: &mut Vec<InputError>,
) -> TrafficPolicy {
    match text {
        None | Some("" | "Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            errors.push(InputError::field(
                object,
                field,
                Reason::Unsupported,
                format!("must be Cluster or Local, got {other:?}; using Cluster"),
            ));
            TrafficPolicy::Cluster
        }
    }
}

/// kube-proxy runs one proxier per IP family and each takes the first
/// cluster IP of its family, so a second IP of the same family is never
/// served; saying so beats silently ignoring it.
fn cluster_ips(
    object: &ObjectRef,
    field: &str,
    texts: &[&str],
    errors: &mut Vec<InputError>,
) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let at = if field == "spec.clusterIPs" {
            format!("{field}[{index}]")
        } else {
            field.to_owned()
        };
        let Some(ip) = parse_ip_sloppy(text) else {
            errors.push(InputError::field(
                object,
                at,
                Reason::InvalidIp,
                format!("not an IP address: {text:?}"),
            ));
            continue;
        };
        if let Some(first) = ips.iter().find(|other| other.is_ipv4() == ip.is_ipv4()) {
            errors.push(InputError::field(
                object,
                at,
                Reason::Unsupported,
                format!(
                    "{ip} is a second address of the family of {first}; only the first is served"
                ),
            ));
            continue;
        }
        ips.push(ip);
    }
    ips
}

fn port_specs(
    object: &ObjectRef,
    service: &Service,
    errors: &mut Vec<InputError>,
) -> Vec<PortSpec> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_deref())
        .unwrap_or_default();
    if ports.is_empty() {
        debug!(service = %object, "service has no ports");
    }
    let mut specs = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        let Some(protocol) = port_protocol(object, &field, port.protocol.as_deref(), errors) else {
            continue;
        };
        // k8s-openapi reads a missing `port` as 0, so 0 covers both.
        let number = match u16::try_from(port.port) {
            Ok(number) if number != 0 => number,
            _ => {
                let got = match port.port {
                    0 => "0 or nothing".to_owned(),
                    other => other.to_string(),
                };
                errors.push(InputError::field(
                    object,
                    format!("{field}.port"),
                    Reason::InvalidPort,
                    format!("must be 1-65535, got {got}"),
                ));
                continue;
            }
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(number @ 1..=65_535) => u16::try_from(number).ok(),
            Some(other) => {
                errors.push(InputError::field(
                    object,
                    format!("{field}.nodePort"),
                    Reason::InvalidPort,
                    format!("must be 1-65535, got {other}"),
                ));
                None
            }
        };
        specs.push(PortSpec {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
            node_port,
            field,
        });
    }
    specs
}

#[cfg(test)]
mod tests;
