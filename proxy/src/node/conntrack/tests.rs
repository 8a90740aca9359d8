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
    let reply = Flow::reply_of(&forward_key, snat, last_seen_s * SECOND, [0, 0]);
    if snat {
        forward.snat = 1;
        forward.snat_addr = node.0;
        forward.snat_port = node.1;
    }
    let reply_key = forward.partner(&forward_key);
    assert_eq!(
        reply.partner(&reply_key),
        forward_key,
        "partners are mutual"
    );
    assert!(forward.pairs_with(&forward_key, &reply, &reply_key));
    assert!(reply.pairs_with(&reply_key, &forward, &forward_key));
    assert!(
        !forward.pairs_with(&forward_key, &forward, &forward_key),
        "not itself"
    );
    if snat {
        // A newer connection on the client's tuple took another NAT port.
        let mut newer = forward;
        newer.snat_port = 1_234u16.to_be();
        assert!(!reply.pairs_with(&reply_key, &newer, &forward_key));
    }
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
        assert_eq!(view.state, "SYN_SENT");
        assert_eq!(view.idle_seconds, 2);
    }
    let mut orphan = connection(PROTO_UDP, true, 1);
    orphan.remove(0);
    let pairs = connections(orphan);
    assert!(pairs[0].forward.is_none());
    let view = ConnectionView::new(&pairs[0], SECOND);
    assert_eq!(view.client.as_deref(), Some("192.168.77.2:40000"));
}

/// What one direction's packets have recorded on its entry.
#[derive(Clone, Copy, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "mirrors Flow's one byte per fact"
)]
struct Facts {
    seen: bool,
    fin: bool,
    rst: bool,
    peer_fin: bool,
    peer_fin_acked: bool,
}

impl Facts {
    fn apply(self, flow: &mut Flow) {
        flow.seen = u8::from(self.seen);
        flow.fin = u8::from(self.fin);
        flow.rst = u8::from(self.rst);
        flow.peer_fin = u8::from(self.peer_fin);
        flow.peer_fin_acked = u8::from(self.peer_fin_acked);
    }
}

const NOTHING: Facts = Facts {
    seen: false,
    fin: false,
    rst: false,
    peer_fin: false,
    peer_fin_acked: false,
};
const SEEN: Facts = Facts {
    seen: true,
    ..NOTHING
};
const FIN: Facts = Facts { fin: true, ..SEEN };
const GOT_FIN: Facts = Facts {
    peer_fin: true,
    ..SEEN
};
const ACKED_FIN: Facts = Facts {
    peer_fin_acked: true,
    ..GOT_FIN
};
const RST: Facts = Facts { rst: true, ..SEEN };

struct StateRow {
    proto: u8,
    client: Facts,
    backend: Facts,
    state: ConnState,
    /// Idle seconds just within this state's timeout (see `timeouts`).
    limit: u64,
}

/// Every state of netfilter's table as the two entries record it, with
/// the timeout `both_entries_name_the_state_and_its_timeout` gives it.
fn state_rows() -> Vec<StateRow> {
    let both_fin = Facts {
        fin: true,
        ..GOT_FIN
    };
    let both_fin_acked = Facts {
        fin: true,
        ..ACKED_FIN
    };
    vec![
        StateRow {
            proto: PROTO_TCP,
            client: NOTHING,
            backend: NOTHING,
            state: ConnState::SynSent,
            limit: 11,
        },
        StateRow {
            proto: PROTO_TCP,
            client: NOTHING,
            backend: SEEN,
            state: ConnState::SynRecv,
            limit: 12,
        },
        StateRow {
            proto: PROTO_TCP,
            client: SEEN,
            backend: SEEN,
            state: ConnState::Established,
            limit: 13,
        },
        StateRow {
            proto: PROTO_TCP,
            client: FIN,
            backend: GOT_FIN,
            state: ConnState::FinWait,
            limit: 14,
        },
        StateRow {
            proto: PROTO_TCP,
            client: FIN,
            backend: ACKED_FIN,
            state: ConnState::CloseWait,
            limit: 15,
        },
        StateRow {
            proto: PROTO_TCP,
            client: ACKED_FIN,
            backend: FIN,
            state: ConnState::CloseWait,
            limit: 15,
        },
        StateRow {
            proto: PROTO_TCP,
            client: both_fin,
            backend: both_fin_acked,
            state: ConnState::LastAck,
            limit: 16,
        },
        StateRow {
            proto: PROTO_TCP,
            client: both_fin_acked,
            backend: both_fin_acked,
            state: ConnState::TimeWait,
            limit: 17,
        },
        StateRow {
            proto: PROTO_TCP,
            client: RST,
            backend: SEEN,
            state: ConnState::Close,
            limit: 18,
        },
        StateRow {
            proto: PROTO_TCP,
            client: SEEN,
            backend: RST,
            state: ConnState::Close,
            limit: 18,
        },
        StateRow {
            proto: PROTO_UDP,
            client: SEEN,
            backend: NOTHING,
            state: ConnState::UdpUnreplied,
            limit: 19,
        },
        StateRow {
            proto: PROTO_UDP,
            client: NOTHING,
            backend: SEEN,
            state: ConnState::UdpStream,
            limit: 20,
        },
    ]
}

/// Every state of netfilter's table as the two entries record it, with
/// the timeout each one gets.
#[test]
fn both_entries_name_the_state_and_its_timeout() {
    let timeouts = FlowTimeouts {
        tcp_syn_sent: 11,
        tcp_syn_recv: 12,
        tcp_established: 13,
        tcp_fin_wait: 14,
        tcp_close_wait: 15,
        tcp_last_ack: 16,
        tcp_time_wait: 17,
        tcp_close: 18,
        udp: 19,
        udp_stream: 20,
    };
    for row in state_rows() {
        let mut entries = connection(row.proto, true, 1000);
        row.client.apply(&mut entries[0].1);
        row.backend.apply(&mut entries[1].1);
        let pair = &connections(entries)[0];
        assert_eq!(pair.state(), row.state);
        let at = |idle: u64| (1000 + idle) * SECOND;
        assert!(!pair.expired(at(row.limit), &timeouts), "{:?}", row.state);
        assert!(
            pair.expired(at(row.limit + 1), &timeouts),
            "{:?}",
            row.state
        );
        assert_eq!(
            row.state.is_over(),
            matches!(row.state, ConnState::TimeWait | ConnState::Close)
        );
    }
}

#[test]
fn a_lone_half_is_judged_by_what_it_saw() {
    let mut entries = connection(PROTO_TCP, true, 0);
    FIN.apply(&mut entries[1].1);
    entries.remove(0);
    let pair = &connections(entries)[0];
    assert_eq!(pair.state(), ConnState::FinWait);
    assert_eq!(
        pair.nat_port(),
        Some((addr("192.168.77.11"), 61_234u16.to_be()))
    );
}
