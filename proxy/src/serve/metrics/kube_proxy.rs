//! kube-proxy's own metrics, with its names, labels, help texts and bucket
//! boundaries (`pkg/proxy/metrics`), so its dashboards and alerts keep
//! working. kube-proxy runs one proxier per address family and labels
//! most series with `ip_family`; Switchyard programs both families in one
//! pass, so a pass is observed once under each family the node serves.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::{Catalog, registered};
use crate::{
    model::address::IpFamily,
    source::change_set::{ChangeTrigger, ReceivedChanges},
};

/// `ExponentialBuckets(0.001, 2, 15)`: 1 ms to about 16 s.
fn sync_buckets() -> Vec<f64> {
    (0..15)
        .map(|power| 0.001 * f64::from(1u32 << power))
        .collect()
}

/// The network programming latency's: 0.25 s and 0.5 s, each second to
/// 59 s, every 5 s to 115 s, every 30 s to 5 min.
fn programming_buckets() -> Vec<f64> {
    let quarter = [0.25, 0.5].into_iter();
    let seconds = (1..=59).map(f64::from);
    let fives = (0..12).map(|step| f64::from(60 + 5 * step));
    let halves = (0..7).map(|step| f64::from(120 + 30 * step));
    quarter.chain(seconds).chain(fives).chain(halves).collect()
}

/// kube-proxy's gauge of Local-policy service ports without a local
/// endpoint, present from the start at 0, as kube-proxy's is.
fn no_local_endpoints(registry: &Catalog) -> IntGaugeVec {
    let gauge = registered(
        registry,
        IntGaugeVec::new(
            Opts::new(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
            ),
            &["ip_family", "traffic_policy"],
        )
        .expect("valid gauge"),
    );
    for family in IpFamily::BOTH {
        for policy in ["internal", "external"] {
            gauge.with_label_values(&[family.label(), policy]).set(0);
        }
    }
    gauge
}

/// Which kind of pass a sync was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Everything recomputed and compared.
    Full,
    /// Only changed Services, or nothing changed.
    Partial,
}

impl Pass {
    /// How the log line of a pass names it.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "changed",
        }
    }
}

/// kube-proxy's health endpoints, each counted by status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthEndpoint {
    Healthz,
    Livez,
}

pub struct KubeProxyMetrics {
    sync: HistogramVec,
    sync_full: HistogramVec,
    sync_partial: HistogramVec,
    last_sync: GaugeVec,
    last_queued: GaugeVec,
    network_programming: HistogramVec,
    no_local_endpoints: IntGaugeVec,
    service_changes: IntCounter,
    endpoint_changes: IntCounter,
    service_changes_pending: IntGauge,
    endpoint_changes_pending: IntGauge,
    healthz: IntCounterVec,
    livez: IntCounterVec,
    /// The families this node serves: the `ip_family` values of a pass.
    families: Mutex<Vec<IpFamily>>,
}

