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
    // (case, policy, node zone, candidates, chosen last octets)
    type Case<'a> = (
        &'a str,
        TrafficPolicy,
        Option<&'a str>,
        &'a [&'a str],
        &'a [u8],
    );
    let cases: &[Case] = &[
        (
            "ready only",
            Cluster,
            None,
            &["10.0.0.1", "10.0.0.2 unready"],
            &[1],
        ),
        (
            "terminating fallback when none ready",
            Cluster,
            None,
            &[
                "10.0.0.1 terminating",
                "10.0.0.2 stopping",
                "10.0.0.3 unready",
            ],
            &[1],
        ),
        (
            "ready beats serving-terminating",
            Cluster,
            None,
            &["10.0.0.1 terminating", "10.0.0.2"],
            &[2],
        ),
        ("nothing usable", Cluster, None, &["10.0.0.1 stopping"], &[]),
        (
            "local policy keeps this node's",
            Local,
            None,
            &["10.0.0.1 node=a", "10.0.0.2 node=b", "10.0.0.3"],
            &[1],
        ),
        (
            "local terminating fallback stays local",
            Local,
            None,
            &["10.0.0.1 node=a terminating", "10.0.0.2 node=b"],
            &[1],
        ),
        (
            "local with none here",
            Local,
            None,
            &["10.0.0.2 node=b"],
            &[],
        ),
        (
            "zone hints used when all have them and one matches",
            Cluster,
            Some("z1"),
            &[
                "10.0.0.1 zones=z1",
                "10.0.0.2 zones=z2",
                "10.0.0.3 zones=z1,z2",
            ],
            &[1, 3],
        ),
        (
            "one hint-less ready endpoint disables zone hints",
            Cluster,
            Some("z1"),
            &["10.0.0.1 zones=z1", "10.0.0.2"],
            &[1, 2],
        ),
        (
            "hint-less unready endpoints do not count",
            Cluster,
            Some("z1"),
            &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2", "10.0.0.3 unready"],
            &[1],
        ),
        (
            "node without zone label ignores zone hints",
            Cluster,
            None,
            &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2"],
            &[1, 2],
        ),
        (
            "no hint for this zone means all endpoints",
            Cluster,
            Some("z3"),
            &["10.0.0.1 zones=z1", "10.0.0.2 zones=z2"],
            &[1, 2],
        ),
        (
            "only unready endpoints in this zone: hints ignored",
            Cluster,
            Some("z1"),
            &["10.0.0.1 unready zones=z1", "10.0.0.2 zones=z2"],
            &[2],
        ),
        (
            "same-node hints win over zone hints",
            Cluster,
            Some("z1"),
            &["10.0.0.1 zones=z1 nodes=b", "10.0.0.2 zones=z1 nodes=a"],
            &[2],
        ),
        (
            "node hints not covering this node fall back to zones",
            Cluster,
            Some("z1"),
            &["10.0.0.1 zones=z1 nodes=b", "10.0.0.2 zones=z2 nodes=c"],
            &[1],
        ),
        (
            "topology filters ready only; fallback ignores it",
            Cluster,
            Some("z1"),
            &["10.0.0.1 terminating zones=z2"],
            &[1],
        ),
    ];
    for (name, policy, zone, candidates, chosen) in cases {
        let node = NodeContext {
            name: "a".into(),
            zone: zone.map(String::from),
            node_port_addresses: Vec::new(),
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
