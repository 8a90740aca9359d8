//! Prometheus metrics. kube-proxy's names where the meaning is the same, so
//! existing dashboards and alerts keep working; `switchyard_*` for the rest.
//! Labels only ever hold bounded values (map names, reason labels, traffic
//! policies), never a service name or an address.

use std::time::{Duration, SystemTime};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    convert::input_error::InputError, datapath::kernel_features::KernelFeatures,
    source::change_set::ReceivedChanges,
};

pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    last_sync: Gauge,
    last_queued: Gauge,
    network_programming: Histogram,
    no_local_endpoints: IntGaugeVec,
    service_changes: IntCounter,
    endpoint_changes: IntCounter,
    frontends: IntGauge,
    backends: IntGauge,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    map_failures: IntCounterVec,
    sockets_destroyed: IntCounterVec,
    input_errors: IntGaugeVec,
    input_errors_seen: IntCounterVec,
    packets: IntCounterVec,
    /// The kernel's counter totals already added to `packets`.
    packets_seen: std::sync::Mutex<Vec<u64>>,
    conntrack_entries: IntGauge,
    conntrack_collected: IntCounter,
    nat_ports: IntGauge,
    nat_ports_in_use: IntGaugeVec,
    devices: IntGauge,
    node_port_addresses: IntGauge,
    health_check_failures: IntCounter,
    kernel_features: IntGaugeVec,
}

/// Sync work ranges from microseconds (nothing changed) to seconds.
const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Adds `metric` to `registry` and hands it back for updating.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are constant and unique");
    metric
}

