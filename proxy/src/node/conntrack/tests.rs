use std::net::IpAddr;

use switchyard_abi::{Addr, PROTO_TCP, PROTO_UDP};

use super::*;

fn addr(text: &str) -> Addr {
    Addr::from(text.parse::<IpAddr>().unwrap())
}

const SECOND: u64 = NANOS_PER_SECOND;

/// A client -> NodePort connection sent to a backend, with its two entries.
fn connection(proto: u8, snat: bool, last_seen_s: u64) -> Vec<(FlowKey, Flow)> {
    let client = (addr("192.168.77.2"), 40_000u16.to_be());
    let frontend = (addr("192.168.77.11"), 30_080u16.to_be());
    let backend = (addr("10.244.2.10"), 8_080u16.to_be());
    let node = (addr("192.168.77.11"), 61_234u16.to_be());
    let forward_key = FlowKey::new(client.0, frontend.0, client.1, frontend.1, proto);
    let mut forward = Flow {
        last_seen_ns: last_seen_s * SECOND,
        addr: backend.0,
        port: backend.1,
        kind: FLOW_FORWARD,
        backend_id: 3,
        ..Flow::default()
    };
    let mut reply = Flow {
        last_seen_ns: last_seen_s * SECOND,
        addr: frontend.0,
        port: frontend.1,
        kind: FLOW_REPLY,
        ..Flow::default()
    };
    if snat {
        forward.snat = 1;
        forward.snat_addr = node.0;
        forward.snat_port = node.1;
        reply.snat = 1;
        reply.snat_addr = client.0;
        reply.snat_port = client.1;
    }
    let reply_key = forward.partner(&forward_key);
    assert_eq!(
        reply.partner(&reply_key),
        forward_key,
        "partners are mutual"
    );
    vec![(forward_key, forward), (reply_key, reply)]
}

#[test]
fn entries_pair_into_connections() {
    for snat in [false, true] {
        let pairs = connections(connection(PROTO_TCP, snat, 1));
        assert_eq!(pairs.len(), 1, "snat {snat}");
        assert!(pairs[0].forward.is_some() && pairs[0].reply.is_some());
        let view = ConnectionView::new(&pairs[0], 3 * SECOND);
        assert_eq!(view.client.as_deref(), Some("192.168.77.2:40000"));
        assert_eq!(view.frontend.as_deref(), Some("192.168.77.11:30080"));
        assert_eq!(view.backend.as_deref(), Some("10.244.2.10:8080"));
        assert_eq!(view.snat.is_some(), snat);
        assert_eq!(view.state, "unanswered");
        assert_eq!(view.idle_seconds, 2);
    }
    let mut orphan = connection(PROTO_UDP, true, 1);
    orphan.remove(0);
    let pairs = connections(orphan);
    assert!(pairs[0].forward.is_none());
    let view = ConnectionView::new(&pairs[0], SECOND);
    assert_eq!(view.client.as_deref(), Some("192.168.77.2:40000"));
}

#[test]
fn expiry_follows_protocol_and_state() {
    let timeouts = FlowTimeouts {
        tcp_syn: 10,
        tcp_established: 100,
        tcp_closing: 5,
        udp: 3,
        udp_stream: 30,
        pad: 0,
    };
    // (proto, answered, closing, idle seconds, expired)
    let cases = [
        (PROTO_TCP, false, false, 11, true),
        (PROTO_TCP, false, false, 9, false),
        (PROTO_TCP, true, false, 99, false),
        (PROTO_TCP, true, false, 101, true),
        (PROTO_TCP, true, true, 6, true),
        (PROTO_UDP, false, false, 4, true),
        (PROTO_UDP, true, false, 4, false),
        (PROTO_UDP, true, false, 31, true),
    ];
    for (proto, answered, closing, idle, expired) in cases {
        let mut entries = connection(proto, false, 1000);
        entries[1].1.seen = u8::from(answered);
        entries[0].1.closing = u8::from(closing);
        let pair = &connections(entries)[0];
        assert_eq!(
            pair.expired((1000 + idle) * SECOND, &timeouts),
            expired,
            "{proto} answered={answered} closing={closing} idle={idle}"
        );
    }
}
