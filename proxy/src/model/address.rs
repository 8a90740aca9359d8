//! IP address text as Kubernetes objects may carry it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Parses an IP the way kube-proxy's `ParseIPSloppy` does.
///
/// Objects created before Kubernetes 1.20 tightened validation may hold IPv4
/// octets with leading zeros ("010.096.000.010"). Go's old parser read them
/// as decimal, so kube-proxy serves 10.96.0.10 for that text; reading them as
/// octal, or rejecting them like `Ipv4Addr::from_str` does, would stop
/// serving a Service that works today. An IPv4-mapped IPv6 address is the
/// IPv4 address, as Go's `To4()` treats it.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if text.contains(':') {
        parse_v6_sloppy(text).map(|v6| v6.to_canonical())
    } else {
        parse_v4_sloppy(text).map(IpAddr::V4)
    }
}

fn parse_v4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = part.trim_start_matches('0');
        // All zeros trims to "", which is 0; more than three significant
        // digits cannot be <= 255 and would overflow the parse.
        *octet = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            digits.parse().ok()?
        };
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// IPv6 text may end in an embedded dotted IPv4 part, which gets the same
/// leading-zero tolerance.
fn parse_v6_sloppy(text: &str) -> Option<Ipv6Addr> {
    if let Ok(v6) = text.parse() {
        return Some(v6);
    }
    let (head, tail) = text.rsplit_once(':')?;
    if !tail.contains('.') {
        return None;
    }
    let v4 = parse_v4_sloppy(tail)?;
    format!("{head}:{v4}").parse().ok()
}

/// An address family, as Kubernetes names it (`IPv4`, `IPv6`: an
/// EndpointSlice's `addressType`, kube-proxy's `ip_family` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const BOTH: [Self; 2] = [Self::V4, Self::V6];

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// `IPv4` or `IPv6`, or `None` for another address type (`FQDN`).
    pub fn from_address_type(address_type: &str) -> Option<Self> {
        match address_type {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// An address prefix: `10.0.0.0/8`, `fd00::/64`. Host bits are cleared, so
/// `10.1.2.3/8` and `10.0.0.0/8` are the same prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CIDR: {text:?} (expected ADDRESS/PREFIX-LENGTH)")]
pub struct BadCidr {
    pub text: String,
}

impl Cidr {
    /// The prefix holding `ip` alone.
    pub const fn host(ip: IpAddr) -> Self {
        let prefix_len = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Self {
            network: ip,
            prefix_len,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => mask_v4(ip, self.prefix_len) == network,
            (IpAddr::V6(network), IpAddr::V6(ip)) => mask_v6(ip, self.prefix_len) == network,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr {
            text: text.to_owned(),
        };
        let (address, len) = text.trim().split_once('/').ok_or_else(bad)?;
        let ip = parse_ip_sloppy(address).ok_or_else(bad)?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let network = match ip {
            IpAddr::V4(v4) if prefix_len <= 32 => IpAddr::V4(mask_v4(v4, prefix_len)),
            IpAddr::V6(v6) if prefix_len <= 128 => IpAddr::V6(mask_v6(v6, prefix_len)),
            _ => return Err(bad()),
        };
        Ok(Self {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, bool)]);
        let cases: &[Case] = &[
            (
                "10.1.2.3/8",
                Some("10.0.0.0/8"),
                &[
                    ("10.200.0.1", true),
                    ("11.0.0.1", false),
                    ("fd00::1", false),
                ],
            ),
            ("0.0.0.0/0", Some("0.0.0.0/0"), &[("192.168.1.1", true)]),
            (
                "203.0.113.7/32",
                Some("203.0.113.7/32"),
                &[("203.0.113.7", true), ("203.0.113.8", false)],
            ),
            (
                "fd00:77::5/64",
                Some("fd00:77::/64"),
                &[
                    ("fd00:77::1", true),
                    ("fd00:78::1", false),
                    ("10.0.0.1", false),
                ],
            ),
            ("::/0", Some("::/0"), &[("2001:db8::1", true)]),
            ("10.0.0.0/33", None, &[]),
            ("10.0.0.0", None, &[]),
            ("x/8", None, &[]),
        ];
        for (text, want, probes) in cases {
            let parsed = text.parse::<Cidr>();
            assert_eq!(
                parsed.as_ref().ok().map(ToString::to_string).as_deref(),
                *want,
                "{text}"
            );
            for (ip, inside) in *probes {
                assert_eq!(
                    parsed.as_ref().unwrap().contains(ip.parse().unwrap()),
                    *inside,
                    "{text} {ip}"
                );
            }
        }
    }

    #[test]
    fn parses_like_kube_proxy() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.96.0.10", Some("10.96.0.10")),
            ("010.096.000.010", Some("10.96.0.10")),
            ("0000255.0.0.1", Some("255.0.0.1")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("fd00::10", Some("fd00::10")),
            ("::ffff:10.0.0.1", Some("10.0.0.1")),
            ("::ffff:010.000.000.001", Some("10.0.0.1")),
            ("64:ff9b::010.0.0.1", Some("64:ff9b::a00:1")),
            ("256.0.0.1", None),
            ("1000.0.0.1", None),
            ("10.96.0", None),
            ("10.96.0.10.1", None),
            ("10..0.1", None),
            ("10.96.0.+1", None),
            (" 10.96.0.10", None),
            ("", None),
            ("None", None),
            ("fd00::g", None),
            ("fd00::1.2.3", None),
        ];
        for (text, want) in cases {
            let want = want.map(|w| w.parse::<IpAddr>().unwrap());
            assert_eq!(parse_ip_sloppy(text), want, "{text:?}");
        }
    }
}
