//! Per-Service-port and per-backend traffic counters, and the names of the
//! Service ports behind each frontend.
//!
//! Every frontend's slot 0 carries the counter entry of its Service port
//! and every slot the entry of that (Service port, backend) pair
//! ([`crate::ServiceValue::counter`]); a new connection carries both in its
//! conntrack entries ([`crate::Flow`]). The kernel adds to this CPU's copy
//! of the entry, one increment on the hot path, and the agent sums the
//! CPUs when it is scraped. The agent hands the entries out, and caps them,
//! so the series a node exports stay bounded whatever the cluster holds.

/// Per Service port, a per-CPU array of [`ServiceCounts`].
pub const SERVICE_STATS_MAP: &str = "SY_SVC_STATS_V1";
/// Per (Service port, backend), a per-CPU array of [`BackendCounts`].
pub const BACKEND_STATS_MAP: &str = "SY_BE_STATS_V1";
/// Frontend (slot-0 [`crate::ServiceKey`]) -> [`ServiceName`]: what
/// `switchyard services` and `explain` print, read without the agent.
pub const SERVICE_NAMES_MAP: &str = "SY_SVC_NAMES_V1";

/// Counter entry 0: not counted (counters off, or a hand-written entry).
pub const COUNTER_NONE: u32 = 0;
/// Counter entry 1: every Service port (or pair) without an entry of its
/// own (not selected, or past the cap), summed.
pub const COUNTER_OVERFLOW: u32 = 1;
/// The first entry the agent hands to one Service port or pair.
pub const COUNTER_FIRST_OWN: u32 = 2;

/// Own series the maps have room for, past the two reserved entries:
/// Service ports, and (Service port, backend) pairs. Per-CPU arrays are
/// allocated whole, so this is what a node pays per CPU (147 KiB and 256
/// KiB); the flags can lower the caps, not raise them.
pub const SERVICE_STATS_SERIES: u32 = 2_048;
pub const BACKEND_STATS_SERIES: u32 = 8_192;

/// Indexes of [`ServiceCounts::counts`].
/// New connections through the socket hooks (connect(), or an unconnected
/// UDP socket's first datagram to the frontend).
pub const SERVICE_SOCKET_CONNECTIONS: usize = 0;
/// New connections through the per-packet path.
pub const SERVICE_PACKET_CONNECTIONS: usize = 1;
/// Packets and bytes of the per-packet path's connections, both ways.
pub const SERVICE_PACKETS: usize = 2;
pub const SERVICE_BYTES: usize = 3;
/// The first of the refusal and drop reasons, in [`SERVICE_REFUSALS`].
pub const SERVICE_REFUSED_NO_ENDPOINTS: usize = 4;
pub const SERVICE_DROPPED_NO_LOCAL: usize = 5;
pub const SERVICE_DROPPED_SOURCE_RANGE: usize = 6;
pub const SERVICE_DROPPED_SNAT_PORTS: usize = 7;
pub const SERVICE_DROPPED_CONNTRACK: usize = 8;
pub const SERVICE_COUNTS: usize = 9;

/// `(index, verdict, reason)` of each refusal and drop a Service port
/// counts; the reasons are the node-wide counters' labels.
pub const SERVICE_REFUSALS: [(usize, &str, &str); 5] = [
    (SERVICE_REFUSED_NO_ENDPOINTS, "rejected", "no_endpoints"),
    (SERVICE_DROPPED_NO_LOCAL, "dropped", "no_local_endpoints"),
    (SERVICE_DROPPED_SOURCE_RANGE, "dropped", "source_range"),
    (
        SERVICE_DROPPED_SNAT_PORTS,
        "dropped",
        "snat_ports_exhausted",
    ),
    (SERVICE_DROPPED_CONNTRACK, "dropped", "conntrack_insert"),
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    pub counts: [u64; SERVICE_COUNTS],
}

/// Indexes of [`BackendCounts::counts`], as for a Service port.
pub const BACKEND_SOCKET_CONNECTIONS: usize = 0;
pub const BACKEND_PACKET_CONNECTIONS: usize = 1;
pub const BACKEND_PACKETS: usize = 2;
pub const BACKEND_BYTES: usize = 3;
pub const BACKEND_COUNTS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub counts: [u64; BACKEND_COUNTS],
}

/// Longest namespace and Service name Kubernetes allows (a DNS label).
pub const NAME_LEN: usize = 64;
/// Longest port name (an IANA service name, 15 characters).
pub const PORT_NAME_LEN: usize = 16;

/// A Service port's name, zero-padded UTF-8; longer text is cut at a
/// character boundary (only hand-written manifests can carry such names).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub namespace: [u8; NAME_LEN],
    pub name: [u8; NAME_LEN],
    pub port: [u8; PORT_NAME_LEN],
}

impl Default for ServiceName {
    fn default() -> Self {
        Self {
            namespace: [0; NAME_LEN],
            name: [0; NAME_LEN],
            port: [0; PORT_NAME_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<ServiceCounts>() == 72);
const _: () = assert!(core::mem::size_of::<BackendCounts>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceName>() == 144);

#[cfg(feature = "user")]
mod user {
    extern crate std;
    use std::string::String;

    use super::{NAME_LEN, PORT_NAME_LEN, ServiceName};

    // SAFETY: as in `maps`: #[repr(C)], integers only, no padding.
    unsafe impl aya::Pod for super::ServiceCounts {}
    unsafe impl aya::Pod for super::BackendCounts {}
    unsafe impl aya::Pod for ServiceName {}

    impl ServiceName {
        pub fn new(namespace: &str, name: &str, port: &str) -> Self {
            let mut value = Self::default();
            fill(&mut value.namespace, namespace);
            fill(&mut value.name, name);
            fill(&mut value.port, port);
            value
        }

        /// `(namespace, name, port)`, as written (an invalid byte, only
        /// from a hand-written map, becomes U+FFFD).
        pub fn parts(&self) -> (String, String, String) {
            (text(&self.namespace), text(&self.name), text(&self.port))
        }
    }

    fn fill<const N: usize>(field: &mut [u8; N], text: &str) {
        let mut end = text.len().min(N);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        field[..end].copy_from_slice(&text.as_bytes()[..end]);
    }

    fn text(field: &[u8]) -> String {
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        String::from_utf8_lossy(&field[..end]).into_owned()
    }

    const _: () = assert!(NAME_LEN > 63 && PORT_NAME_LEN > 15);
}
