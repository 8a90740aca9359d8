//! The kernel's per-Service-port and per-pair counters as `switchyard
//! services` shows them, read from the pins.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_abi::{
    BACKEND_BYTES, BACKEND_PACKET_CONNECTIONS, BACKEND_PACKETS, BACKEND_SOCKET_CONNECTIONS,
    SERVICE_BYTES, SERVICE_PACKET_CONNECTIONS, SERVICE_PACKETS, SERVICE_REFUSALS,
    SERVICE_SOCKET_CONNECTIONS,
};

use crate::{
    datapath::stats_table::StatsTable,
    plan::{counter_refs::is_own, map_op::Counter},
};

/// What one entry counted. Only entries of one Service port (or pair)
/// alone are shown: the overflow entry sums many.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountsView {
    pub socket_connections: u64,
    pub packet_connections: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Refusals and drops by reason (Service ports only; zeros left out).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<&'static str, u64>,
}

impl CountsView {
    pub fn connections(&self) -> u64 {
        self.socket_connections + self.packet_connections
    }
}

pub fn service(stats: Option<&StatsTable>, counter: u32) -> Option<CountsView> {
    if !is_own(Counter::Service(counter)) {
        return None;
    }
    let counts = stats?.service(counter).ok()?;
    Some(CountsView {
        socket_connections: counts[SERVICE_SOCKET_CONNECTIONS],
        packet_connections: counts[SERVICE_PACKET_CONNECTIONS],
        packets: counts[SERVICE_PACKETS],
        bytes: counts[SERVICE_BYTES],
        drops: SERVICE_REFUSALS
            .iter()
            .filter(|(at, ..)| counts[*at] > 0)
            .map(|&(at, _, reason)| (reason, counts[at]))
            .collect(),
    })
}

pub fn backend(stats: Option<&StatsTable>, counter: u32) -> Option<CountsView> {
    if !is_own(Counter::Backend(counter)) {
        return None;
    }
    let counts = stats?.backend(counter).ok()?;
    Some(CountsView {
        socket_connections: counts[BACKEND_SOCKET_CONNECTIONS],
        packet_connections: counts[BACKEND_PACKET_CONNECTIONS],
        packets: counts[BACKEND_PACKETS],
        bytes: counts[BACKEND_BYTES],
        drops: BTreeMap::new(),
    })
}