fn seconds_since_epoch(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl KubeProxyMetrics {
    pub(super) fn new(registry: &Catalog) -> Self {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            registered(
                registry,
                HistogramVec::new(opts, &["ip_family"]).expect("valid histogram"),
            )
        };
        let gauge = |name: &str, help: &str| {
            registered(
                registry,
                GaugeVec::new(Opts::new(name, help), &["ip_family"]).expect("valid gauge"),
            )
        };
        let counter = |name: &str, help: &str| {
            registered(
                registry,
                IntCounter::new(name, help).expect("valid counter"),
            )
        };
        let int_gauge = |name: &str, help: &str| {
            registered(registry, IntGauge::new(name, help).expect("valid gauge"))
        };
        let by_code = |name: &str, help: &str| {
            registered(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["code"]).expect("valid counter"),
            )
        };
        let no_local_endpoints = no_local_endpoints(registry);
        Self {
            sync: histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_buckets(),
            ),
            sync_full: histogram(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_buckets(),
            ),
            sync_partial: histogram(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                sync_buckets(),
            ),
            last_sync: gauge(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            ),
            last_queued: gauge(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
            ),
            network_programming: histogram(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                programming_buckets(),
            ),
            no_local_endpoints,
            service_changes: counter(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            ),
            endpoint_changes: counter(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            ),
            service_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            ),
            endpoint_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            ),
            healthz: by_code(
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
            ),
            livez: by_code(
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
            ),
            families: Mutex::new(IpFamily::BOTH.to_vec()),
        }
    }

    fn families(&self) -> Vec<IpFamily> {
        self.families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The families this node serves (both when it has addresses of both,
    /// or none known).
    pub fn set_families(&self, families: &[IpFamily]) {
        let families = if families.is_empty() {
            IpFamily::BOTH.to_vec()
        } else {
            families.to_vec()
        };
        *self
            .families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = families;
    }

    /// A pass of `pass` kind took `took`; `completed` is when, if it
    /// applied every change it had (one that left some for later counts
    /// its cost, not as a sync).
    pub fn observe_sync(&self, pass: Pass, took: Duration, completed: Option<SystemTime>) {
        let by_kind = match pass {
            Pass::Full => &self.sync_full,
            Pass::Partial => &self.sync_partial,
        };
        for family in self.families() {
            let label = [family.label()];
            self.sync
                .with_label_values(&label)
                .observe(took.as_secs_f64());
            by_kind
                .with_label_values(&label)
                .observe(took.as_secs_f64());
            if let Some(at) = completed {
                self.last_sync
                    .with_label_values(&label)
                    .set(seconds_since_epoch(at));
            }
        }
    }

    pub fn observe_queued(&self, at: SystemTime) {
        for family in self.families() {
            self.last_queued
                .with_label_values(&[family.label()])
                .set(seconds_since_epoch(at));
        }
    }

    /// The changes of a completed pass are programmed at `now`: each
    /// trigger time's latency, by the slice's family. A trigger from the
    /// future (clocks apart) counts as no latency.
    pub fn observe_programmed(&self, triggers: &[ChangeTrigger], now: SystemTime) {
        for trigger in triggers {
            let latency = now.duration_since(trigger.at).unwrap_or_default();
            self.network_programming
                .with_label_values(&[trigger.family.label()])
                .observe(latency.as_secs_f64());
        }
    }

    pub fn count_changes(&self, received: ReceivedChanges) {
        self.service_changes.inc_by(received.services);
        self.endpoint_changes.inc_by(received.endpoint_slices);
    }

    pub fn set_pending(&self, pending: ReceivedChanges) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.service_changes_pending.set(count(pending.services));
        self.endpoint_changes_pending
            .set(count(pending.endpoint_slices));
    }

    pub fn set_no_local_endpoints(&self, family: IpFamily, traffic_policy: &str, services: usize) {
        self.no_local_endpoints
            .with_label_values(&[family.label(), traffic_policy])
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }

    pub fn count_health(&self, endpoint: HealthEndpoint, code: u16) {
        let counter = match endpoint {
            HealthEndpoint::Healthz => &self.healthz,
            HealthEndpoint::Livez => &self.livez,
        };
        counter.with_label_values(&[&code.to_string()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(
        clippy::float_cmp,
        reason = "the bounds are exact: binary multiples of 0.001, and integers"
    )]
    fn buckets_are_kube_proxys() {
        let sync = sync_buckets();
        assert_eq!((sync.len(), sync[0], sync[14]), (15, 0.001, 16.384));
        let programming = programming_buckets();
        assert_eq!(programming.len(), 2 + 59 + 12 + 7);
        assert_eq!(&programming[..3], &[0.25, 0.5, 1.0]);
        assert_eq!(programming[61], 60.0);
        assert_eq!(programming.last(), Some(&300.0));
        assert!(programming.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
