//! `loadgen`: the benchmark's traffic, both ends. `serve` runs in each pod
//! namespace; the client modes run in the client namespace (and, for
//! Switchyard, its cgroup), each bounded in time and count, and print one
//! JSON `LoadResult` on stdout.

mod client;
mod server;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

/// The first byte a client sends says what it wants.
mod protocol {
    /// Answer with the server's name and close (connection-rate test).
    pub const NAME_AND_CLOSE: u8 = b'C';
    /// Echo fixed-size messages until the client closes (latency test).
    pub const ECHO: u8 = b'R';
    /// Send bulk data until the client closes (throughput test).
    pub const STREAM: u8 = b'S';
    /// Request and response size of the echo test, as netperf TCP_RR's
    /// default of one byte would measure syscalls more than the network.
    pub const MESSAGE: usize = 64;
}

#[derive(Parser)]
#[command(about = "Switchyard benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve all three tests on ADDR until killed, and sink UDP there.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// New connections: connect, one request, close; repeated.
    Crr(Run),
    /// Round trips of 64-byte messages on one established connection.
    Rr(Run),
    /// Bulk transfer from the server on one connection.
    Stream(Run),
    /// Small UDP datagrams to the server as fast as one core sends them.
    Flood(Run),
    /// Connect repeatedly until the backend named EXPECT answers.
    Watch {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        expect: String,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Pause between probes, so the probe does not starve the agent.
        #[arg(long, default_value_t = 200)]
        interval_us: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

#[derive(Args, Clone, Copy)]
struct Run {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 2_000)]
    duration_ms: u64,
    /// Stop after this many operations even if time remains.
    #[arg(long, default_value_t = 2_000_000)]
    max_ops: u64,
    /// `crr`: close with a FIN instead of a reset.
    #[arg(long)]
    graceful: bool,
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> Result<()> {
    let result = match Cli::parse().command {
        Command::Serve {
            listen,
            name,
            threads,
            cpu,
        } => {
            pin_to(cpu)?;
            return server::serve(listen, &name, threads);
        }
        Command::Crr(run) => {
            pin_to(run.cpu)?;
            client::connect_request_close(run.target, bounds(&run), run.graceful)
        }
        Command::Rr(run) => {
            pin_to(run.cpu)?;
            client::request_response(run.target, bounds(&run))?
        }
        Command::Stream(run) => {
            pin_to(run.cpu)?;
            client::stream(run.target, bounds(&run))?
        }
        Command::Flood(run) => {
            pin_to(run.cpu)?;
            client::udp_flood(run.target, bounds(&run))?
        }
        Command::Watch {
            target,
            expect,
            timeout_ms,
            interval_us,
            cpu,
        } => {
            pin_to(cpu)?;
            client::watch(
                target,
                &expect,
                Duration::from_millis(timeout_ms),
                Duration::from_micros(interval_us),
            )
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn bounds(run: &Run) -> client::Bounds {
    client::Bounds {
        duration: Duration::from_millis(run.duration_ms),
        max_ops: run.max_ops,
    }
}

/// Client on one core, servers on the other, as the published rigs do, so
/// the two ends do not fight over a core.
fn pin_to(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) != 0 {
            bail!(
                "cannot pin to cpu {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
