//! `switchyard services`: the frontends and backends the kernel maps hold,
//! read from the pins, so it shows the datapath and not the agent's intent.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use serde::Serialize;
use switchyard_abi::{
    BACKEND_LOCAL, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    SCOPE_EXTERNAL,
};

use crate::{
    cli::OutputFormat,
    datapath::{
        DatapathError, MapReader, feature_probe,
        flow_table::{FlowTable, monotonic_now_ns},
        kernel_features::KernelFeatures,
        pinned::PinnedMaps,
    },
    node::conntrack::ConnectionView,
    plan::{datapath_state::DatapathState, map_op::RangeKey},
};

/// `switchyard services -o json`.
#[derive(Serialize)]
struct ServicesReport<'a> {
    frontends: &'a [FrontendView],
    /// The running kernel's features, probed by this command as the agent
    /// probes them at start (same kernel, same answers).
    kernel: &'a KernelFeatures,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// "internal" (connections from this node, socket hooks) or "external"
    /// (packets from outside, per-packet path).
    pub scope: &'static str,
    /// `sessionAffinity: ClientIP` timeout in seconds, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// Sources are NATed to this node for backends on other nodes
    /// (`externalTrafficPolicy: Cluster`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snat_remote: bool,
    /// `loadBalancerSourceRanges`, when they restrict the frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<Vec<String>>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    /// `None` when a slot names an id the backend map lacks.
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// On this node.
    pub local: bool,
}

pub fn render(pin_dir: &Path, format: OutputFormat) -> Result<String, DatapathError> {
    let state = PinnedMaps::open(pin_dir)?.read_state()?;
    let views = views(&state);
    let kernel = feature_probe::kernel_features();
    Ok(match format {
        OutputFormat::Json => json(&ServicesReport {
            frontends: &views,
            kernel,
        }),
        OutputFormat::Table => format!("{}\n{}", table(&views), kernel.table()),
    })
}

fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// `switchyard conntrack`: every tracked connection, then the count.
pub fn render_connections(pin_dir: &Path, format: OutputFormat) -> Result<String, DatapathError> {
    let table = FlowTable::open(pin_dir)?;
    let now = monotonic_now_ns();
    let views: Vec<ConnectionView> = table
        .connections()
        .iter()
        .map(|connection| ConnectionView::new(connection, now))
        .collect();
    Ok(match format {
        OutputFormat::Json => json(&views),
        OutputFormat::Table => {
            let mut text = String::new();
            for view in &views {
                let _infallible = writeln!(text, "{view}");
            }
            let _infallible = writeln!(text, "{} connections", views.len());
            text
        }
    })
}

pub fn views(state: &DatapathState) -> Vec<FrontendView> {
    state
        .active_frontends()
        .map(|(key, frontend)| FrontendView {
            ip: IpAddr::from(key.addr),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.proto),
            scope: if key.scope == SCOPE_EXTERNAL {
                "external"
            } else {
                "internal"
            },
            affinity_timeout: (frontend.affinity_timeout > 0).then_some(frontend.affinity_timeout),
            snat_remote: frontend.flags & FRONTEND_SNAT_REMOTE != 0,
            source_ranges: (frontend.flags & FRONTEND_SOURCE_RANGES != 0).then(|| {
                state
                    .source_ranges
                    .iter()
                    .filter(|range| {
                        range.range.addr == key.addr
                            && range.range.port == key.port
                            && range.range.proto == key.proto
                    })
                    .map(RangeKey::source)
                    .map(|cidr| cidr.to_string())
                    .collect()
            }),
            backends: frontend
                .active_slots()
                .map(|id| {
                    let id = id.unwrap_or(0);
                    let backend = state.backends.get(&id);
                    BackendView {
                        id,
                        ip: backend.map(|backend| IpAddr::from(backend.addr)),
                        port: backend.map(|backend| u16::from_be(backend.port)),
                        local: backend.is_some_and(|backend| backend.flags & BACKEND_LOCAL != 0),
                    }
                })
                .collect(),
        })
        .collect()
}

fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".to_owned(),
        PROTO_UDP => "UDP".to_owned(),
        PROTO_SCTP => "SCTP".to_owned(),
        other => format!("proto-{other}"),
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}:{port}"),
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
    }
}

fn table(views: &[FrontendView]) -> String {
    let rows: Vec<(String, String)> = views
        .iter()
        .map(|view| {
            let mut frontend = format!("{}/{}", endpoint(view.ip, view.port), view.protocol);
            if view.scope == "external" {
                frontend.push_str(" external");
            }
            if view.snat_remote {
                frontend.push_str(" snat");
            }
            if let Some(timeout) = view.affinity_timeout {
                let _infallible = write!(frontend, " affinity={timeout}s");
            }
            if let Some(ranges) = &view.source_ranges {
                let _infallible = write!(frontend, " from={}", ranges.join(","));
            }
            let backends = if view.backends.is_empty() {
                "(none: connections refused)".to_owned()
            } else {
                view.backends
                    .iter()
                    .map(|backend| match (backend.ip, backend.port) {
                        (Some(ip), Some(port)) => endpoint(ip, port),
                        _ => format!("missing-backend-{}", backend.id),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            (frontend, backends)
        })
        .collect();
    let width = rows
        .iter()
        .map(|(frontend, _)| frontend.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    let mut text = format!("{:<width$}  BACKENDS\n", "FRONTEND");
    for (frontend, backends) in rows {
        let _infallible = writeln!(text, "{frontend:<width$}  {backends}");
    }
    text
}
