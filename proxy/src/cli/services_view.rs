//! `switchyard services`: the frontends and backends the kernel maps hold,
//! read from the pins, so it shows the datapath and not the agent's intent.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use serde::Serialize;
use switchyard_abi::{
    BACKEND_LOCAL, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    SCOPE_EXTERNAL,
};

use crate::{
    cli::{
        OutputFormat,
        counts_view::{self, CountsView},
    },
    datapath::{
        DatapathError, MapReader, feature_probe,
        flow_table::{FlowTable, monotonic_now_ns},
        kernel_features::KernelFeatures,
        link_pins,
        pinned::PinnedMaps,
        stats_table::StatsTable,
        xdp_attach,
    },
    node::conntrack::ConnectionView,
    plan::{datapath_state::DatapathState, map_op::RangeKey},
};

/// `switchyard services -o json`.
#[derive(Serialize)]
struct ServicesReport<'a> {
    frontends: &'a [FrontendView],
    /// Devices the per-packet path runs at XDP on (its pinned links); tc
    /// serves every packet-path device besides.
    xdp_devices: &'a [String],
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
    /// How a new connection picks its backend: "random" or "maglev".
    pub algorithm: &'static str,
    /// Buckets of its Maglev table, and how many the map holds (fewer only
    /// while a table is being written, or after a hand edit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevView>,
    /// Sources are NATed to this node for backends on other nodes
    /// (`externalTrafficPolicy: Cluster`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snat_remote: bool,
    /// `loadBalancerSourceRanges`, when they restrict the frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<Vec<String>>,
    /// The Service port it serves, `namespace/name[:port]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its Service port's counters (all of the port's frontends together),
    /// when it has an entry of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CountsView>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct MaglevView {
    pub table_size: u32,
    pub buckets_present: usize,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    /// `None` when a slot names an id the backend map lacks.
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// On this node.
    pub local: bool,
    /// This backend's share of the Service port, when counted on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CountsView>,
}

pub fn render(pin_dir: &Path, format: OutputFormat) -> Result<String, DatapathError> {
    let state = PinnedMaps::open(pin_dir)?.read_state()?;
    // Pins of an older layout have no counters: shown without.
    let kernel_counts = StatsTable::open(pin_dir).ok();
    let views = views(&state, kernel_counts.as_ref());
    let kernel = feature_probe::kernel_features();
    let xdp_devices = link_pins::generations(pin_dir)?
        .last()
        .map(|generation| xdp_attach::pinned_devices(generation))
        .unwrap_or_default();
    Ok(match format {
        OutputFormat::Json => json(&ServicesReport {
            frontends: &views,
            xdp_devices: &xdp_devices,
            kernel,
        }),
        OutputFormat::Table => {
            let xdp = if xdp_devices.is_empty() {
                "none (tc alone)".to_owned()
            } else {
                xdp_devices.join(", ")
            };
            format!("{}\nXDP ON: {xdp}\n\n{}", table(&views), kernel.table())
        }
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

pub fn views(state: &DatapathState, kernel_counts: Option<&StatsTable>) -> Vec<FrontendView> {
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
            algorithm: if frontend.maglev_table_size == 0 {
                "random"
            } else {
                "maglev"
            },
            maglev: (frontend.maglev_table_size != 0).then(|| MaglevView {
                table_size: frontend.maglev_table_size,
                buckets_present: frontend.maglev.iter().filter(|&&slot| slot != 0).count(),
            }),
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
            service: frontend.name.as_ref().map(ToString::to_string),
            counters: counts_view::service(kernel_counts, frontend.counter),
            backends: (1..=frontend.count.unwrap_or(0))
                .map(|slot| {
                    let named = frontend.slots.get(&slot).copied().unwrap_or_default();
                    let (id, counter) = (named.backend_id, named.counter);
                    let backend = state.backends.get(&id);
                    BackendView {
                        id,
                        ip: backend.map(|backend| IpAddr::from(backend.addr)),
                        port: backend.map(|backend| u16::from_be(backend.port)),
                        local: backend.is_some_and(|backend| backend.flags & BACKEND_LOCAL != 0),
                        counters: counts_view::backend(kernel_counts, counter),
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
    let rows: Vec<[String; 4]> = views
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
            if let Some(maglev) = &view.maglev {
                let _infallible = write!(frontend, " maglev={}", maglev.table_size);
                if maglev.buckets_present != maglev.table_size as usize {
                    let _infallible = write!(frontend, "({} present)", maglev.buckets_present);
                }
            }
            if let Some(ranges) = &view.source_ranges {
                let _infallible = write!(frontend, " from={}", ranges.join(","));
            }
            let backends = if view.backends.is_empty() {
                "(none: connections refused)".to_owned()
            } else {
                view.backends
                    .iter()
                    .map(|backend| {
                        let mut text = match (backend.ip, backend.port) {
                            (Some(ip), Some(port)) => endpoint(ip, port),
                            _ => format!("missing-backend-{}", backend.id),
                        };
                        if let Some(counts) = &backend.counters {
                            let _infallible = write!(text, "({})", counts.connections());
                        }
                        text
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let service = view.service.clone().unwrap_or_else(|| "-".to_owned());
            let connections = view
                .counters
                .as_ref()
                .map_or_else(|| "-".to_owned(), |counts| counts.connections().to_string());
            [frontend, service, connections, backends]
        })
        .collect();
    let header = [
        "FRONTEND",
        "SERVICE",
        "CONNECTIONS",
        "BACKENDS (CONNECTIONS)",
    ];
    let widths: Vec<usize> = (0..3)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let _infallible = writeln!(
            text,
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    text
}
