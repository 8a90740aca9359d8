//! The client subcommands. Every socket operation carries a timeout and every
//! loop a count, so a probe always ends.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use switchyard_tests::probe::{Attempt, Datagram, Reply, Summary};

use crate::socket::{classify, same_endpoint};

const REQUEST: &[u8] = b"ping\n";
/// The largest UDP payload (IPv4's, the smaller): a padded datagram may be
/// any size up to it.
pub const MAX_DATAGRAM: usize = 65_507;
const MAX_REPLY: usize = MAX_DATAGRAM;

/// One TCP connection, one request, one reply.
pub fn tcp_once(to: SocketAddr, timeout: Duration) -> Attempt {
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::failed(classify(&e)),
    };
    let mut attempt = Attempt {
        getpeername: stream.peer_addr().ok().map(|a| a.to_string()),
        ..Attempt::default()
    };
    let result = (|| {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        request(&mut stream, &mut reader)
    })();
    fill(&mut attempt, result);
    if attempt.ok && !peer_matches(attempt.getpeername.as_deref(), to) {
        attempt.ok = false;
        attempt.error = Some("getpeername_mismatch".into());
    }
    attempt
}

fn peer_matches(seen: Option<&str>, to: SocketAddr) -> bool {
    seen.and_then(|s| s.parse().ok())
        .is_some_and(|a| same_endpoint(a, to))
}

/// Sends one request line on an open connection and reads one reply line.
fn request(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    stream.write_all(REQUEST)?;
    let mut line = Vec::new();
    let n = reader.take(MAX_REPLY as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_slice(&line).map_err(std::io::Error::other)
}

fn fill(attempt: &mut Attempt, result: std::io::Result<Reply>) {
    match result {
        Ok(reply) => {
            attempt.ok = true;
            attempt.name = Some(reply.name);
            attempt.peer_seen_by_server = Some(reply.peer);
        }
        Err(e) => {
            attempt.ok = false;
            attempt.error = Some(classify(&e));
        }
    }
}

/// One UDP request/reply; `connected` uses connect()+send, otherwise sendto.
/// The request is padded with spaces to `size` bytes (the server pads its
/// reply to match), so that above the MTU both go as IP fragments.
pub fn udp_once(
    to: SocketAddr,
    connected: bool,
    source_port: u16,
    size: usize,
    timeout: Duration,
) -> Attempt {
    let mut request = REQUEST.to_vec();
    request.resize(size.max(REQUEST.len()), b' ');
    let mut local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    local.set_port(source_port);
    let result = (|| {
        let socket = UdpSocket::bind(local)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        // What the exchange reads comes first: before 5.18 a refused
        // connect() is steered to port 0 on loopback, where getpeername()
        // fails (ENOTCONN) and the first send or recv reads ECONNREFUSED,
        // as an application would see it.
        let mut peer = None;
        if connected {
            socket.connect(to)?;
            peer = Some(socket.peer_addr());
            socket.send(&request)?;
        } else {
            socket.send_to(&request, to)?;
        }
        let mut buf = vec![0u8; MAX_REPLY];
        // recv_from also on a connected socket: it reports the source, which
        // the recvmsg hook must have turned back into the service address.
        let (n, from) = socket.recv_from(&mut buf)?;
        if n < request.len() {
            return Err(std::io::Error::other(format!(
                "reply of {n} bytes to a request of {}",
                request.len()
            )));
        }
        let reply: Reply = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
        Ok((reply, from, peer.transpose()?))
    })();
    match result {
        Ok((reply, from, peer)) => udp_attempt(reply, from, peer, to),
        Err(e) => Attempt::failed(classify(&e)),
    }
}

/// A UDP reply as an attempt: its source (and the socket's peer, when
/// connected) must be the address the request went to.
fn udp_attempt(
    reply: Reply,
    from: SocketAddr,
    peer: Option<SocketAddr>,
    to: SocketAddr,
) -> Attempt {
    let mut attempt = Attempt {
        ok: true,
        name: Some(reply.name),
        peer_seen_by_server: Some(reply.peer),
        getpeername: peer.map(|p| p.to_string()),
        reply_from: Some(from.to_string()),
        error: None,
    };
    if !same_endpoint(from, to) {
        attempt.ok = false;
        attempt.error = Some("reply_from_mismatch".into());
    } else if peer.is_some_and(|p| !same_endpoint(p, to)) {
        attempt.ok = false;
        attempt.error = Some("getpeername_mismatch".into());
    }
    attempt
}

/// When a repeating probe acts: every `interval` until `duration` is used
/// up, or sooner once `stop_file` exists (so a test can end it at a step
/// of its own).
#[derive(Clone, Debug)]
pub struct Pace {
    pub duration: Duration,
    pub interval: Duration,
    pub stop_file: Option<std::path::PathBuf>,
}

impl Pace {
    fn slots(&self) -> u128 {
        self.duration.as_millis() / self.interval.as_millis().max(1) + 1
    }

    /// Sleeps until the slot after `i`; false once the probe should stop.
    fn next(&self, i: u128, start: Instant) -> bool {
        let slot = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let next = self.interval.saturating_mul(slot);
        if next > self.duration {
            return false;
        }
        std::thread::sleep(next.saturating_sub(start.elapsed()));
        !self.stop_file.as_ref().is_some_and(|file| file.exists())
    }
}

/// One connection kept open, a request at each slot of `pace`. Stops at
/// the first failure: the connection is then unusable anyway.
pub fn hold(to: SocketAddr, pace: &Pace, timeout: Duration) -> Summary {
    let mut summary = Summary {
        ok: true,
        ..Summary::default()
    };
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => {
            summary.record(&Attempt::failed(classify(&e)));
            return summary;
        }
    };
    let setup = (|| {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.try_clone()
    })();
    let mut reader = match setup {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            summary.record(&Attempt::failed(classify(&e)));
            return summary;
        }
    };
    let start = Instant::now();
    for i in 0..pace.slots() {
        let mut attempt = Attempt::default();
        fill(&mut attempt, request(&mut stream, &mut reader));
        summary.record(&attempt);
        if !attempt.ok || !pace.next(i, start) {
            break;
        }
    }
    summary
}

