//! Consistent hashing: the ring of RING_HASH and the lookup table of MAGLEV, built exactly as
//! Envoy 1.40 builds them so that one hash key picks the same host in Legate and in Envoy for
//! the same cluster, and the hash functions and combination rule of `hash_policy`.
//!
//! Written from Envoy's documented behaviour and its published algorithm descriptions:
//! * Hosts' weights are normalized per priority (weight / sum of the weights), as Envoy's
//!   `ThreadAwareLoadBalancerBase` does before it builds a ring or table.
//! * Ring: `scale = min(ceil(min_w * minimum_ring_size) / min_w, maximum_ring_size)`; walking
//!   the hosts in order, a running target grows by `scale * weight` and each host adds entries
//!   hashed from `"<address>_<i>"` (i = 0, 1, ...) until the running count reaches the target;
//!   the entries are sorted by hash and a key takes the first entry whose hash is not below it,
//!   wrapping to the first entry (ketama).
//! * Maglev: hosts sorted by address; each host's permutation starts at
//!   `xxHash64(address, 0) % size` and steps by `xxHash64(address, 1) % (size - 1) + 1`; rounds
//!   over the hosts fill the table, a host taking a slot in a round when `round * weight` has
//!   reached its running target (which then grows by the largest weight); a key takes
//!   `table[key % size]`.
//!
//! xxHash64 comes from `xxhash-rust`; MurmurHash2 (64-bit, libstdc++'s `_Hash_bytes`, which is
//! what Envoy's `MURMUR_HASH_2` is) is a few lines written here, as no maintained crate exposes
//! that exact variant.

use std::sync::Arc;

use crate::host::Host;

/// Envoy's `RingHashLbConfig` defaults and limits.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// `maximum_ring_size` and `minimum_ring_size` may not exceed 8M (the proto's validation).
pub const RING_SIZE_LIMIT: u64 = 8 * 1024 * 1024;
/// Envoy's `MaglevLbConfig.table_size` default (a prime; section 5.3 of the Maglev paper) and
/// the proto's upper bound.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
pub const MAGLEV_TABLE_SIZE_LIMIT: u64 = 5_000_011;

/// `RingHashLbConfig.hash_function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashFunction {
    XxHash,
    MurmurHash2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
    pub hash_function: HashFunction,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            minimum_ring_size: DEFAULT_MIN_RING_SIZE,
            maximum_ring_size: DEFAULT_MAX_RING_SIZE,
            hash_function: HashFunction::XxHash,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevConfig {
    pub table_size: u64,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// Envoy's `HashUtil::xxHash64` with seed 0.
pub fn xxhash64(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// Envoy's `HashUtil::xxHash64` of several strings: each hashed with the previous hash as its
/// seed, starting from 0 (one string: its plain xxHash64). Checked against Envoy 1.40 with
/// two-valued headers; neither a concatenation nor a comma join gives Envoy's hosts.
pub fn xxhash64_all<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    parts
        .into_iter()
        .fold(0, |seed, p| xxhash_rust::xxh64::xxh64(p, seed))
}

/// Folds one policy's hash into the hash so far, as Envoy's `HashPolicyImpl::generateHash`
/// does: the previous value rotated left by one bit, xor the new one (the rotation keeps two
/// identical policies from cancelling out).
pub fn combine(so_far: Option<u64>, new: u64) -> u64 {
    so_far.map_or(0, |h| h.rotate_left(1)) ^ new
}

/// `Hex::uint64ToHex`: 16 lowercase hex digits.
pub fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

/// Envoy's `MurmurHash::murmurHash2` (libstdc++'s 64-bit `_Hash_bytes`) with its
/// `STD_HASH_SEED`.
pub fn murmur_hash2(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0xc70f_6907;
    const MUL: u64 = 0xc6a4_a793_5bd1_e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let mut hash = SEED ^ (bytes.len() as u64).wrapping_mul(MUL);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let data = shift_mix(u64::from_le_bytes(word).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let data = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8).wrapping_add(u64::from(b)));
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

/// The hashing structure of one priority level; lookups give an index into the hosts it was
/// built from.
#[derive(Debug)]
pub enum HashTable {
    /// (hash, host index), sorted by hash.
    Ring(Vec<(u64, u32)>, TableStats),
    Maglev(MaglevTable, TableStats),
}

/// What Envoy reports of the last ring or table it built: `ring_hash_lb.size`,
/// `.min_hashes_per_host`, `.max_hashes_per_host`, and `maglev_lb.min_entries_per_host`,
/// `.max_entries_per_host` (`size` is unused for Maglev).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub size: u64,
    pub min_per_host: u64,
    pub max_per_host: u64,
}

impl HashTable {
    /// The ring or table of `policy` over `hosts`, or `None` for a non-hashing policy or no
    /// hosts.
    pub fn build(policy: crate::LbPolicy, hosts: &[Arc<Host>]) -> Option<HashTable> {
        if hosts.is_empty() {
            return None;
        }
        let weights = normalized_weights(hosts);
        let keys: Vec<String> = hosts.iter().map(|h| h.shown()).collect();
        match policy {
            crate::LbPolicy::RingHash(c) => {
                let (ring, stats) = build_ring(&keys, &weights, &c);
                Some(HashTable::Ring(ring, stats))
            }
            crate::LbPolicy::Maglev(c) => {
                let (table, stats) = build_maglev(&keys, &weights, c.table_size);
                Some(HashTable::Maglev(table, stats))
            }
            _ => None,
        }
    }

    pub fn stats(&self) -> TableStats {
        match self {
            HashTable::Ring(_, s) | HashTable::Maglev(_, s) => *s,
        }
    }

