//! The client side of each test. Every loop stops at its deadline or its
//! operation cap, whichever comes first, and gives up early if errors pile
//! up (a broken datapath must end the run, not spin it).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use switchyard_bench::load_result::{LoadResult, monotonic_ns, percentile};

use crate::protocol::{ECHO, MESSAGE, NAME_AND_CLOSE, STREAM};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A run with this many failures is over: the numbers would mean nothing.
const MAX_ERRORS: u64 = 1_000;

#[derive(Clone, Copy)]
pub struct Bounds {
    pub duration: Duration,
    pub max_ops: u64,
}

pub fn connect_request_close(target: SocketAddr, bounds: Bounds, graceful: bool) -> LoadResult {
    let mut result = LoadResult::default();
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < bounds.duration
        && result.operations < bounds.max_ops
        && result.errors < MAX_ERRORS
    {
        let began = Instant::now();
        match ask_name(target, graceful) {
            Ok(name) => {
                latencies.push(began.elapsed().as_secs_f64() * 1e6);
                result.operations += 1;
                *result.backends.entry(name).or_default() += 1;
            }
            Err(_) => result.errors += 1,
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    summarize(&mut result, latencies);
    result
}

/// One connection: connect, ask, read the name line, then close with a
/// reset unless `graceful`. Hundreds of thousands of connections from one
/// client would otherwise leave as many TIME_WAIT sockets (and conntrack
/// entries) behind, and reused ports would collide with them: the run would
/// measure that collision handling rather than the service translation —
/// which is what a graceful run is for.
fn ask_name(target: SocketAddr, graceful: bool) -> std::io::Result<String> {
    let mut stream = open(target)?;
    stream.write_all(&[NAME_AND_CLOSE])?;
    let mut reply = Vec::with_capacity(32);
    let mut buffer = [0u8; 64];
    while !reply.ends_with(b"\n") {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buffer[..read]);
    }
    if !graceful {
        reset_on_close(&stream)?;
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

/// SO_LINGER with a zero timeout: close() sends RST and frees the port.
fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>())
        .expect("struct linger is a few bytes");
    // SAFETY: a valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open(target: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

pub fn request_response(target: SocketAddr, bounds: Bounds) -> Result<LoadResult> {
    let mut stream = open(target).with_context(|| format!("connect {target}"))?;
    stream.write_all(&[ECHO])?;
    let mut result = LoadResult::default();
    let mut latencies = Vec::new();
    let mut message = [0x42u8; MESSAGE];
    let start = Instant::now();
    while start.elapsed() < bounds.duration && result.operations < bounds.max_ops {
        let began = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        latencies.push(began.elapsed().as_secs_f64() * 1e6);
        result.operations += 1;
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    summarize(&mut result, latencies);
    Ok(result)
}

pub fn stream(target: SocketAddr, bounds: Bounds) -> Result<LoadResult> {
    let mut stream = open(target).with_context(|| format!("connect {target}"))?;
    stream.write_all(&[STREAM])?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut result = LoadResult::default();
    let start = Instant::now();
    while start.elapsed() < bounds.duration {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        result.bytes += read as u64;
        result.operations += 1;
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    Ok(result)
}

/// Datagrams sent back to back on one connected UDP socket, in batches.
const FLOOD_BATCH: u32 = 32;
/// UDP payload of the flood: small packets, as packet-rate figures use.
pub const FLOOD_PAYLOAD: usize = 18;

/// UDP datagrams to `target` as fast as one core sends them (one flow, as
/// a stream is), `FLOOD_BATCH` per `sendmmsg`. What arrives is counted on
/// the way, not here: `operations` is what was sent, `errors` the sends the
/// kernel refused (a full queue, an ICMP error reported back).
pub fn udp_flood(target: SocketAddr, bounds: Bounds) -> Result<LoadResult> {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(target)?;
    let mut payload = [0x5au8; FLOOD_PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: plain C structs, zero is a valid (empty) value.
    let mut messages: [libc::mmsghdr; FLOOD_BATCH as usize] = unsafe { std::mem::zeroed() };
    for message in &mut messages {
        message.msg_hdr.msg_iov = &raw mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let mut result = LoadResult::default();
    let start = Instant::now();
    while start.elapsed() < bounds.duration
        && result.operations < bounds.max_ops
        && result.errors < MAX_ERRORS
    {
        // SAFETY: `messages` and the one iovec they share outlive the call.
        let sent =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), FLOOD_BATCH, 0) };
        match u64::try_from(sent) {
            Ok(sent) => result.operations += sent,
            Err(_) => result.errors += 1,
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    Ok(result)
}

/// Probes until a connection is answered by `expect`; the time it first is
/// goes out as `seen_at_ns` on the clock the runner shares.
pub fn watch(
    target: SocketAddr,
    expect: &str,
    timeout: Duration,
    interval: Duration,
) -> LoadResult {
    let mut result = LoadResult::default();
    let start = Instant::now();
    while start.elapsed() < timeout {
        match ask_name(target, false) {
            Ok(name) if name == expect => {
                result.seen_at_ns = monotonic_ns();
                result.operations += 1;
                break;
            }
            Ok(_) => result.operations += 1,
            Err(_) => result.errors += 1,
        }
        std::thread::sleep(interval);
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result
}

fn summarize(result: &mut LoadResult, mut latencies: Vec<f64>) {
    latencies.sort_by(f64::total_cmp);
    result.p50_us = percentile(&latencies, 0.5);
    result.p99_us = percentile(&latencies, 0.99);
}