/// A new connection at each slot of `pace` (TCP: connect, request, reply,
/// close; UDP: a new socket, one datagram each way), as a steady stream of
/// clients; every failure counted by kind.
pub fn churn(to: SocketAddr, udp: bool, pace: &Pace, timeout: Duration) -> Summary {
    let mut summary = Summary {
        ok: true,
        ..Summary::default()
    };
    let start = Instant::now();
    for i in 0..pace.slots() {
        let attempt = if udp {
            udp_once(to, false, 0, 0, timeout)
        } else {
            tcp_once(to, timeout)
        };
        summary.record(&attempt);
        if !pace.next(i, start) {
            break;
        }
    }
    summary
}

/// `count` TCP attempts folded into one summary, made by `parallel`
/// threads at once (each its own share of the count), as a client with a
/// connection pool of that size would.
pub fn burst(to: SocketAddr, count: u32, parallel: u32, timeout: Duration) -> Summary {
    let parallel = parallel.clamp(1, count.max(1));
    let shares =
        (0..parallel).map(|worker| count / parallel + u32::from(worker < count % parallel));
    let mut summary = Summary {
        ok: true,
        ..Summary::default()
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .map(|share| {
                scope.spawn(move || {
                    let mut part = Summary::default();
                    for _ in 0..share {
                        part.record(&tcp_once(to, timeout));
                    }
                    part
                })
            })
            .collect();
        for worker in workers {
            if let Ok(part) = worker.join() {
                summary.merge(part);
            }
        }
    });
    summary
}

/// How `udp_hold` addresses its datagrams.
#[derive(Clone, Copy, Debug)]
pub struct UdpHold {
    pub to: SocketAddr,
    /// One connect() up front (and again after an error, as a resolver or
    /// a metrics client that handles errors does); otherwise sendto().
    pub connected: bool,
    pub duration: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One UDP socket kept for `duration`, a datagram every `interval`; each is
/// reported through `report` as it completes.
pub fn udp_hold(hold: UdpHold, report: &mut dyn FnMut(&Datagram)) -> std::io::Result<()> {
    let local: SocketAddr = if hold.to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(hold.timeout))?;
    socket.set_write_timeout(Some(hold.timeout))?;
    let mut needs_connect = hold.connected;
    let start = Instant::now();
    let max_datagrams = hold.duration.as_millis() / hold.interval.as_millis().max(1) + 1;
    for i in 0..max_datagrams {
        let mut datagram = Datagram {
            sent_unix_ms: unix_ms(),
            reconnected: needs_connect && i > 0,
            attempt: Attempt::default(),
        };
        let connect = if needs_connect {
            socket.connect(hold.to)
        } else {
            Ok(())
        };
        datagram.attempt = match connect.and_then(|()| exchange(&socket, hold)) {
            Ok(attempt) => attempt,
            Err(e) => Attempt::failed(classify(&e)),
        };
        // A destroyed connection shows as ECONNABORTED, then (the socket
        // being disconnected) EDESTADDRREQ: connect again. A timeout is a
        // lost datagram, not a broken socket.
        needs_connect = hold.connected
            && datagram
                .attempt
                .error
                .as_deref()
                .is_some_and(|e| e != "timeout");
        report(&datagram);
        let slot = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let next = hold.interval.saturating_mul(slot);
        if next > hold.duration {
            break;
        }
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    Ok(())
}

fn exchange(socket: &UdpSocket, hold: UdpHold) -> std::io::Result<Attempt> {
    if hold.connected {
        socket.send(REQUEST)?;
    } else {
        socket.send_to(REQUEST, hold.to)?;
    }
    let mut buf = vec![0u8; MAX_REPLY];
    let (n, from) = socket.recv_from(&mut buf)?;
    let reply: Reply = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    let peer = if hold.connected {
        Some(socket.peer_addr()?)
    } else {
        None
    };
    Ok(udp_attempt(reply, from, peer, hold.to))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `count` UDP sockets, each connect()ed to `to` and closed at once, as a
/// client that opens a socket per request does: every connect to a Service
/// runs the connect hook and leaves per-socket state behind it, which the
/// getpeername() after it reads.
pub fn udp_connect_churn(to: SocketAddr, count: u32) -> Summary {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let mut summary = Summary {
        ok: true,
        ..Summary::default()
    };
    for _ in 0..count {
        // getpeername() as a client that logs its peer does: it reads the
        // socket's translation back, as a reply would.
        let result = UdpSocket::bind(local)
            .and_then(|socket| socket.connect(to).and_then(|()| socket.peer_addr()))
            .map(|_| ());
        summary.record(&match result {
            Ok(()) => Attempt {
                ok: true,
                ..Attempt::default()
            },
            Err(e) => Attempt::failed(classify(&e)),
        });
    }
    summary
}
