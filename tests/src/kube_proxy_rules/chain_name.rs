//! kube-proxy's chain names: a prefix and the first characters of the
//! base32 of a SHA-256 over the service port name and protocol (and the
//! endpoint, for endpoint chains). The names have to match in shape only,
//! but matching them exactly makes the rule sets comparable byte for byte
//! with what kube-proxy writes.

use sha2::{Digest, Sha256};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding of the first bytes of `data`, `len`
/// characters of it.
fn base32_prefix(data: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in data {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 && out.len() < len {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
        if out.len() == len {
            break;
        }
    }
    out
}

/// The 16-character hash kube-proxy's iptables mode uses.
pub fn hash16(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.concat().as_bytes());
    base32_prefix(&digest, 16)
}

/// The 8-character hash prefix of kube-proxy's nftables chain names.
pub fn hash8(parts: &[&str]) -> String {
    hash16(parts)[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32_prefix(b"foobar", 8), "MZXW6YTB");
        assert_eq!(base32_prefix(b"f", 1), "M");
    }

    #[test]
    fn kube_proxy_service_chain_name() {
        // From kube-proxy's iptables proxier tests: ns1/svc1:p80 over tcp.
        assert_eq!(hash16(&["ns1/svc1:p80", "tcp"]), "XPGD46QRK7WJZT7O");
    }
}