    /// The index of the host for `hash`.
    pub fn choose(&self, hash: u64) -> Option<usize> {
        match self {
            HashTable::Ring(ring, _) => {
                if ring.is_empty() {
                    return None;
                }
                // The first entry at or after the key, wrapping around: what Envoy's ketama
                // search finds.
                let at = ring.partition_point(|&(h, _)| h < hash);
                let (_, host) = ring[if at == ring.len() { 0 } else { at }];
                Some(host as usize)
            }
            HashTable::Maglev(table, _) => table.get(hash),
        }
    }
}

/// Each host's weight over the level's total, as `normalizeHostWeights` computes it (in
/// double precision, in the same order of operations, so that rings come out identical).
fn normalized_weights(hosts: &[Arc<Host>]) -> Vec<f64> {
    let sum: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    hosts
        .iter()
        .map(|h| f64::from(h.weight) * 1.0 / sum as f64)
        .collect()
}

/// Envoy's `RingHashLoadBalancer::Ring` construction.
fn build_ring(
    keys: &[String],
    weights: &[f64],
    config: &RingHashConfig,
) -> (Vec<(u64, u32)>, TableStats) {
    let min_weight = weights.iter().copied().fold(1.0f64, f64::min);
    let scale = f64::min(
        (min_weight * config.minimum_ring_size as f64).ceil() / min_weight,
        config.maximum_ring_size as f64,
    );
    let ring_size = scale.ceil() as u64;
    let mut ring = Vec::with_capacity(ring_size as usize);
    let mut stats = TableStats {
        size: ring_size,
        min_per_host: ring_size,
        max_per_host: 0,
    };
    let mut current = 0.0f64;
    let mut target = 0.0f64;
    let mut key = String::new();
    for (index, (host_key, weight)) in keys.iter().zip(weights).enumerate() {
        target += scale * weight;
        let mut i: u64 = 0;
        while current < target {
            key.clear();
            key.push_str(host_key);
            key.push('_');
            key.push_str(&i.to_string());
            let hash = match config.hash_function {
                HashFunction::XxHash => xxhash64(key.as_bytes()),
                HashFunction::MurmurHash2 => murmur_hash2(key.as_bytes()),
            };
            ring.push((hash, index as u32));
            i += 1;
            current += 1.0;
        }
        stats.min_per_host = stats.min_per_host.min(i);
        stats.max_per_host = stats.max_per_host.max(i);
    }
    ring.sort_by_key(|&(hash, _)| hash);
    (ring, stats)
}

/// A Maglev lookup table: host indexes, one or two bytes each when the hosts allow (Envoy
/// keeps a bit-packed table for the same reason: a 65537-entry table per priority).
#[derive(Debug)]
pub enum MaglevTable {
    Small(Vec<u8>),
    Medium(Vec<u16>),
    Large(Vec<u32>),
}

impl MaglevTable {
    fn get(&self, hash: u64) -> Option<usize> {
        let slot = |len: usize| (hash % len as u64) as usize;
        match self {
            MaglevTable::Small(t) if !t.is_empty() => Some(t[slot(t.len())] as usize),
            MaglevTable::Medium(t) if !t.is_empty() => Some(t[slot(t.len())] as usize),
            MaglevTable::Large(t) if !t.is_empty() => Some(t[slot(t.len())] as usize),
            _ => None,
        }
    }
}

/// Envoy's `MaglevTable` construction (pseudocode listing 1 of the Maglev paper, with Envoy's
/// weighting).
fn build_maglev(keys: &[String], weights: &[f64], size: u64) -> (MaglevTable, TableStats) {
    struct Entry {
        host: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
        count: u64,
    }
    // One host takes every key: Envoy 1.40 then keeps a one-entry table (its
    // `maglev_lb.*_entries_per_host` gauges say 1), and so does Legate.
    if keys.len() == 1 {
        let one = TableStats {
            size: 1,
            min_per_host: 1,
            max_per_host: 1,
        };
        return (MaglevTable::Small(vec![0]), one);
    }
    let max_weight = weights.iter().copied().fold(0.0f64, f64::max);
    // Envoy sorts by the hash key so that the fill order does not depend on host order.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut entries: Vec<Entry> = order
        .into_iter()
        .map(|i| {
            let key = keys[i].as_bytes();
            Entry {
                host: i as u32,
                offset: xxhash64(key) % size,
                skip: xxhash_rust::xxh64::xxh64(key, 1) % (size - 1) + 1,
                weight: weights[i],
                target: 0.0,
                next: 0,
                count: 0,
            }
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut filled: u64 = 0;
    let mut round: u32 = 1;
    while filled < size {
        for e in entries.iter_mut() {
            if filled >= size {
                break;
            }
            if f64::from(round) * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            let mut slot = (e.offset + e.skip * e.next) % size;
            while table[slot as usize] != EMPTY {
                e.next += 1;
                slot = (e.offset + e.skip * e.next) % size;
            }
            table[slot as usize] = e.host;
            e.next += 1;
            e.count += 1;
            filled += 1;
        }
        round += 1;
    }
    let stats = TableStats {
        size,
        min_per_host: entries.iter().map(|e| e.count).fold(size, u64::min),
        max_per_host: entries.iter().map(|e| e.count).fold(0, u64::max),
    };
    let table = match keys.len() {
        n if n <= usize::from(u8::MAX) + 1 => {
            MaglevTable::Small(table.into_iter().map(|h| h as u8).collect())
        }
        n if n <= usize::from(u16::MAX) + 1 => {
            MaglevTable::Medium(table.into_iter().map(|h| h as u16).collect())
        }
        _ => MaglevTable::Large(table),
    };
    (table, stats)
}

/// Whether `n` is prime (Envoy requires a prime Maglev table size).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
