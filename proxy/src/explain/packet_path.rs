//! Packets from outside: the tc programs on the node's devices
//! (`ebpf/programs/src/nat.rs`), with their own conntrack and SNAT.

use std::net::{IpAddr, SocketAddr};

use switchyard_abi::{
    Addr, BACKEND_LOCAL, Backend, FLOW_FORWARD, FRONTEND_CLUSTER_IP, FRONTEND_DROP_NO_LOCAL,
    FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, FlowKey, MaglevKey, NODE_CLUSTER_IP_FROM_OUTSIDE,
    NODE_LOCAL_BY_DEVICE, NODE_MASQUERADE_ALL, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    ServiceKey, ServiceValue, client_of_addr, flow_hash,
};

use super::{
    Candidate, Chosen, Explanation, Lookups, Outcomes, Query, Trail, Verdict, address, affinity,
    candidates, unserved,
};

const PATH: &str = "packet";

const REFUSAL: &str = "a TCP RST or ICMP port unreachable from the frontend's address";

const OUTCOMES: Outcomes = Outcomes {
    refused: REFUSAL,
    dropped: "the packet is dropped",
    passed: "not addressed to a frontend: left to the node's stack",
};

pub fn explain(maps: &impl Lookups, query: &Query) -> Explanation {
    let mut trail = Trail::new();
    trail.step(
        "path",
        "from outside this node: the tc program on the device it arrives by",
    );
    let src = Addr::from(query.src);
    if let Some(verdict) = established(maps, query, &mut trail) {
        return trail.finish(PATH, verdict);
    }
    let serves_cluster_ips = maps
        .node_config()
        .is_some_and(|config| config.flags & NODE_CLUSTER_IP_FROM_OUTSIDE != 0);
    let Some((key, value)) = frontend_of(maps, query, serves_cluster_ips) else {
        let verdict = if serves_cluster_ips {
            unserved(maps, &Addr::from(query.dst.ip()), &mut trail, &OUTCOMES)
        } else {
            trail.step(
                "frontend",
                "none: this node serves no ClusterIP to outside clients",
            );
            Verdict::Passed {
                why: OUTCOMES.passed.into(),
            }
        };
        return trail.finish(PATH, verdict);
    };
    trail.frontend(maps, &key, &value);
    if query.protocol.number() != PROTO_UDP {
        trail.step(
            "new connection",
            "only a SYN opens one; other packets go on to the stack",
        );
    }
    if value.flags & FRONTEND_SOURCE_RANGES != 0 {
        let allowed = maps.source_range_allows(&key, &src);
        trail.step(
            "loadBalancerSourceRanges",
            format!(
                "{} is {} them",
                query.src,
                if allowed { "inside" } else { "outside" }
            ),
        );
        if !allowed {
            let verdict = Verdict::Dropped {
                how: OUTCOMES.dropped.into(),
                why: "the source is outside loadBalancerSourceRanges".into(),
            };
            return trail.finish(PATH, verdict);
        }
    }
    if value.count == 0 {
        let verdict = if value.flags & FRONTEND_DROP_NO_LOCAL != 0 {
            Verdict::Dropped {
                how: "the packet is dropped, so a load balancer tries another node".into(),
                why: "externalTrafficPolicy Local and no endpoint on this node".into(),
            }
        } else {
            Verdict::Refused {
                how: REFUSAL.into(),
                why: "the Service has no endpoints".into(),
            }
        };
        return trail.finish(PATH, verdict);
    }
    let masquerades = value.flags & FRONTEND_CLUSTER_IP != 0 && masquerades(maps, &src, &mut trail);
    let snat = |backend: &Backend| {
        backend.flags & BACKEND_LOCAL == 0
            && (value.flags & FRONTEND_SNAT_REMOTE != 0 || masquerades)
    };
    let candidates = candidates(maps, &key, value.count, snat);
    backends_step(maps, query, &value, &candidates, &mut trail);
    if value.maglev_table_size() != 0 {
        let chosen = maglev(maps, query, &key, &value, &mut trail);
        return trail.finish(PATH, Verdict::Translated { candidates, chosen });
    }
    let chosen = affinity(maps, client_of_addr(&src), &key, &value).map(|(record, backend)| {
        trail.step(
            "session affinity",
            format!(
                "the client's record names slot {} (backend {})",
                record.slot, record.backend_id
            ),
        );
        Chosen {
            address: address(&backend),
            because: "session affinity".into(),
            snat: None,
        }
    });
    trail.finish(PATH, Verdict::Translated { candidates, chosen })
}

/// What the candidates are and how one is picked.
fn backends_step(
    maps: &impl Lookups,
    query: &Query,
    value: &ServiceValue,
    candidates: &[Candidate],
    trail: &mut Trail,
) {
    let natted = candidates.iter().filter(|c| c.snat).count();
    trail.step(
        "backends",
        format!(
            "{} candidate(s), one picked {}; {natted} on other nodes would see the source NATed to {}",
            candidates.len(),
            if value.maglev_table_size() == 0 { "at random" } else { "by Maglev" },
            maps.snat_address(query.src.is_ipv6())
                .map_or_else(|| "no address (dropped)".to_owned(), |a| IpAddr::from(a).to_string()),
        ),
    );
}

