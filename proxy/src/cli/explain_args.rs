//! `switchyard explain PROTO SRC DST:PORT`.

use std::net::{IpAddr, SocketAddr};

use clap::Args;

use crate::{
    cli::{OutputFormat, PinArgs},
    explain::{Origin, Query},
    model::Protocol,
};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// TCP, UDP or SCTP.
    #[arg(value_name = "PROTO", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// The client: an address, or address:port to find its connection in
    /// conntrack ([v6]:port for IPv6).
    #[arg(value_name = "SRC", value_parser = parse_source)]
    pub src: Source,
    /// Where it connects to.
    #[arg(value_name = "DST:PORT")]
    pub dst: SocketAddr,
    /// Where the client is: `node` (a pod here, or the host: the socket
    /// hooks) or `outside` (the per-packet path). Default: `node` when a
    /// hooked namespace sends from SRC, else `outside`.
    #[arg(long, value_enum)]
    pub from: Option<Origin>,
    #[command(flatten)]
    pub pins: PinArgs,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// A client address with or without its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    text.to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{text:?} is not TCP, UDP or SCTP"))
}

fn parse_source(text: &str) -> Result<Source, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Source { ip, port: None });
    }
    text.parse::<SocketAddr>()
        .map(|addr| Source {
            ip: addr.ip(),
            port: Some(addr.port()),
        })
        .map_err(|_| format!("{text:?} is not an address or address:port"))
}

impl ExplainArgs {
    pub fn query(&self) -> Query {
        Query {
            protocol: self.protocol,
            src: self.src.ip,
            src_port: self.src.port,
            dst: self.dst,
            origin: self.from,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_with_and_without_ports() {
        assert_eq!(parse_source("10.0.0.1").unwrap().port, None);
        assert_eq!(parse_source("10.0.0.1:4000").unwrap().port, Some(4000));
        assert_eq!(parse_source("fd00::1").unwrap().port, None);
        assert_eq!(parse_source("[fd00::1]:4000").unwrap().port, Some(4000));
        assert!(parse_source("pod-a").unwrap_err().contains("pod-a"));
        assert_eq!(parse_protocol("tcp").unwrap(), Protocol::Tcp);
        assert!(parse_protocol("icmp").is_err());
    }
}
