//! kube-proxy's health rules (`pkg/proxy/healthcheck/proxy_health.go`),
//! pure and clock-injected: the agent reports when an update was queued and
//! when one was applied; `/healthz` and `/livez` are judged from that.
//!
//! Healthy while starting and whenever nothing is pending; unhealthy once
//! an update has waited longer than the timeout (twice the sync period) to
//! be applied. `/healthz` also fails while the node is going away, so load
//! balancers stop sending traffic to it; `/livez` ignores that, so the
//! agent is not restarted for it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

/// The cluster autoscaler taints a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
}

/// An HTTP answer: status code and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct HealthAnswer {
    pub status: u16,
    pub body: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthzBody {
    last_updated: String,
    current_time: String,
    node_eligible: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LivezBody {
    last_updated: String,
    current_time: String,
}

impl ProxyHealth {
    pub fn new(sync_period: Duration) -> Self {
        Self {
            timeout: sync_period * 2,
            last_updated: None,
            oldest_pending: None,
            node_eligible: true,
        }
    }

    /// A change arrived that a sync still has to apply. Only the oldest
    /// pending one matters: it is the one that may be overdue.
    pub fn queued_update(&mut self, now: SystemTime) {
        self.oldest_pending.get_or_insert(now);
    }

    /// A sync applied everything queued so far.
    pub fn updated(&mut self, now: SystemTime) {
        self.last_updated = Some(now);
        self.oldest_pending = None;
    }

    pub fn set_node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
    }

    pub fn is_healthy(&self, now: SystemTime) -> bool {
        self.oldest_pending
            .is_none_or(|queued| now.duration_since(queued).unwrap_or_default() <= self.timeout)
    }

    pub fn healthz(&self, now: SystemTime) -> HealthAnswer {
        let ok = self.is_healthy(now) && self.node_eligible;
        answer(
            ok,
            &HealthzBody {
                last_updated: self.last_updated_text(),
                current_time: rfc3339(now),
                node_eligible: self.node_eligible,
            },
        )
    }

    pub fn livez(&self, now: SystemTime) -> HealthAnswer {
        answer(
            self.is_healthy(now),
            &LivezBody {
                last_updated: self.last_updated_text(),
                current_time: rfc3339(now),
            },
        )
    }

    fn last_updated_text(&self) -> String {
        self.last_updated.map(rfc3339).unwrap_or_default()
    }
}

fn answer(ok: bool, body: &impl Serialize) -> HealthAnswer {
    HealthAnswer {
        status: if ok { 200 } else { 503 },
        body: serde_json::to_string(body).unwrap_or_default(),
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Whether this node should still receive traffic: not being deleted and
/// not marked for removal by the cluster autoscaler.
pub fn node_eligible(node: &Node) -> bool {
    let deleting = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    !deleting && !tainted
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    #[test]
    fn status_table() {
        // (events as (kind, at), node eligible, now, healthz, livez)
        type Case<'a> = (&'a [(&'a str, u64)], bool, u64, u16, u16);
        let cases: &[Case] = &[
            (&[], true, 0, 200, 200),
            (&[("queued", 0)], true, 59, 200, 200),
            (&[("queued", 0)], true, 61, 503, 503),
            (&[("queued", 0), ("updated", 5)], true, 100, 200, 200),
            (&[("queued", 0), ("queued", 50)], true, 61, 503, 503),
            (&[("updated", 0)], true, 10_000, 200, 200),
            (&[], false, 0, 503, 200),
        ];
        for (events, eligible, now, healthz, livez) in cases {
            let mut health = ProxyHealth::new(PERIOD);
            for (kind, when) in *events {
                match *kind {
                    "queued" => health.queued_update(at(*when)),
                    _ => health.updated(at(*when)),
                }
            }
            health.set_node_eligible(*eligible);
            assert_eq!(
                health.healthz(at(*now)).status,
                *healthz,
                "{events:?} {now}"
            );
            assert_eq!(health.livez(at(*now)).status, *livez, "{events:?} {now}");
        }
    }

    #[test]
    fn bodies_carry_kube_proxys_fields() {
        let mut health = ProxyHealth::new(PERIOD);
        health.updated(at(0));
        let healthz: serde_json::Value = serde_json::from_str(&health.healthz(at(1)).body).unwrap();
        assert_eq!(healthz["lastUpdated"], "2023-11-14T22:13:20.000Z");
        assert_eq!(healthz["currentTime"], "2023-11-14T22:13:21.000Z");
        assert_eq!(healthz["nodeEligible"], true);
        let livez: serde_json::Value = serde_json::from_str(&health.livez(at(1)).body).unwrap();
        assert!(livez.get("nodeEligible").is_none());
        assert!(livez.get("lastUpdated").is_some());
    }

    #[test]
    fn node_eligibility_table() {
        let cases = [
            ("metadata: {name: n}", true),
            (
                "metadata: {name: n, deletionTimestamp: '2024-01-01T00:00:00Z'}",
                false,
            ),
            (
                "metadata: {name: n}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}",
                false,
            ),
            (
                "metadata: {name: n}\nspec: {taints: [{key: other, effect: NoSchedule}]}",
                true,
            ),
        ];
        for (yaml, eligible) in cases {
            let node: Node = crate::convert::fixtures::node(yaml);
            assert_eq!(node_eligible(&node), eligible, "{yaml}");
        }
    }
}
