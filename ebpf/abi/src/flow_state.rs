//! A connection's state as netfilter's conntrack would name it, read from
//! the facts its two entries recorded ([`Flow::fin`], [`Flow::rst`]...),
//! and how long each state may sit idle. The kernel side uses
//! [`ConnState::is_over`] to reopen a client's reused port and to take over
//! a closed connection's NAT port; the agent uses the timeouts to collect.

use crate::{Flow, PROTO_TCP};

/// netfilter's TCP states (`nf_conntrack_proto_tcp.c`), and UDP's two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnState {
    /// The client's SYN went out; nothing came back.
    SynSent,
    /// The backend answered the SYN; the client has not acknowledged yet.
    SynRecv,
    Established,
    /// One side sent a FIN the other has not acknowledged.
    FinWait,
    /// One side's FIN is acknowledged; the other side may still send.
    CloseWait,
    /// Both sides sent a FIN; the last is not acknowledged yet.
    LastAck,
    /// Both FINs acknowledged.
    TimeWait,
    /// An RST went either way.
    Close,
    /// UDP before the backend answered.
    UdpUnreplied,
    /// UDP once answered.
    UdpStream,
}

impl ConnState {
    /// The state of a connection of protocol `proto` from its entries;
    /// a missing entry (evicted, or collected half-way) has seen nothing.
    pub fn of(proto: u8, forward: Option<&Flow>, reply: Option<&Flow>) -> Self {
        let blank = Flow::default();
        let (client, backend) = (forward.unwrap_or(&blank), reply.unwrap_or(&blank));
        if proto != PROTO_TCP {
            return if backend.seen != 0 {
                Self::UdpStream
            } else {
                Self::UdpUnreplied
            };
        }
        if client.rst != 0 || backend.rst != 0 {
            return Self::Close;
        }
        match (client.fin != 0, backend.fin != 0) {
            (true, true) if client.peer_fin_acked != 0 && backend.peer_fin_acked != 0 => {
                Self::TimeWait
            }
            (true, true) => Self::LastAck,
            // The side that did not send the FIN acknowledges it.
            (true, false) if backend.peer_fin_acked != 0 => Self::CloseWait,
            (false, true) if client.peer_fin_acked != 0 => Self::CloseWait,
            (true, false) | (false, true) => Self::FinWait,
            (false, false) => match (backend.seen != 0, client.seen != 0) {
                (true, true) => Self::Established,
                (true, false) => Self::SynRecv,
                (false, _) => Self::SynSent,
            },
        }
    }

    /// Nothing more will be sent on this connection: netfilter lets a new
    /// SYN reopen its tuple, and its NAT port may carry a new connection.
    pub const fn is_over(self) -> bool {
        matches!(self, Self::TimeWait | Self::Close)
    }

    /// The name `switchyard conntrack` prints, netfilter's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::Established => "ESTABLISHED",
            Self::FinWait => "FIN_WAIT",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::UdpUnreplied => "UNREPLIED",
            Self::UdpStream => "ASSURED",
        }
    }
}

/// Idle times after which the agent forgets a connection, in seconds, per
/// state. The kernel side keeps no clocks of its own: an entry lives until
/// collected, or evicted under pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    /// `--conntrack-tcp-timeout-established`.
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    /// `--conntrack-tcp-timeout-close-wait`.
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// `--conntrack-udp-timeout`.
    pub udp: u32,
    /// `--conntrack-udp-timeout-stream`.
    pub udp_stream: u32,
}

impl Default for FlowTimeouts {
    /// netfilter's defaults (`nf_conntrack_tcp_timeout_*`), with kube-proxy's
    /// for the states its flags set: established 24 h, close-wait 1 h, UDP
    /// 30 s and 120 s once a stream.
    fn default() -> Self {
        Self {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86_400,
            tcp_fin_wait: 120,
            tcp_close_wait: 3_600,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
        }
    }
}

impl FlowTimeouts {
    /// The idle limit of a connection in `state`, in seconds.
    pub const fn for_state(&self, state: ConnState) -> u32 {
        match state {
            ConnState::SynSent => self.tcp_syn_sent,
            ConnState::SynRecv => self.tcp_syn_recv,
            ConnState::Established => self.tcp_established,
            ConnState::FinWait => self.tcp_fin_wait,
            ConnState::CloseWait => self.tcp_close_wait,
            ConnState::LastAck => self.tcp_last_ack,
            ConnState::TimeWait => self.tcp_time_wait,
            ConnState::Close => self.tcp_close,
            ConnState::UdpUnreplied => self.udp,
            ConnState::UdpStream => self.udp_stream,
        }
    }
}
