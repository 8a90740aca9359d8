//! The backend: a few threads accepting on one listener, each serving its
//! connection inline (the connection-rate test's connections are short, and
//! the long tests use one connection each).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use anyhow::{Context, Result};

use crate::protocol::{ECHO, MESSAGE, NAME_AND_CLOSE, STREAM};

pub fn serve(listen: SocketAddr, name: &str, threads: usize) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    // The flood's datagrams are read and dropped: a port with no socket
    // would answer each with an ICMP error instead.
    let sink = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    println!("ready {listen}");
    let reply = format!("{name}\n").into_bytes();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut datagram = [0u8; 2048];
            // Bounded by the process lifetime: the runner kills the server.
            while sink.recv(&mut datagram).is_ok() {}
        });
        for _ in 0..threads.max(1) {
            let listener = listener.try_clone().expect("listener clone");
            let reply = &reply;
            scope.spawn(move || {
                for stream in listener.incoming().flatten() {
                    // One bad client must not stop the server.
                    let _ = handle(stream, reply);
                }
            });
        }
    });
    Ok(())
}

fn handle(mut stream: TcpStream, name: &[u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut command = [0u8; 1];
    stream.read_exact(&mut command)?;
    match command[0] {
        NAME_AND_CLOSE => {
            stream.write_all(name)?;
            // The client closes first (with a reset); waiting for it keeps
            // TIME_WAIT off the server too.
            let _ = stream.read(&mut command);
            Ok(())
        }
        ECHO => echo(&mut stream),
        STREAM => bulk(&mut stream),
        _ => Ok(()),
    }
}

fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut message = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut message) {
            Ok(()) => stream.write_all(&message)?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn bulk(stream: &mut TcpStream) -> std::io::Result<()> {
    let chunk = vec![0x5au8; 128 * 1024];
    loop {
        stream.write_all(&chunk)?;
    }
}