/// The backend a Maglev frontend's table gives this flow, as `select`
/// finds it: the flow's bucket, the slot it names, the backend in that slot
/// (a bucket missing or past the count: picked at random, as mid-update).
fn maglev(
    maps: &impl Lookups,
    query: &Query,
    key: &ServiceKey,
    value: &ServiceValue,
    trail: &mut Trail,
) -> Option<Chosen> {
    let size = value.maglev_table_size();
    let client_only = value.affinity_timeout != 0;
    let sport = match query.src_port {
        Some(port) => port,
        None if client_only => 0,
        None => {
            trail.step(
                "maglev",
                "the backend follows from the client's port: give SRC as address:port",
            );
            return None;
        }
    };
    let hash = flow_hash(
        &Addr::from(query.src),
        sport.to_be(),
        query.dst.port().to_be(),
        query.protocol.number(),
        client_only,
    );
    let bucket = hash % size;
    let slot = maps
        .maglev(&MaglevKey::new(key, bucket))
        .and_then(|slot| u16::try_from(slot).ok())
        .filter(|slot| (1..=value.count).contains(slot));
    let backend = slot.and_then(|slot| {
        let entry = maps.service(&key.with_slot(slot))?;
        Some((entry.backend_id, maps.backend(entry.backend_id)?))
    });
    let hashed = if client_only {
        "the client address (session affinity)"
    } else {
        "the client address and port, protocol and port"
    };
    let Some((slot, (id, backend))) = slot.zip(backend) else {
        trail.step(
            "maglev",
            format!("{hashed} hash to bucket {bucket} of {size}, which names no backend yet: picked at random"),
        );
        return None;
    };
    trail.step(
        "maglev",
        format!("{hashed} hash to bucket {bucket} of {size}: slot {slot} (backend {id}), on every node alike"),
    );
    Some(Chosen {
        address: address(&backend),
        because: format!("Maglev bucket {bucket}"),
        snat: None,
    })
}

/// Whether a ClusterIP's client from outside is masqueraded, as `nat.rs`
/// decides it: `--masquerade-all`, else detect-local by the device the
/// packet arrives on (a packet from another machine arrives on a node
/// device, never a pod's), else by the cluster's pod CIDRs.
fn masquerades(maps: &impl Lookups, src: &Addr, trail: &mut Trail) -> bool {
    let flags = maps.node_config().map_or(0, |config| config.flags);
    let (masquerades, why) = if flags & NODE_MASQUERADE_ALL != 0 {
        (true, "masquerade-all: every client is NATed")
    } else if flags & NODE_LOCAL_BY_DEVICE != 0 {
        (
            true,
            "detect-local by device: a client from another machine arrives on a node device, not a pod's, and is NATed",
        )
    } else if maps.in_cluster_cidr(src) {
        (
            false,
            "detect-local by CIDR: the client is inside the cluster's pod CIDRs and is kept",
        )
    } else {
        (
            true,
            "detect-local by CIDR: the client is outside the cluster's pod CIDRs and is NATed",
        )
    };
    trail.step("masquerade", why);
    masquerades
}

/// A connection conntrack already holds goes where its entry says.
fn established(maps: &impl Lookups, query: &Query, trail: &mut Trail) -> Option<Verdict> {
    let Some(src_port) = query.src_port else {
        trail.step("conntrack", "no client port given: not looked up");
        return None;
    };
    let key = FlowKey::new(
        Addr::from(query.src),
        Addr::from(query.dst.ip()),
        src_port.to_be(),
        query.dst.port().to_be(),
        query.protocol.number(),
    );
    let flow = maps.flow(&key).filter(|flow| flow.kind == FLOW_FORWARD);
    let Some(flow) = flow else {
        trail.step("conntrack", "no connection from this client port yet");
        return None;
    };
    if query.protocol.number() == PROTO_UDP
        && maps
            .backend(flow.backend_id)
            .is_none_or(|backend| backend.addr != flow.addr || backend.port != flow.port)
    {
        trail.step(
            "conntrack",
            "a UDP flow whose backend left the Service: it moves to a live one",
        );
        return None;
    }
    let backend = SocketAddr::new(IpAddr::from(flow.addr), u16::from_be(flow.port));
    let snat = (flow.snat != 0)
        .then(|| SocketAddr::new(IpAddr::from(flow.snat_addr), u16::from_be(flow.snat_port)));
    trail.step(
        "conntrack",
        format!(
            "an established connection to backend {} ({backend})",
            flow.backend_id
        ),
    );
    Some(Verdict::Translated {
        candidates: Vec::new(),
        chosen: Some(Chosen {
            address: backend,
            because: "an established connection (conntrack)".into(),
            snat,
        }),
    })
}

/// An external-scope frontend, else a ClusterIP when the node serves
/// those to outside clients.
fn frontend_of(
    maps: &impl Lookups,
    query: &Query,
    serves_cluster_ips: bool,
) -> Option<(ServiceKey, ServiceValue)> {
    let (addr, port, proto) = (
        Addr::from(query.dst.ip()),
        query.dst.port().to_be(),
        query.protocol.number(),
    );
    let external = ServiceKey::scoped(addr, port, proto, SCOPE_EXTERNAL, 0);
    if let Some(value) = maps.service(&external) {
        return Some((external, value));
    }
    let internal = ServiceKey::scoped(addr, port, proto, SCOPE_INTERNAL, 0);
    maps.service(&internal)
        .filter(|value| serves_cluster_ips && value.flags & FRONTEND_CLUSTER_IP != 0)
        .map(|value| (internal, value))
}
