//! Which source ports connections NATed to this node may take. A reply to
//! a NATed connection is caught by its port before the stack sees it, so a
//! NAT port must never be one the node's own sockets use: every port from
//! 1024 up except the kernel's ephemeral range (`ip_local_port_range`, read
//! from the agent's network namespace) and the NodePort range. With Linux's
//! defaults that is 1024-29999 and 61000-65535: 33,512 ports per node
//! address and backend.

use std::{fmt, ops::RangeInclusive, str::FromStr};

use switchyard_abi::PortRange;

/// Ports below are privileged: services of the node's own listen there.
const FIRST_UNPRIVILEGED: u16 = 1024;
/// Kubernetes' default `--service-node-port-range`.
const NODE_PORTS: RangeInclusive<u16> = 30_000..=32_767;
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `--nat-port-range FIRST-LAST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--nat-port-range {text:?}: {reason}")]
pub struct BadNatPortRange {
    text: String,
    reason: &'static str,
}

impl FromStr for NatPortRange {
    type Err = BadNatPortRange;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadNatPortRange {
            text: text.to_owned(),
            reason,
        };
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| bad("expected FIRST-LAST"))?;
        let port = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| bad("not a port number"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first < FIRST_UNPRIVILEGED {
            return Err(bad("NAT ports start at 1024 or above"));
        }
        if first > last {
            return Err(bad("the first port is above the last"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for NatPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The NAT port ranges: `explicit` as given, else everything from 1024 up
/// outside `ephemeral` and the NodePort range, at most two ranges (the two
/// longest, should the three carve out more).
pub fn nat_ports(explicit: Option<NatPortRange>, ephemeral: RangeInclusive<u16>) -> [PortRange; 2] {
    if let Some(range) = explicit {
        return [span(range.first, range.last), PortRange::default()];
    }
    let mut free: Vec<PortRange> = Vec::new();
    let mut next = u32::from(FIRST_UNPRIVILEGED);
    let mut taken = [ephemeral, NODE_PORTS];
    taken.sort_by_key(|range| *range.start());
    for range in taken {
        let (start, end) = (u32::from(*range.start()), u32::from(*range.end()));
        if start > next {
            free.push(span_u32(next, start - 1));
        }
        next = next.max(end + 1);
    }
    if u16::try_from(next).is_ok() {
        free.push(span_u32(next, u32::from(u16::MAX)));
    }
    free.sort_by_key(|range| std::cmp::Reverse(range.count));
    let mut ranges = [PortRange::default(); 2];
    for (slot, range) in ranges.iter_mut().zip(free) {
        *slot = range;
    }
    ranges
}

/// The node's ephemeral port range, Linux's default when unreadable.
pub fn ephemeral_ports() -> RangeInclusive<u16> {
    std::fs::read_to_string(LOCAL_PORT_RANGE)
        .ok()
        .and_then(|text| parse_local_port_range(&text))
        .unwrap_or(32_768..=60_999)
}

fn parse_local_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (first, last) = (parts.next()?.ok()?, parts.next()?.ok()?);
    (first <= last).then_some(first..=last)
}

fn span(first: u16, last: u16) -> PortRange {
    span_u32(u32::from(first), u32::from(last))
}

/// `first..=last`, which fits a `PortRange`: `last` is at most 65535 and
/// `first` at least 1024, so the count stays below 65536.
fn span_u32(first: u32, last: u32) -> PortRange {
    PortRange {
        first: u16::try_from(first).unwrap_or(u16::MAX),
        count: u16::try_from(last + 1 - first).unwrap_or(u16::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        span(first, last)
    }

    #[test]
    fn linux_defaults_leave_a_low_and_a_high_range() {
        assert_eq!(
            nat_ports(None, 32_768..=60_999),
            [range(1024, 29_999), range(61_000, 65_535)]
        );
    }

    #[test]
    fn a_wide_ephemeral_range_leaves_what_is_outside_it() {
        assert_eq!(
            nat_ports(None, 10_000..=65_535),
            [range(1024, 9_999), PortRange::default()]
        );
        // Overlapping the NodePort range: one gap below, one above.
        assert_eq!(
            nat_ports(None, 31_000..=50_000),
            [range(1024, 29_999), range(50_001, 65_535)]
        );
    }

    #[test]
    fn an_explicit_range_is_used_as_given() {
        let explicit = "62000-62063".parse().unwrap();
        assert_eq!(
            nat_ports(Some(explicit), 32_768..=60_999),
            [range(62_000, 62_063), PortRange::default()]
        );
        for (text, reason) in [
            ("62000", "expected FIRST-LAST"),
            ("100-2000", "NAT ports start at 1024 or above"),
            ("3000-2000", "the first port is above the last"),
            ("a-b", "not a port number"),
        ] {
            assert_eq!(text.parse::<NatPortRange>().unwrap_err().reason, reason);
        }
    }

    #[test]
    fn the_sysctl_reads_as_the_kernel_writes_it() {
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(32_768..=60_999)
        );
        assert_eq!(parse_local_port_range("60999 32768"), None);
    }
}
