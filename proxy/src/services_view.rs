//! `switchyard services`: the frontends and backends the kernel maps hold,
//! read from the pins, so it shows the datapath and not the agent's intent.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use serde::Serialize;
use switchyard_abi::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    cli::OutputFormat,
    datapath::{DatapathError, MapReader, pinned::PinnedMaps},
    datapath_state::DatapathState,
};

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// `sessionAffinity: ClientIP` timeout in seconds, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    /// `None` when a slot names an id the backend map lacks.
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
}

pub fn render(pin_dir: &Path, format: OutputFormat) -> Result<String, DatapathError> {
    let state = PinnedMaps::open(pin_dir)?.read_state()?;
    let views = views(&state);
    Ok(match format {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&views).unwrap_or_default();
            text.push('\n');
            text
        }
        OutputFormat::Table => table(&views),
    })
}

pub fn views(state: &DatapathState) -> Vec<FrontendView> {
    state
        .active_frontends()
        .map(|(key, frontend)| FrontendView {
            ip: IpAddr::from(key.addr),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.proto),
            affinity_timeout: (frontend.affinity_timeout > 0).then_some(frontend.affinity_timeout),
            backends: frontend
                .active_slots()
                .map(|id| {
                    let id = id.unwrap_or(0);
                    let backend = state.backends.get(&id);
                    BackendView {
                        id,
                        ip: backend.map(|backend| IpAddr::from(backend.addr)),
                        port: backend.map(|backend| u16::from_be(backend.port)),
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
            if let Some(timeout) = view.affinity_timeout {
                let _infallible = write!(frontend, " affinity={timeout}s");
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
