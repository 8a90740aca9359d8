//! Prometheus metrics. kube-proxy's names where the meaning is the same, so
//! existing dashboards and alerts keep working; `switchyard_*` for the rest.
//! Labels hold bounded values (map names, reason labels, traffic policies);
//! Service names and backend addresses only in the per-Service series,
//! whose number the counter flags cap (`service_counters`).

pub mod kube_proxy;
pub mod service_counters;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    process_collector::ProcessCollector,
};

use crate::{
    convert::input_error::InputError,
    datapath::kernel_features::KernelFeatures,
    plan::drift::{CHECKED_MAPS, Drift},
    serve::metrics::{kube_proxy::KubeProxyMetrics, service_counters::ServiceCounters},
};

pub struct Metrics {
    registry: Registry,
    names: std::collections::BTreeSet<String>,
    /// kube-proxy's own series.
    pub kube_proxy: KubeProxyMetrics,
    /// Per-Service-port and per-backend series, read when scraped.
    pub service_counters: ServiceCounters,
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
    kube_proxy_removed: IntGaugeVec,
    nat_ports_in_use: IntGaugeVec,
    devices: IntGauge,
    device_hooks: IntGaugeVec,
    node_port_addresses: IntGauge,
    health_check_failures: IntCounter,
    kernel_features: IntGaugeVec,
    drift: IntGaugeVec,
    drift_seen: IntCounterVec,
}

/// The registry being filled, and the name of every metric put in it: a
/// labelled family without series yet is missing from the registry's
/// output, not from here (the deploy files' queries are checked against
/// these names).
struct Catalog {
    registry: Registry,
    names: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

/// Adds `metric` to `catalog` and hands it back for updating.
fn registered<M: prometheus::core::Collector + Clone + 'static>(catalog: &Catalog, metric: M) -> M {
    add(catalog, Box::new(metric.clone()));
    metric
}

fn add(catalog: &Catalog, collector: Box<dyn prometheus::core::Collector>) {
    catalog
        .names
        .borrow_mut()
        .extend(collector.desc().iter().map(|desc| desc.fq_name.clone()));
    catalog
        .registry
        .register(collector)
        .expect("metric names are constant and unique");
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
        let registry = Catalog {
            registry: Registry::new(),
            names: std::cell::RefCell::default(),
        };
        let kube_proxy = KubeProxyMetrics::new(&registry);
        let service_counters = registered(&registry, ServiceCounters::new());
        // process_cpu_seconds_total, process_resident_memory_bytes and the
        // rest, as every Prometheus client on Linux exports them.
        add(&registry, Box::new(ProcessCollector::for_self()));
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registered(&registry, metric)
        };
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
        let drift = int_gauge_vec(
            "switchyard_datapath_drift_entries",
            "Map entries that differed from what the agent programmed at the last read-back \
             (repaired by the pass that follows)",
            &["map"],
        );
        let drift_seen = counter_vec(
            "switchyard_datapath_drift_entries_total",
            "Map entries found differing from what the agent programmed, and repaired",
            &["map"],
        );
        for map in CHECKED_MAPS {
            drift.with_label_values(&[map]).set(0);
            drift_seen.with_label_values(&[map]).inc_by(0);
        }
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid counter");
            registered(&registry, metric)
        };
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
        let device_hooks = int_gauge_vec(
            "switchyard_device_hooks",
            "Per-packet hooks on each device: tc everywhere, xdp where the driver has native XDP (--xdp)",
            &["device", "hook"],
        );
        let node_port_addresses = int_gauge(
            "switchyard_nodeport_addresses",
            "Node addresses NodePorts are served on",
        );
        let kube_proxy_removed = int_gauge_vec(
            "switchyard_kube_proxy_rules_removed",
            "kube-proxy's state removed by --cleanup-kube-proxy, by kind (iptables_chains, nftables_tables, ipvs)",
            &["kind"],
        );
        let health_check_failures = counter(
            "switchyard_health_check_server_failures_total",
            "Health check node ports that could not be served",
        );
        Self {
            names: registry.names.take(),
            registry: registry.registry,
            kube_proxy,
            service_counters,
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
            device_hooks,
            node_port_addresses,
            health_check_failures,
            kube_proxy_removed,
            kernel_features,
            drift,
            drift_seen,
        }
    }

    /// What the last read-back of the maps found (see `plan::drift`).
    pub fn set_drift(&self, drift: &Drift) {
        for map in CHECKED_MAPS {
            let entries = u64::try_from(drift.entries(map)).unwrap_or(u64::MAX);
            self.drift
                .with_label_values(&[map])
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
            self.drift_seen.with_label_values(&[map]).inc_by(entries);
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

    pub fn set_kube_proxy_cleanup(&self, removed: &crate::node::kube_proxy_leftovers::Removed) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (kind, value) in [
            ("iptables_chains", count(removed.iptables_chains)),
            ("nftables_tables", count(removed.nft_tables)),
            ("ipvs", i64::from(removed.ipvs)),
        ] {
            self.kube_proxy_removed
                .with_label_values(&[kind])
                .set(value);
        }
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

    /// `hooks`: (device, "tc" or "xdp") for each hook on a device.
    pub fn set_network(&self, hooks: &[(&str, &str)], node_port_addresses: usize) {
        let devices = hooks.iter().filter(|(_, hook)| *hook == "tc").count();
        self.devices.set(i64::try_from(devices).unwrap_or(i64::MAX));
        self.device_hooks.reset();
        for (device, hook) in hooks {
            self.device_hooks.with_label_values(&[device, hook]).set(1);
        }
        self.node_port_addresses
            .set(i64::try_from(node_port_addresses).unwrap_or(i64::MAX));
    }

    pub fn count_health_check_failure(&self) {
        self.health_check_failures.inc();
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

    /// Every metric's name (a histogram's without `_bucket`, `_sum` and
    /// `_count`), series or not.
    pub fn names(&self) -> &std::collections::BTreeSet<String> {
        &self.names
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
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        convert::input_error::{ObjectRef, Reason},
        model::address::IpFamily,
        serve::metrics::kube_proxy::{HealthEndpoint, Pass},
        source::change_set::ChangeTrigger,
    };

    #[test]
    fn renders_kube_proxy_and_switchyard_names_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.kube_proxy.set_families(&[IpFamily::V4]);
        metrics.kube_proxy.observe_sync(
            Pass::Full,
            Duration::from_millis(3),
            Some(SystemTime::UNIX_EPOCH),
        );
        let trigger = ChangeTrigger {
            family: IpFamily::V6,
            at: SystemTime::UNIX_EPOCH,
        };
        metrics
            .kube_proxy
            .observe_programmed(&[trigger], SystemTime::UNIX_EPOCH + Duration::from_secs(2));
        metrics
            .kube_proxy
            .count_health(HealthEndpoint::Healthz, 503);
        metrics
            .kube_proxy
            .set_no_local_endpoints(IpFamily::V4, "internal", 0);
        metrics.set_programmed(3, 7);
        metrics.set_map_usage("SY_SERVICES_V2", 10, 262_144);
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
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"2\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"1\"} 0",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 0",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "process_resident_memory_bytes",
            "switchyard_datapath_drift_entries{map=\"SY_BACKENDS_V1\"} 0",
            "switchyard_frontends_programmed 3",
            "switchyard_backends_programmed 7",
            "switchyard_map_entries{map=\"SY_SERVICES_V2\"} 10",
            "switchyard_map_capacity{map=\"SY_SERVICES_V2\"} 262144",
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
