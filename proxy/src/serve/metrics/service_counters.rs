//! Per-Service-port and per-backend series, read from the kernel's counters
//! when scraped: connections by path, packets and bytes, refusals and drops
//! by reason, and the per-packet path's live connections. Only entries the
//! agent handed out get series, so their number is bounded by
//! `--service-counter-series` and `--backend-counter-series`; everything
//! else is summed under `service="_other"`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{
    IntCounterVec, IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use switchyard_abi::{
    BACKEND_BYTES, BACKEND_PACKET_CONNECTIONS, BACKEND_PACKETS, BACKEND_SOCKET_CONNECTIONS,
    COUNTER_OVERFLOW, SERVICE_BYTES, SERVICE_PACKET_CONNECTIONS, SERVICE_PACKETS, SERVICE_REFUSALS,
    SERVICE_SOCKET_CONNECTIONS,
};
use tracing::debug;

use crate::{
    datapath::stats_table::StatsTable,
    model::ServicePortName,
    plan::counter_labels::{CounterLabels, PairLabel},
};

/// The `service` label of the series that sums everything without an entry
/// of its own.
pub const OVERFLOW_SERVICE: &str = "_other";

const SERVICE_LABELS: [&str; 3] = ["namespace", "service", "port"];
const BACKEND_LABELS: [&str; 4] = ["namespace", "service", "port", "backend"];

#[derive(Clone)]
pub struct ServiceCounters {
    shared: Arc<Mutex<Shared>>,
    /// Empty families, for their descriptions.
    template: Arc<Families>,
}

#[derive(Default)]
struct Shared {
    table: Option<StatsTable>,
    labels: CounterLabels,
    /// Live per-packet connections by (Service port entry, pair entry).
    flows: BTreeMap<(u32, u32), usize>,
}

struct Families {
    service_connections: IntCounterVec,
    service_packets: IntCounterVec,
    service_bytes: IntCounterVec,
    service_drops: IntCounterVec,
    service_flows: IntGaugeVec,
    backend_connections: IntCounterVec,
    backend_packets: IntCounterVec,
    backend_bytes: IntCounterVec,
    backend_flows: IntGaugeVec,
}

impl Families {
    fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
        };
        let with = |base: &[&'static str], extra: &[&'static str]| {
            base.iter().chain(extra).copied().collect::<Vec<_>>()
        };
        Self {
            service_connections: counter(
                "switchyard_service_connections_total",
                "New connections to a Service port, by path (socket: from this node; packet: from outside)",
                &with(&SERVICE_LABELS, &["path"]),
            ),
            service_packets: counter(
                "switchyard_service_packets_total",
                "Packets of a Service port's per-packet-path connections, both ways",
                &SERVICE_LABELS,
            ),
            service_bytes: counter(
                "switchyard_service_bytes_total",
                "Bytes of a Service port's per-packet-path connections, both ways",
                &SERVICE_LABELS,
            ),
            service_drops: counter(
                "switchyard_service_drops_total",
                "Connections to a Service port refused or dropped, by verdict and reason",
                &with(&SERVICE_LABELS, &["verdict", "reason"]),
            ),
            service_flows: gauge(
                "switchyard_service_flows",
                "Live per-packet-path connections of a Service port",
                &SERVICE_LABELS,
            ),
            backend_connections: counter(
                "switchyard_backend_connections_total",
                "New connections sent to a backend of a Service port, by path",
                &with(&BACKEND_LABELS, &["path"]),
            ),
            backend_packets: counter(
                "switchyard_backend_packets_total",
                "Packets of a backend's per-packet-path connections of a Service port, both ways",
                &BACKEND_LABELS,
            ),
            backend_bytes: counter(
                "switchyard_backend_bytes_total",
                "Bytes of a backend's per-packet-path connections of a Service port, both ways",
                &BACKEND_LABELS,
            ),
            backend_flows: gauge(
                "switchyard_backend_flows",
                "Live per-packet-path connections to a backend of a Service port",
                &BACKEND_LABELS,
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.service_connections,
            &self.service_packets,
            &self.service_bytes,
            &self.service_drops,
            &self.service_flows,
            &self.backend_connections,
            &self.backend_packets,
            &self.backend_bytes,
            &self.backend_flows,
        ]
    }
}

impl Default for ServiceCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceCounters {
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            template: Arc::new(Families::new()),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kernel's counters, once the maps are loaded, and what the
    /// adopted entries count for.
    pub fn attach(&self, table: StatsTable, labels: CounterLabels) {
        let mut shared = self.shared();
        shared.table = Some(table);
        shared.labels = labels;
    }

    /// What each entry counts for, after a pass changed the maps.
    pub fn set_labels(&self, labels: CounterLabels) {
        self.shared().labels = labels;
    }

