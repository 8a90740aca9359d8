//! netprobe: the traffic tool of the integration tests and the demo. A server
//! that names itself in every answer, and clients that print one JSON line per
//! attempt (or one summary), so tests can assert on which backend answered,
//! what address the server saw and what getpeername()/recvfrom() reported.

mod client;
mod http;
mod serve;
mod socket;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// Upper bound for every --count, so a typo cannot start an endless run.
const MAX_COUNT: i64 = 1_000_000;

#[derive(Parser)]
#[command(about = "Traffic probe for Switchyard's integration tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer TCP lines and UDP datagrams with {"name":..,"peer":..}.
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
    /// COUNT times: connect, request, reply, close; one JSON line each.
    Tcp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// COUNT UDP requests; one JSON line each, with "reply_from".
    Udp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
        count: u32,
        /// connect() the socket instead of using sendto().
        #[arg(long)]
        connected: bool,
        /// Send from this port (0: any), e.g. to keep one UDP flow.
        #[arg(long, default_value_t = 0)]
        source_port: u16,
        /// Pad the request to this many bytes, and expect a reply as long
        /// (the server pads to match): above the MTU, fragments both ways.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=client::MAX_DATAGRAM as u64))]
        size: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// One connection, a request every interval for the duration; summary.
    Hold(Paced),
    /// A new connection every interval for the duration (or until the stop
    /// file exists); summary with failures by kind.
    Churn {
        /// UDP datagrams from a new socket each, instead of TCP connections.
        #[arg(long)]
        udp: bool,
        #[command(flatten)]
        paced: Paced,
    },
    /// One UDP socket, a datagram every interval for the duration; one
    /// JSON line per datagram, with when it was sent.
    UdpHold {
        #[arg(long)]
        to: SocketAddr,
        /// connect() once (and again after an error) instead of sendto().
        #[arg(long)]
        connected: bool,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        duration_ms: u64,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        interval_ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_ms: u64,
    },
    /// COUNT UDP sockets connect()ed to the address and closed; summary.
    UdpConnectChurn {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
        count: u32,
    },
    /// COUNT TCP attempts; one summary with counts per backend.
    Burst {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
        count: u32,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        parallel: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// One HTTP/1.1 GET (Connection: close); one line with status and body.
    HttpGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        /// Bounds the connect and the whole exchange after it.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

/// A probe repeated at an interval: where to, how long, how often.
#[derive(Debug, Args)]
struct Paced {
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    duration_ms: u64,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    interval_ms: u64,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Stop early once this file exists.
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,
}

impl Paced {
    fn pace(&self) -> client::Pace {
        client::Pace {
            duration: Duration::from_millis(self.duration_ms),
            interval: Duration::from_millis(self.interval_ms),
            stop_file: self.stop_file.clone(),
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netprobe: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether the summary commands saw no failure.
fn run(command: Command) -> Result<bool> {
    let ms = Duration::from_millis;
    match command {
        Command::Serve {
            name,
            tcp,
            udp,
            max_seconds,
        } => serve::run(serve::Options {
            name,
            tcp,
            udp,
            lifetime: Duration::from_secs(max_seconds),
        })
        .map(|()| true),
        Command::Tcp {
            to,
            count,
            timeout_ms,
        } => {
            for _ in 0..count {
                print_line(&client::tcp_once(to, ms(timeout_ms)))?;
            }
            Ok(true)
        }
        Command::Udp {
            to,
            count,
            connected,
            source_port,
            size,
            timeout_ms,
        } => {
            let size = usize::try_from(size)?;
            for _ in 0..count {
                print_line(&client::udp_once(
                    to,
                    connected,
                    source_port,
                    size,
                    ms(timeout_ms),
                ))?;
            }
            Ok(true)
        }
        Command::Hold(paced) => {
            let summary = client::hold(paced.to, &paced.pace(), ms(paced.timeout_ms));
            print_line(&summary)?;
            Ok(summary.ok)
        }
        Command::Churn { udp, paced } => {
            let summary = client::churn(paced.to, udp, &paced.pace(), ms(paced.timeout_ms));
            print_line(&summary)?;
            Ok(summary.ok)
        }
        Command::UdpHold {
            to,
            connected,
            duration_ms,
            interval_ms,
            timeout_ms,
        } => udp_hold(&client::UdpHold {
            to,
            connected,
            duration: ms(duration_ms),
            interval: ms(interval_ms),
            timeout: ms(timeout_ms),
        }),
        Command::UdpConnectChurn { to, count } => {
            let summary = client::udp_connect_churn(to, count);
            print_line(&summary)?;
            Ok(summary.ok)
        }
        Command::Burst {
            to,
            count,
            parallel,
            timeout_ms,
        } => {
            let summary = client::burst(to, count, parallel, ms(timeout_ms));
            print_line(&summary)?;
            Ok(summary.ok)
        }
        Command::HttpGet {
            to,
            path,
            timeout_ms,
        } => {
            let result = http::get(to, &path, ms(timeout_ms));
            print_line(&result)?;
            Ok(result.ok)
        }
    }
}

/// Prints each datagram as it completes, so a killed probe leaves what it saw.
fn udp_hold(hold: &client::UdpHold) -> Result<bool> {
    let mut printed = Ok(());
    client::udp_hold(*hold, &mut |datagram| {
        if printed.is_ok() {
            printed = print_line(datagram);
        }
    })?;
    printed.map(|()| true)
}

fn print_line(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
