//! Addresses as the kernel hands them to socket hooks.

/// An IPv4 or IPv6 address in one 16-byte shape.
///
/// Each word holds four address bytes in network order, exactly as
/// `bpf_sock_addr.user_ip6[i]` does, so the kernel side copies words without
/// swapping. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), which
/// also lets a dual-stack IPv6 socket connecting to a mapped IPv4 VIP match
/// the IPv4 service with no extra lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub words: [u32; 4],
}

/// Word 2 of an IPv4-mapped address: bytes `00 00 ff ff` read natively.
const V4_MAPPED_MARKER: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Addr {
    /// `ip4` is `bpf_sock_addr.user_ip4`: network-order bytes read natively.
    pub const fn from_v4_word(ip4: u32) -> Self {
        Self {
            words: [0, 0, V4_MAPPED_MARKER, ip4],
        }
    }

    pub const fn is_v4(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == V4_MAPPED_MARKER
    }

    /// The IPv4 word for `user_ip4`; meaningful only when [`Self::is_v4`].
    pub const fn v4_word(&self) -> u32 {
        self.words[3]
    }
}

#[cfg(feature = "user")]
mod user {
    extern crate std;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::Addr;

    impl From<IpAddr> for Addr {
        fn from(ip: IpAddr) -> Self {
            let octets = match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let word = |i: usize| {
                u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]])
            };
            Self {
                words: [word(0), word(4), word(8), word(12)],
            }
        }
    }

    impl From<Addr> for IpAddr {
        fn from(addr: Addr) -> Self {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(addr.words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(octets);
            if addr.is_v4() {
                IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
            } else {
                IpAddr::V6(v6)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_both_families() {
            for text in ["10.96.0.10", "fd00:96::10", "::1", "0.0.0.0"] {
                let ip: IpAddr = text.parse().unwrap();
                assert_eq!(IpAddr::from(Addr::from(ip)), ip, "{text}");
            }
        }

        #[test]
        fn v4_word_is_network_order() {
            let addr = Addr::from(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)));
            assert!(addr.is_v4());
            assert_eq!(addr.v4_word().to_ne_bytes(), [10, 96, 0, 10]);
            assert_eq!(Addr::from_v4_word(addr.v4_word()), addr);
        }

        #[test]
        fn v6_is_not_v4() {
            let addr = Addr::from("fd00::1".parse::<IpAddr>().unwrap());
            assert!(!addr.is_v4());
        }
    }
}
