//! The cases of kube-proxy's `topology_test.go`, as a table.

use super::*;
use crate::model::Protocol;

/// `"10.0.0.1 ready node=a zones=z1,z2 nodes=a"` -> a candidate. Flags:
/// `ready`, `unready` (not ready, not serving), `terminating` (not ready,
/// serving, terminating), `stopping` (not ready, not serving, terminating).
fn candidate(text: &str) -> Candidate {
    let mut words = text.split_whitespace();
    let ip = words.next().unwrap().parse().unwrap();
    let mut candidate = Candidate {
        endpoint: Endpoint {
            ip,
            port: 80,
            protocol: Protocol::Tcp,
            local: false,
        },
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone_hints: BTreeSet::new(),
        node_hints: BTreeSet::new(),
    };
    for word in words {
        let list = |value: &str| value.split(',').map(String::from).collect();
        match word.split_once('=') {
            Some(("node", name)) => candidate.node_name = Some(name.into()),
            Some(("zones", zones)) => candidate.zone_hints = list(zones),
            Some(("nodes", nodes)) => candidate.node_hints = list(nodes),
            _ => {
                (candidate.ready, candidate.serving, candidate.terminating) = match word {
                    "ready" => (true, true, false),
                    "unready" => (false, false, false),
                    "terminating" => (false, true, true),
                    "stopping" => (false, false, true),
                    other => panic!("unknown flag {other}"),
                }
            }
        }
    }
    candidate
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table test: one row per kube-proxy rule"
)]
fn endpoint_selection_table() {
    use TrafficPolicy::{Cluster, Local};
    struct Case<'a> {
        name: &'a str,
        policy: TrafficPolicy,
        zone: Option<&'a str>,
        candidates: &'a [&'a str],
        chosen: &'a [u8],
    }
    let cases: &[Case] = &[
        Case {
            name: "ready only",
            policy: Cluster,
            zone: None,
            candidates: &["10.0.0.1", "10.0.0.2 unready"],
            chosen: &[1],
        },
        Case {
            name: "terminating fallback when none ready",
            policy: Cluster,
            zone: None,
            candidates: &[
                "10.0.0.1 terminating",
                "10.0.0.2 stopping",
                "10.0.0.3 unready",
            ],
            chosen: &[1],
        },
        Case {
            name: "ready beats serving-terminating",
            policy: Cluster,
            zone: None,
            candidates: &["10.0.0.1 terminating", "10.0.0.2"],
            chosen: &[2],
        },
        Case {
            name: "nothing usable",
            policy: Cluster,
            zone: None,
            candidates: &["10.0.0.1 stopping"],
            chosen: &[],
        },
        Case {
            name: "local policy keeps this node's",
            policy: Local,
            zone: None,
            candidates: &["10.0.0.1 node=a", "10.0.0.2 node=b", "10.0.0.3"],
            chosen: &[1],
        },
        Case {
            name: "local terminating fallback stays local",
            policy: Local,
            zone: None,
            candidates: &["10.0.0.1 node=a terminating", "10.0.0.2 node=b"],
            chosen: &[1],
        },
        Case {
            name: "local with none here",
            policy: Local,
            zone: None,
            candidates: &["10.0.0.2 node=b"],
            chosen: &[],
        },
        Case {
            name: "zone hints used when all have them and one matches",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &[
                "10.0.0.1 zones=z1",
                "10.0.0.2 zones=z2",
                "10.0.0.3 zones=z1,z2",
            ],
            chosen: &[1, 3],
        },
        Case {
            name: "one hint-less ready endpoint disables zone hints",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 zones=z1", "10.0.0.2"],
            chosen: &[1, 2],
        },
        Case {
            name: "hint-less unready endpoints do not count",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2", "10.0.0.3 unready"],
            chosen: &[1],
        },
        Case {
            name: "node without zone label ignores zone hints",
            policy: Cluster,
            zone: None,
            candidates: &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2"],
            chosen: &[1, 2],
        },
        Case {
            name: "no hint for this zone means all endpoints",
            policy: Cluster,
            zone: Some("z3"),
            candidates: &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2"],
            chosen: &[1, 2],
        },
        Case {
            name: "only unready endpoints in this zone: hints ignored",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 unready zones=z1", "10.0.0.2 zones=z2"],
            chosen: &[2],
        },
        Case {
            name: "same-node hints win over zone hints",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 zones=z1 nodes=b", "10.0.0.2 zones=z1 nodes=a"],
            chosen: &[2],
        },
        Case {
            name: "node hints not covering this node fall back to zones",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 zones=z1 nodes=b", "10.0.0.2 zones=z2 nodes=c"],
            chosen: &[1],
        },
        Case {
            name: "topology filters ready only; fallback ignores it",
            policy: Cluster,
            zone: Some("z1"),
            candidates: &["10.0.0.1 terminating zones=z2"],
            chosen: &[1],
        },
    ];
    for Case {
        name,
        policy,
        zone,
        candidates,
        chosen,
    } in cases
    {
        let node = NodeContext {
            name: "a".into(),
            zone: zone.map(String::from),
            ..NodeContext::default()
        };
        let candidates: Vec<Candidate> = candidates.iter().map(|c| candidate(c)).collect();
        let got: Vec<u8> = select_endpoints(&candidates, *policy, &node)
            .iter()
            .map(|endpoint| match endpoint.ip {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => unreachable!(),
            })
            .collect();
        assert_eq!(got, *chosen, "{name}");
    }
}
