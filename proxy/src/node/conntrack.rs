//! The per-packet path's connections, as the agent sees them: conntrack
//! entries paired into connections, judged expired by kube-proxy's
//! timeouts, and shown by `switchyard conntrack`.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use switchyard_abi::{Addr, ConnState, FLOW_FORWARD, FLOW_REPLY, Flow, FlowKey, FlowTimeouts};

use crate::model::Protocol;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// One connection: its forward entry and the reply entry that goes with it
/// (either may be missing: evicted, or collected half-way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub forward: Option<(FlowKey, Flow)>,
    pub reply: Option<(FlowKey, Flow)>,
}

impl Connection {
    pub fn keys(&self) -> impl Iterator<Item = FlowKey> + '_ {
        self.forward.iter().chain(&self.reply).map(|(key, _)| *key)
    }

    fn last_seen_ns(&self) -> u64 {
        self.forward
            .iter()
            .chain(&self.reply)
            .map(|(_, flow)| flow.last_seen_ns)
            .max()
            .unwrap_or(0)
    }

    /// netfilter's name for where the connection is, from both entries.
    pub fn state(&self) -> ConnState {
        ConnState::of(
            self.proto(),
            self.forward.as_ref().map(|(_, flow)| flow),
            self.reply.as_ref().map(|(_, flow)| flow),
        )
    }

    pub fn proto(&self) -> u8 {
        self.forward.or(self.reply).map_or(0, |(key, _)| key.proto)
    }

    /// The NAT address and port this connection holds, if it was NATed.
    pub fn nat_port(&self) -> Option<(Addr, u16)> {
        match (&self.forward, &self.reply) {
            (Some((_, forward)), _) if forward.snat != 0 => {
                Some((forward.snat_addr, forward.snat_port))
            }
            (None, Some((key, reply))) if reply.snat != 0 => Some((key.dst, key.dport)),
            _ => None,
        }
    }

    /// The Service port and pair counter entries it counts in.
    pub fn counters(&self) -> (u32, u32) {
        self.forward.or(self.reply).map_or((0, 0), |(_, flow)| {
            (flow.service_counter, flow.backend_counter)
        })
    }

    /// Idle longer than its state's timeout at `now_ns` (`bpf_ktime_get_ns`
    /// clock).
    pub fn expired(&self, now_ns: u64, timeouts: &FlowTimeouts) -> bool {
        let limit = timeouts.for_state(self.state());
        now_ns.saturating_sub(self.last_seen_ns()) > u64::from(limit) * NANOS_PER_SECOND
    }
}

/// Pairs entries by [`Flow::partner`]; entries of unknown kind are ignored.
pub fn connections(entries: impl IntoIterator<Item = (FlowKey, Flow)>) -> Vec<Connection> {
    let mut forwards = Vec::new();
    let mut replies = BTreeMap::new();
    for (key, flow) in entries {
        match flow.kind {
            FLOW_FORWARD => forwards.push((key, flow)),
            FLOW_REPLY => {
                replies.insert(key, flow);
            }
            _ => {}
        }
    }
    forwards.sort_by_key(|(key, _)| *key);
    let mut paired: Vec<Connection> = forwards
        .into_iter()
        .map(|(key, flow)| {
            let partner = flow.partner(&key);
            Connection {
                forward: Some((key, flow)),
                reply: replies.remove(&partner).map(|reply| (partner, reply)),
            }
        })
        .collect();
    paired.extend(replies.into_iter().map(|(key, flow)| Connection {
        forward: None,
        reply: Some((key, flow)),
    }));
    paired
}

/// One connection as `switchyard conntrack` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionView {
    pub protocol: String,
    /// The client as it connected.
    pub client: Option<String>,
    pub frontend: Option<String>,
    pub backend: Option<String>,
    /// The source the backend saw when it was NATed to this node.
    pub snat: Option<String>,
    pub state: &'static str,
    pub idle_seconds: u64,
}

impl ConnectionView {
    pub fn new(connection: &Connection, now_ns: u64) -> Self {
        let socket =
            |ip, port: u16| SocketAddr::new(IpAddr::from(ip), u16::from_be(port)).to_string();
        let mut view = Self {
            protocol: Protocol::from_number(connection.proto())
                .map_or_else(|| connection.proto().to_string(), |p| p.to_string()),
            client: None,
            frontend: None,
            backend: None,
            snat: None,
            state: connection.state().name(),
            idle_seconds: now_ns.saturating_sub(connection.last_seen_ns()) / NANOS_PER_SECOND,
        };
        if let Some((key, flow)) = &connection.forward {
            view.client = Some(socket(key.src, key.sport));
            view.frontend = Some(socket(key.dst, key.dport));
            view.backend = Some(socket(flow.addr, flow.port));
            view.snat = (flow.snat != 0).then(|| socket(flow.snat_addr, flow.snat_port));
        } else if let Some((key, flow)) = &connection.reply {
            view.backend = Some(socket(key.src, key.sport));
            view.frontend = Some(socket(flow.addr, flow.port));
            view.client = Some(if flow.snat != 0 {
                socket(flow.snat_addr, flow.snat_port)
            } else {
                socket(key.dst, key.dport)
            });
        }
        view
    }
}

impl fmt::Display for ConnectionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_dash = |text: &Option<String>| text.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "{:<4} {:<24} -> {:<24} -> {:<24} snat={:<24} {:<11} idle {}s",
            self.protocol,
            or_dash(&self.client),
            or_dash(&self.frontend),
            or_dash(&self.backend),
            or_dash(&self.snat),
            self.state,
            self.idle_seconds
        )
    }
}

#[cfg(test)]
mod tests;
