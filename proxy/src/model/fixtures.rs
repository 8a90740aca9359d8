//! Builders the unit tests of every layer share: frontends, endpoints and
//! desired states small enough to read in a test line.

use crate::model::{
    DesiredFrontend, DesiredState, Endpoint, Frontend, Protocol, Scope, ServicePortName,
};

/// A TCP ClusterIP frontend.
pub fn frontend(vip: &str, port: u16) -> Frontend {
    Frontend {
        ip: vip.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
        scope: Scope::Internal,
    }
}

/// A TCP pod endpoint on port 8080 at `10.244.0.<last_octet>`.
pub fn endpoint(last_octet: u8) -> Endpoint {
    Endpoint {
        ip: format!("10.244.0.{last_octet}").parse().unwrap(),
        port: 8080,
        protocol: Protocol::Tcp,
        local: false,
    }
}

/// `[(vip, port, backend octets)]` -> desired state.
pub fn desired(spec: &[(&str, u16, &[u8])]) -> DesiredState {
    let mut state = DesiredState::default();
    for (vip, port, octets) in spec {
        let mut backends: Vec<Endpoint> = octets.iter().map(|&o| endpoint(o)).collect();
        backends.sort();
        state.frontends.insert(
            frontend(vip, *port),
            DesiredFrontend {
                // A Service of its own per frontend, as a ClusterIP is.
                service: ServicePortName {
                    namespace: "default".into(),
                    name: format!("svc-{}-{port}", vip.replace([':', '.'], "-")),
                    port: String::new(),
                },
                backends,
                draining: Vec::new(),
                affinity_timeout: 0,
                maglev_table_size: 0,
                flags: 0,
                source_ranges: Vec::new(),
            },
        );
    }
    state
}