    /// Live per-packet connections by (Service port entry, pair entry).
    pub fn set_flows(&self, flows: BTreeMap<(u32, u32), usize>) {
        self.shared().flows = flows;
    }

    fn fill(&self, families: &Families) {
        let shared = self.shared();
        let Some(table) = &shared.table else { return };
        let overflow = ServicePortName {
            namespace: String::new(),
            name: OVERFLOW_SERVICE.into(),
            port: String::new(),
        };
        fill_services(&shared, table, &overflow, families);
        fill_pairs(&shared, table, &overflow, families);
    }
}

fn fill_services(
    shared: &Shared,
    table: &StatsTable,
    overflow: &ServicePortName,
    families: &Families,
) {
    let own = shared.labels.services.iter().map(|(i, s)| (*i, s));
    let services = own.chain(
        shared
            .labels
            .overflow
            .then_some((COUNTER_OVERFLOW, overflow)),
    );
    for (index, service) in services {
        let Ok(counts) = table.service(index) else {
            debug!(index, "service counter entry unreadable");
            continue;
        };
        let labels = service_labels(service);
        let with = |extra: &[&str]| -> Vec<String> {
            labels
                .iter()
                .cloned()
                .chain(extra.iter().map(|s| (*s).to_owned()))
                .collect()
        };
        for (path, count) in [
            ("socket", counts[SERVICE_SOCKET_CONNECTIONS]),
            ("packet", counts[SERVICE_PACKET_CONNECTIONS]),
        ] {
            let values = with(&[path]);
            families
                .service_connections
                .with_label_values(&refs(&values))
                .inc_by(count);
        }
        let base = refs(&labels);
        families
            .service_packets
            .with_label_values(&base)
            .inc_by(counts[SERVICE_PACKETS]);
        families
            .service_bytes
            .with_label_values(&base)
            .inc_by(counts[SERVICE_BYTES]);
        for (at, verdict, reason) in SERVICE_REFUSALS {
            let values = with(&[verdict, reason]);
            families
                .service_drops
                .with_label_values(&refs(&values))
                .inc_by(counts[at]);
        }
        let flows = flows_where(shared, |(service, _)| service == index);
        families.service_flows.with_label_values(&base).set(flows);
    }
}

fn fill_pairs(
    shared: &Shared,
    table: &StatsTable,
    overflow: &ServicePortName,
    families: &Families,
) {
    let own = shared.labels.pairs.iter().map(|(i, p)| (*i, Some(p)));
    let pairs = own.chain(shared.labels.overflow.then_some((COUNTER_OVERFLOW, None)));
    for (index, pair) in pairs {
        let Ok(counts) = table.backend(index) else {
            debug!(index, "backend counter entry unreadable");
            continue;
        };
        let labels = pair_labels(pair, overflow);
        let base = refs(&labels);
        for (path, count) in [
            ("socket", counts[BACKEND_SOCKET_CONNECTIONS]),
            ("packet", counts[BACKEND_PACKET_CONNECTIONS]),
        ] {
            let values: Vec<&str> = base.iter().copied().chain([path]).collect();
            families
                .backend_connections
                .with_label_values(&values)
                .inc_by(count);
        }
        families
            .backend_packets
            .with_label_values(&base)
            .inc_by(counts[BACKEND_PACKETS]);
        families
            .backend_bytes
            .with_label_values(&base)
            .inc_by(counts[BACKEND_BYTES]);
        let flows = flows_where(shared, |(_, backend)| backend == index);
        families.backend_flows.with_label_values(&base).set(flows);
    }
}

/// Live connections whose (Service port, pair) entries pass `keep`.
fn flows_where(shared: &Shared, keep: impl Fn((u32, u32)) -> bool) -> i64 {
    let flows: usize = shared
        .flows
        .iter()
        .filter(|(entries, _)| keep(**entries))
        .map(|(_, flows)| flows)
        .sum();
    i64::try_from(flows).unwrap_or(i64::MAX)
}

fn service_labels(service: &ServicePortName) -> Vec<String> {
    vec![
        service.namespace.clone(),
        service.name.clone(),
        service.port.clone(),
    ]
}

fn pair_labels(pair: Option<&PairLabel>, overflow: &ServicePortName) -> Vec<String> {
    let (service, backend) = pair.map_or((overflow, String::new()), |pair| {
        (&pair.service, pair.backend.to_string())
    });
    let mut labels = service_labels(service);
    labels.push(backend);
    labels
}

fn refs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

impl Collector for ServiceCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.template
            .collectors()
            .into_iter()
            .flat_map(Collector::desc)
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = Families::new();
        self.fill(&families);
        families
            .collectors()
            .into_iter()
            .flat_map(Collector::collect)
            .collect()
    }
}
