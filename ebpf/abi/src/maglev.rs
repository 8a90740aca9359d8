//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the agent fills
//! each Maglev frontend's lookup table; the per-packet path only hashes a
//! flow and indexes it. Both sides hash with the functions here, so a
//! table built on one node and a flow hashed on another agree.
//!
//! A frontend is Maglev's when its slot-0 [`crate::ServiceValue`] carries a
//! table size in `backend_id` (unused at slot 0 otherwise; 0 is random
//! choice). Its buckets `0..size` sit in [`MAGLEV_MAP`], one entry each,
//! keyed by the frontend and the bucket, valued by a backend id.

use crate::{Addr, ServiceKey};

/// Pinned map of every Maglev frontend's buckets ([`MaglevKey`] -> backend
/// id, `u32`). A hash map, so a node pays for the tables its Services use.
pub const MAGLEV_MAP: &str = "SY_MAGLEV_V1";

/// Table sizes the agent accepts: primes (Maglev's permutation needs the
/// size prime to visit every bucket), the same ladder Cilium offers, so a
/// table is about 100 times the backends it spreads over.
pub const MAGLEV_TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// The default table size: within 1% of perfect balance up to 40 backends
/// (a backend gets `size / n` buckets, give or take one), at about 360 KB
/// of kernel memory per frontend.
pub const MAGLEV_DEFAULT_TABLE_SIZE: u32 = 4_093;

/// Capacity of [`MAGLEV_MAP`]: 64 frontends at the largest table size, or
/// 2,048 at the default. A pinned map keeps the capacity it was created
/// with (see `SERVICES_MAX_ENTRIES`).
pub const MAGLEV_MAX_ENTRIES: u32 = 8_388_608;

/// One bucket of one frontend's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    /// The frontend's slot-0 key.
    pub frontend: ServiceKey,
    pub bucket: u32,
    pub pad: u32,
}

impl MaglevKey {
    pub const fn new(frontend: &ServiceKey, bucket: u32) -> Self {
        Self {
            frontend: frontend.with_slot(0),
            bucket,
            pad: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<MaglevKey>() == 32);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers only, padding explicit.
unsafe impl aya::Pod for MaglevKey {}

/// murmur3's 32-bit finalizer step over one more word: cheap, no table,
/// and every input bit reaches every output bit.
const fn mix(hash: u32, word: u32) -> u32 {
    let mut k = word.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
    let h = (hash ^ k).rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

const fn finish(mut hash: u32) -> u32 {
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

const fn hash_addr(seed: u32, addr: &Addr) -> u32 {
    let mut hash = seed;
    hash = mix(hash, addr.words[0]);
    hash = mix(hash, addr.words[1]);
    hash = mix(hash, addr.words[2]);
    mix(hash, addr.words[3])
}

/// Seeds of the flow hash and of a backend's two permutation hashes: fixed,
/// because every node must compute the same tables and the same buckets.
const FLOW_SEED: u32 = 0x5377_7964; // "Swyd"
const OFFSET_SEED: u32 = 0x4f66_7374;
const SKIP_SEED: u32 = 0x536b_6970;

/// The bucket hash of a flow from `src:sport` to a frontend's `dport`
/// (ports as the packet carries them). Not the destination address: a
/// NodePort's is each node's own, and a flow entering by another node must
/// land on the same bucket. `client_only` hashes the client address alone
/// (`sessionAffinity: ClientIP`: every connection of a client, one backend).
pub const fn flow_hash(src: &Addr, sport: u16, dport: u16, proto: u8, client_only: bool) -> u32 {
    let hash = hash_addr(FLOW_SEED, src);
    if client_only {
        return finish(hash);
    }
    let ports = ((sport as u32) << 16) | dport as u32;
    finish(mix(mix(hash, ports), proto as u32))
}

/// A backend's place in Maglev's permutation, from what every node knows
/// alike of it (address and port, not its node-local id): its first
/// bucket and its stride, for a table of `size` (prime) buckets.
pub const fn permutation(addr: &Addr, port: u16, size: u32) -> (u32, u32) {
    let offset = finish(mix(hash_addr(OFFSET_SEED, addr), port as u32)) % size;
    let skip = finish(mix(hash_addr(SKIP_SEED, addr), port as u32)) % (size - 1) + 1;
    (offset, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_is_prime_and_the_default_is_one_of_them() {
        for size in MAGLEV_TABLE_SIZES {
            assert!(
                (2..size)
                    .take_while(|d| d * d <= size)
                    .all(|d| size % d != 0),
                "{size}"
            );
        }
        assert!(MAGLEV_TABLE_SIZES.contains(&MAGLEV_DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn the_flow_hash_ignores_the_destination_and_affinity_ignores_ports() {
        let client = Addr::from_v4_word(0x0a00_0001);
        let a = flow_hash(&client, 1000, 80, 6, false);
        assert_eq!(a, flow_hash(&client, 1000, 80, 6, false));
        assert_ne!(a, flow_hash(&client, 1001, 80, 6, false));
        assert_ne!(a, flow_hash(&client, 1000, 80, 17, false));
        assert_eq!(
            flow_hash(&client, 1000, 80, 6, true),
            flow_hash(&client, 2000, 81, 17, true)
        );
    }
}
