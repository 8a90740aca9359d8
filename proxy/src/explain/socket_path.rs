//! Traffic that starts on this node: the connect/sendmsg hooks
//! (`ebpf/programs/src/sock.rs`), which translate once, at the socket call.

use switchyard_abi::{Addr, FRONTEND_DROP_NO_LOCAL, FRONTEND_SOURCE_RANGES, ServiceKey};

use super::{
    Chosen, Explanation, Lookups, Outcomes, Query, Trail, Verdict, address, affinity, candidates,
    unserved,
};

const PATH: &str = "socket";

const OUTCOMES: Outcomes = Outcomes {
    refused: "connect() fails with ECONNREFUSED",
    dropped: "connect() fails with ETIMEDOUT at once",
    passed: "the connection goes on untouched",
};

/// The same before Linux 5.18, without `bpf_set_retval`.
const OUTCOMES_WITHOUT_ERRNO: Outcomes = Outcomes {
    refused: "connect() is sent to port 0 on loopback and fails with ECONNREFUSED (no bpf_set_retval before Linux 5.18)",
    dropped: "connect() fails with EPERM at once (no bpf_set_retval before Linux 5.18)",
    passed: OUTCOMES.passed,
};

pub fn explain(maps: &impl Lookups, query: &Query) -> Explanation {
    let outcomes = if maps.socket_errno() {
        &OUTCOMES
    } else {
        &OUTCOMES_WITHOUT_ERRNO
    };
    let mut trail = Trail::new();
    let src = Addr::from(query.src);
    let client = maps.namespace_of(&src);
    trail.step(
        "path",
        match client {
            Some(cookie) => format!(
                "from this node (network namespace {cookie}): the socket hooks translate at connect() or sendmsg()"
            ),
            None => "from this node: the socket hooks translate at connect() or sendmsg() (its network namespace is not in the map, so no affinity record is looked up)".to_owned(),
        },
    );
    let key = ServiceKey::new(
        Addr::from(query.dst.ip()),
        query.dst.port().to_be(),
        query.protocol.number(),
        0,
    );
    let Some(value) = maps.service(&key) else {
        let verdict = unserved(maps, &key.addr, &mut trail, outcomes);
        return trail.finish(PATH, verdict);
    };
    trail.frontend(maps, &key, &value);
    if value.count == 0 && value.flags & FRONTEND_DROP_NO_LOCAL != 0 {
        let verdict = Verdict::Dropped {
            how: outcomes.dropped.into(),
            why: "internalTrafficPolicy Local and no endpoint on this node".into(),
        };
        return trail.finish(PATH, verdict);
    }
    if value.flags & FRONTEND_SOURCE_RANGES != 0 {
        // The hook checks the address the socket's namespace sends from.
        let allowed = maps.source_range_allows(&key, &src);
        trail.step(
            "loadBalancerSourceRanges",
            if allowed {
                format!("{} is inside them", query.src)
            } else {
                format!("{} is outside them", query.src)
            },
        );
        if !allowed {
            let verdict = Verdict::Dropped {
                how: outcomes.dropped.into(),
                why: "the source is outside loadBalancerSourceRanges".into(),
            };
            return trail.finish(PATH, verdict);
        }
    }
    if value.count == 0 {
        let verdict = Verdict::Refused {
            how: outcomes.refused.into(),
            why: "the Service has no endpoints".into(),
        };
        return trail.finish(PATH, verdict);
    }
    let candidates = candidates(maps, &key, value.count, |_| false);
    trail.step(
        "backends",
        format!("{} candidate(s), one picked at random", candidates.len()),
    );
    let chosen = client
        .and_then(|cookie| affinity(maps, cookie, &key, &value))
        .map(|(record, backend)| {
            trail.step(
                "session affinity",
                format!(
                    "this namespace's record names slot {} (backend {})",
                    record.slot, record.backend_id
                ),
            );
            Chosen {
                address: address(&backend),
                because: "session affinity".into(),
                snat: None,
            }
        });
    if chosen.is_none() && value.affinity_timeout > 0 {
        trail.step(
            "session affinity",
            "no live record: a new pick, then recorded",
        );
    }
    if query.protocol == crate::model::Protocol::Udp {
        trail.step(
            "unconnected UDP",
            "a socket's later datagrams keep its first pick while that backend lives",
        );
    }
    trail.finish(PATH, Verdict::Translated { candidates, chosen })
}