fn seconds_since_epoch(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    /// Every metric is created with constant names and valid options, so
    /// construction cannot fail; a failure is a programming error.
    #[expect(
        clippy::missing_panics_doc,
        reason = "constant, valid metric definitions"
    )]
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric, in the order /metrics lists them"
    )]
    pub fn new() -> Self {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str| {
            let metric =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(SYNC_BUCKETS.to_vec()))
                    .expect("valid histogram");
            registered(&registry, metric)
        };
        let sync_duration = histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        let network_programming = histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In-cluster network programming latency in seconds",
        );
        let gauge = |name: &str, help: &str| {
            let metric = Gauge::new(name, help).expect("valid gauge");
            registered(&registry, metric)
        };
        let last_sync = gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        );
        let last_queued = gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
        );
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registered(&registry, metric)
        };
        let no_local_endpoints = int_gauge_vec(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            &["traffic_policy"],
        );
        let map_entries = int_gauge_vec(
            "switchyard_map_entries",
            "Entries the agent has programmed in each BPF map",
            &["map"],
        );
        let map_capacity = int_gauge_vec(
            "switchyard_map_capacity",
            "max_entries of each BPF map",
            &["map"],
        );
        let kernel_features = int_gauge_vec(
            "switchyard_kernel_feature",
            "1 if the running kernel has the feature, 0 if not (probed at start)",
            &["feature"],
        );
        let input_errors = int_gauge_vec(
            "switchyard_input_errors",
            "Objects or fields currently skipped as invalid, by reason",
            &["reason"],
        );
        let int_gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid gauge");
            registered(&registry, metric)
        };
        let frontends = int_gauge(
            "switchyard_frontends_programmed",
            "Frontends (VIP, port, protocol) in the datapath",
        );
        let backends = int_gauge("switchyard_backends_programmed", "Backends in the datapath");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registered(&registry, metric)
        };
        let sockets_destroyed = counter_vec(
            "switchyard_sockets_destroyed_total",
            "Connected sockets destroyed because their backend left the Service, by protocol \
             and result (destroyed, or why not)",
            &["protocol", "result"],
        );
        let map_failures = counter_vec(
            "switchyard_map_operation_failures_total",
            "BPF map operations the kernel refused, by map and reason",
            &["map", "reason"],
        );
        let input_errors_seen = counter_vec(
            "switchyard_input_errors_total",
            "Invalid objects or fields seen, counted when each first appears",
            &["reason"],
        );
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid counter");
            registered(&registry, metric)
        };
        let service_changes = counter(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
        );
        let endpoint_changes = counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules EndpointSlice changes",
        );
        let packets = counter_vec(
            "switchyard_packets_total",
            "Packets the per-packet path handled, by verdict and reason (drops and rejects by why)",
            &["verdict", "reason"],
        );
        let conntrack_entries = int_gauge(
            "switchyard_conntrack_entries",
            "Conntrack entries (two per connection) at the last collection",
        );
        let conntrack_collected = counter(
            "switchyard_conntrack_collected_total",
            "Conntrack entries removed as expired",
        );
        let nat_ports = int_gauge(
            "switchyard_nat_ports",
            "NAT source ports a node address has for each backend (--nat-port-range)",
        );
        let nat_ports_in_use = int_gauge_vec(
            "switchyard_nat_ports_in_use",
            "NAT source ports held by live connections, per node address, at the last collection",
            &["address"],
        );
        let devices = int_gauge(
            "switchyard_devices_attached",
            "Devices carrying the per-packet programs",
        );
        let node_port_addresses = int_gauge(
            "switchyard_nodeport_addresses",
            "Node addresses NodePorts are served on",
        );
        let health_check_failures = counter(
            "switchyard_health_check_server_failures_total",
            "Health check node ports that could not be served",
        );
        for policy in ["internal", "external"] {
            no_local_endpoints.with_label_values(&[policy]).set(0);
        }
        Self {
            registry,
            sync_duration,
            last_sync,
            last_queued,
            network_programming,
            no_local_endpoints,
            service_changes,
            endpoint_changes,
            frontends,
            backends,
            map_entries,
            map_capacity,
            map_failures,
            sockets_destroyed,
            input_errors,
            input_errors_seen,
            packets,
            packets_seen: std::sync::Mutex::new(Vec::new()),
            conntrack_entries,
            conntrack_collected,
            nat_ports,
            nat_ports_in_use,
            devices,
            node_port_addresses,
            health_check_failures,
            kernel_features,
        }
    }

    /// `switchyard_kernel_feature{feature}`: what the probe at start found.
    pub fn set_kernel_features(&self, features: &KernelFeatures) {
        for (feature, value) in features.gauges() {
            self.kernel_features
                .with_label_values(&[feature])
                .set(value);
        }
    }

    /// The kernel's per-reason totals (`switchyard_abi::COUNTER_LABELS`
    /// order), which only grow while the pinned map lives.
    pub fn set_packet_counters(&self, totals: &[u64]) {
        let mut seen = self
            .packets_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.resize(totals.len(), 0);
        for ((total, previous), (verdict, reason)) in totals
            .iter()
            .zip(seen.iter_mut())
            .zip(switchyard_abi::COUNTER_LABELS)
        {
            self.packets
                .with_label_values(&[verdict, reason])
                .inc_by(total.saturating_sub(*previous));
            *previous = (*previous).max(*total);
        }
    }

    pub fn observe_conntrack(&self, entries: usize, collected: usize) {
        self.conntrack_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.conntrack_collected
            .inc_by(u64::try_from(collected).unwrap_or(u64::MAX));
    }

    pub fn set_nat_port_capacity(&self, ports: u32) {
        self.nat_ports.set(i64::from(ports));
    }

    pub fn set_nat_ports_in_use(
        &self,
        in_use: &std::collections::BTreeMap<std::net::IpAddr, usize>,
    ) {
        self.nat_ports_in_use.reset();
        for (address, ports) in in_use {
            self.nat_ports_in_use
                .with_label_values(&[&address.to_string()])
                .set(i64::try_from(*ports).unwrap_or(i64::MAX));
        }
    }

    pub fn set_network(&self, devices: usize, node_port_addresses: usize) {
        self.devices.set(i64::try_from(devices).unwrap_or(i64::MAX));
        self.node_port_addresses
            .set(i64::try_from(node_port_addresses).unwrap_or(i64::MAX));
    }

    pub fn count_health_check_failure(&self) {
        self.health_check_failures.inc();
    }

    /// A sync finished at `at` after `took`; `queued_for` is how long the
    /// oldest change it applied had waited (network programming latency).
    pub fn observe_sync(&self, took: Duration, at: SystemTime, queued_for: Option<Duration>) {
        self.sync_duration.observe(took.as_secs_f64());
        self.last_sync.set(seconds_since_epoch(at));
        if let Some(waited) = queued_for {
            self.network_programming.observe(waited.as_secs_f64());
        }
    }

    /// A sync that left some changes unapplied: its cost counts, but it is
    /// not a completed sync.
    pub fn observe_incomplete_sync(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    pub fn observe_queued(&self, at: SystemTime) {
        self.last_queued.set(seconds_since_epoch(at));
    }

    pub fn count_changes(&self, received: ReceivedChanges) {
        self.service_changes.inc_by(received.services);
        self.endpoint_changes.inc_by(received.endpoint_slices);
    }

    pub fn set_programmed(&self, frontends: usize, backends: usize) {
        self.frontends
            .set(i64::try_from(frontends).unwrap_or(i64::MAX));
        self.backends
            .set(i64::try_from(backends).unwrap_or(i64::MAX));
    }

    pub fn set_map_usage(&self, map: &str, entries: usize, capacity: usize) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.map_entries
            .with_label_values(&[map])
            .set(count(entries));
        self.map_capacity
            .with_label_values(&[map])
            .set(count(capacity));
    }

    pub fn count_sockets(&self, protocol: &str, result: &str, count: u64) {
        self.sockets_destroyed
            .with_label_values(&[protocol, result])
            .inc_by(count);
    }

    pub fn record_map_failure(&self, map: &str, reason: &str) {
        self.map_failures.with_label_values(&[map, reason]).inc();
    }

    pub fn set_no_local_endpoints(&self, traffic_policy: &str, services: usize) {
        let services = i64::try_from(services).unwrap_or(i64::MAX);
        self.no_local_endpoints
            .with_label_values(&[traffic_policy])
            .set(services);
    }

    /// `current` are all problems of this sync, `new` those not seen in the
    /// previous one.
    pub fn set_input_errors<'a>(
        &self,
        current: impl IntoIterator<Item = &'a InputError>,
        new: impl IntoIterator<Item = &'a InputError>,
    ) {
        self.input_errors.reset();
        for error in current {
            self.input_errors.with_label_values(&[error.reason()]).inc();
        }
        for error in new {
            self.input_errors_seen
                .with_label_values(&[error.reason()])
                .inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _infallible = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::input_error::{ObjectRef, Reason};

    #[test]
    fn renders_kube_proxy_and_switchyard_names_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.observe_sync(
            Duration::from_millis(3),
            SystemTime::UNIX_EPOCH,
            Some(Duration::from_millis(40)),
        );
        metrics.set_programmed(3, 7);
        metrics.set_map_usage("SY_SERVICES_V1", 10, 262_144);
        metrics.record_map_failure("SY_BACKENDS_V1", "map_full");
        let web = ObjectRef::new("Service", "default", "web");
        let bad = InputError::field(&web, "spec.ports[0].port", Reason::InvalidPort, "0");
        metrics.set_input_errors([&bad], [&bad]);
        let mut totals = [0u64; switchyard_abi::COUNTERS_LEN as usize];
        totals[switchyard_abi::COUNTER_DROP_SOURCE_RANGE as usize] = 4;
        metrics.set_packet_counters(&totals);
        totals[switchyard_abi::COUNTER_DROP_SOURCE_RANGE as usize] = 6;
        metrics.set_packet_counters(&totals);
        metrics.observe_conntrack(8, 2);
        let features = KernelFeatures::new("test".into(), |feature| {
            if feature == crate::datapath::kernel_features::Feature::Tcx {
                crate::datapath::kernel_features::Availability::Missing
            } else {
                crate::datapath::kernel_features::Availability::Available
            }
        });
        metrics.set_kernel_features(&features);
        let text = metrics.render();
        for line in [
            "switchyard_packets_total{reason=\"source_range\",verdict=\"dropped\"} 6",
            "switchyard_packets_total{reason=\"no_endpoints\",verdict=\"rejected\"} 0",
            "switchyard_conntrack_entries 8",
            "switchyard_conntrack_collected_total 2",
            "switchyard_kernel_feature{feature=\"tcx\"} 0",
            "switchyard_kernel_feature{feature=\"bpf_set_retval\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_network_programming_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"} 0",
            "switchyard_frontends_programmed 3",
            "switchyard_backends_programmed 7",
            "switchyard_map_entries{map=\"SY_SERVICES_V1\"} 10",
            "switchyard_map_capacity{map=\"SY_SERVICES_V1\"} 262144",
            "switchyard_map_operation_failures_total{map=\"SY_BACKENDS_V1\",reason=\"map_full\"} 1",
            "switchyard_input_errors{reason=\"invalid_port\"} 1",
            "switchyard_input_errors_total{reason=\"invalid_port\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("web"), "no object names in labels");
    }

    #[test]
    fn current_input_errors_replace_the_previous_ones() {
        let metrics = Metrics::new();
        let web = ObjectRef::new("Service", "default", "web");
        let bad = InputError::field(&web, "spec.clusterIP", Reason::InvalidIp, "x");
        metrics.set_input_errors([&bad], [&bad]);
        metrics.set_input_errors([], []);
        let text = metrics.render();
        assert!(!text.contains("switchyard_input_errors{reason=\"invalid_ip\"} 1"));
        assert!(text.contains("switchyard_input_errors_total{reason=\"invalid_ip\"} 1"));
    }
}
