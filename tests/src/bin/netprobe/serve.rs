//! `netprobe serve`: answers every request line (TCP) or datagram (UDP) with
//! the server's name and the client address it saw, which is how tests tell
//! which backend a service connection reached and whether the client address
//! was preserved.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use switchyard_tests::probe::Reply;

use crate::socket;

/// Connections served at once; more are closed at accept, so a runaway
/// client cannot exhaust the machine's threads.
const MAX_CONNECTIONS: usize = 256;
/// Lines served per connection before it is closed.
const MAX_LINES: u64 = 1_000_000;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_mins(1);
/// Longest request line read.
const MAX_LINE: u64 = 4096;

pub struct Options {
    pub name: String,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    /// The server exits after this long; this is what bounds the accept and
    /// receive loops below.
    pub lifetime: Duration,
}

pub fn run(opts: Options) -> Result<()> {
    let name: Arc<str> = opts.name.into();
    let active = Arc::new(AtomicUsize::new(0));
    // Bind everything first, so "ready" means every socket accepts.
    let mut listeners = Vec::new();
    for addr in &opts.tcp {
        listeners.push(socket::tcp_listener(*addr).with_context(|| format!("bind tcp {addr}"))?);
    }
    let mut udps = Vec::new();
    for addr in &opts.udp {
        udps.push(socket::udp_socket(*addr).with_context(|| format!("bind udp {addr}"))?);
    }
    for listener in listeners {
        let (name, active) = (name.clone(), active.clone());
        std::thread::spawn(move || accept_loop(&listener, &name, &active));
    }
    for udp in udps {
        let name = name.clone();
        std::thread::spawn(move || udp_loop(&udp, &name));
    }
    let ready = serde_json::json!({
        "ready": true, "name": &*name, "tcp": opts.tcp, "udp": opts.udp,
    });
    println!("{ready}");
    std::io::stdout().flush()?;
    std::thread::sleep(opts.lifetime);
    Ok(())
}

fn reply_line(name: &str, peer: SocketAddr) -> String {
    let reply = Reply {
        name: name.to_owned(),
        peer: peer.to_string(),
    };
    let mut line = serde_json::to_string(&reply).expect("Reply serializes");
    line.push('\n');
    line
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>, active: &Arc<AtomicUsize>) {
    // Bounded by the process lifetime (see `Options::lifetime`).
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (name, active) = (name.clone(), active.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve_connection(stream, &name) {
                eprintln!("connection: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn serve_connection(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let peer = stream.peer_addr()?;
    let reply = reply_line(name, peer);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    for _ in 0..MAX_LINES {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        writer.write_all(reply.as_bytes())?;
    }
    Ok(())
}

/// Answers each datagram with a reply line padded with spaces to the
/// request's length (see `netprobe udp --size`).
fn udp_loop(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65_536];
    // Bounded by the process lifetime (see `Options::lifetime`).
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let mut reply = reply_line(name, from).into_bytes();
        if reply.len() < len {
            reply.resize(len, b' ');
        }
        let _ = socket.send_to(&reply, from);
    }
}
