//! IP address text as Kubernetes objects may carry it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
