//! Load balancers: which host of a cluster takes the next request.
//!
//! Hosts are grouped by priority. As in Envoy, traffic goes to the highest priority (lowest
//! number) that has healthy hosts; when no host at all is healthy the balancer is in panic
//! mode and uses every host of the first non-empty priority (Envoy's `healthy_panic_threshold`
//! at its limit). Without active health checking (not implemented yet) every host is healthy,
//! so priority 0 takes all traffic, as in Envoy. Envoy's partial spill-over between priorities
//! (the 1.4 overprovisioning factor) needs partial health and arrives with health checking.
//!
//! * ROUND_ROBIN: equal weights go in turn; unequal weights follow a precomputed smooth
//!   weighted round-robin order (the same long-run shares as Envoy's EDF scheduler, and no
//!   lock on the request path).
//! * LEAST_REQUEST: equal weights use Envoy's power of two choices (`choice_count` 2) on the
//!   hosts' active-request counts; unequal weights pick by weight / (active + 1), Envoy's
//!   formula with `active_request_bias` 1.
//! * RANDOM: uniform; as in Envoy's `RandomLoadBalancer`, `load_balancing_weight` is ignored.
//! * RING_HASH and MAGLEV: consistent hashing of the request's hash key (route or tcp_proxy
//!   `hash_policy`); the ring or table of each priority is built once per membership, with
//!   Envoy's exact construction (see [`crate::hashing`]), so that a key picks the same host as
//!   Envoy does. Without a key the hash is a random number, as in Envoy's
//!   `ThreadAwareLoadBalancerBase`, which makes them weighted random balancers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::LbPolicy;
use crate::hashing::HashTable;
use crate::host::Host;

/// The longest weighted round-robin order kept; larger weight sums are scaled down.
const MAX_WHEEL: u64 = 4096;

#[derive(Debug)]
struct Level {
    hosts: Vec<Arc<Host>>,
    /// Indexes into `hosts` in smooth weighted round-robin order (unequal weights only).
    wheel: Vec<u32>,
    equal_weights: bool,
    /// The ring or Maglev table over all of `hosts` (hashing policies only).
    table: Option<HashTable>,
}

#[derive(Debug)]
pub struct LoadBalancer {
    policy: LbPolicy,
    levels: Vec<Level>,
    next: AtomicU64,
}

impl LoadBalancer {
    pub fn new(policy: LbPolicy, hosts: &[Arc<Host>]) -> Self {
        let max_priority = hosts.iter().map(|h| h.priority).max().unwrap_or(0) as usize;
        let mut levels = Vec::with_capacity(max_priority + 1);
        for p in 0..=max_priority {
            let level_hosts: Vec<Arc<Host>> = hosts
                .iter()
                .filter(|h| h.priority as usize == p)
                .cloned()
                .collect();
            levels.push(Level::new(level_hosts, policy));
        }
        LoadBalancer {
            policy,
            levels,
            next: AtomicU64::new(0),
        }
    }

    /// The host for the next request, or `None` when the cluster has no host at all.
    /// `random` is a fresh random number; RING_HASH and MAGLEV take it as the hash to look up,
    /// so callers pass the request's hash key instead when it has one (`hash_policy`), and a
    /// random number otherwise, which is what Envoy's hashing balancers do without a key.
    pub fn choose(&self, random: u64) -> Option<&Arc<Host>> {
        let level = self
            .levels
            .iter()
            .find(|l| l.hosts.iter().any(|h| h.healthy()))
            .map(|l| (l, true))
            .or_else(|| {
                self.levels
                    .iter()
                    .find(|l| !l.hosts.is_empty())
                    .map(|l| (l, false))
            })?;
        let (level, healthy_only) = level;
        let usable = |h: &Arc<Host>| !healthy_only || h.healthy();
        match self.policy {
            LbPolicy::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                level.round_robin(n, usable)
            }
            LbPolicy::LeastRequest => level.least_request(random, usable),
            LbPolicy::Random => level.random(random, usable),
            LbPolicy::RingHash(_) | LbPolicy::Maglev(_) => {
                level.hashed(self.policy, random, healthy_only)
            }
        }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// The sizes Envoy reports of its rings and tables: it builds one per priority, and its
    /// gauges keep the last one built (priorities without hosts build none).
    pub fn table_stats(&self) -> Option<crate::hashing::TableStats> {
        self.levels
            .iter()
            .rev()
            .find_map(|l| l.table.as_ref().map(|t| t.stats()))
    }
}

impl Level {
    fn new(hosts: Vec<Arc<Host>>, policy: LbPolicy) -> Self {
        let equal_weights = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let total_weight = hosts.iter().map(|h| h.weight as u64).sum();
        let wheel = if equal_weights {
            Vec::new()
        } else {
            smooth_wheel(&hosts, total_weight)
        };
        let table = HashTable::build(policy, &hosts);
        Level {
            hosts,
            wheel,
            equal_weights,
            table,
        }
    }

    /// Envoy builds each priority's ring or table over its healthy hosts (all of them in
    /// panic). Hosts are only marked unhealthy by health checking, which Legate does not have
    /// yet, so the table over all hosts is the one used; should some host of the level be
    /// unhealthy, a table over the healthy ones is built for the request instead (correct, but
    /// to be cached per health change once health checking lands).
    fn hashed(&self, policy: LbPolicy, hash: u64, healthy_only: bool) -> Option<&Arc<Host>> {
        let table = self.table.as_ref()?;
        if healthy_only && self.hosts.iter().any(|h| !h.healthy()) {
            let healthy: Vec<Arc<Host>> =
                self.hosts.iter().filter(|h| h.healthy()).cloned().collect();
            let index = HashTable::build(policy, &healthy)?.choose(hash)?;
            let chosen = &healthy[index];
            return self.hosts.iter().find(|h| Arc::ptr_eq(h, chosen));
        }
        table.choose(hash).map(|i| &self.hosts[i])
    }

    fn round_robin(&self, n: u64, usable: impl Fn(&Arc<Host>) -> bool) -> Option<&Arc<Host>> {
        let len = if self.equal_weights {
            self.hosts.len()
        } else {
            self.wheel.len()
        };
        // Skip unusable hosts, trying each slot at most once.
        (0..len as u64).find_map(|i| {
            let slot = ((n + i) % len as u64) as usize;
            let index = if self.equal_weights {
                slot
            } else {
                self.wheel[slot] as usize
            };
            let host = &self.hosts[index];
            usable(host).then_some(host)
        })
    }

    fn least_request(
        &self,
        random: u64,
        usable: impl Fn(&Arc<Host>) -> bool,
    ) -> Option<&Arc<Host>> {
        let len = self.hosts.len() as u64;
        if self.equal_weights {
            let a = &self.hosts[(random % len) as usize];
            let b = &self.hosts[((random >> 32) % len) as usize];
            return match (usable(a), usable(b)) {
                (true, true) if b.active_requests() < a.active_requests() => Some(b),
                (true, _) => Some(a),
                (false, true) => Some(b),
                (false, false) => self.random(random, usable),
            };
        }
        // weight / (active + 1), the best of all usable hosts.
        self.hosts.iter().filter(|h| usable(h)).max_by(|a, b| {
            let score = |h: &Arc<Host>| h.weight as f64 / (h.active_requests() + 1) as f64;
            score(a).total_cmp(&score(b))
        })
    }

    /// A uniform pick: Envoy's `RandomLoadBalancer::peekOrChoose` is
    /// `hosts[random % hosts.size()]`, whatever the weights.
    fn random(&self, random: u64, usable: impl Fn(&Arc<Host>) -> bool) -> Option<&Arc<Host>> {
        let start = (random % self.hosts.len() as u64) as usize;
        let len = self.hosts.len();
        (0..len)
            .map(|i| &self.hosts[(start + i) % len])
            .find(|h| usable(h))
    }
}

/// Smooth weighted round robin (each step: every host gains its weight, the largest current
/// value is chosen and loses the total), which spreads a heavy host's turns evenly.
fn smooth_wheel(hosts: &[Arc<Host>], total_weight: u64) -> Vec<u32> {
    let scale = total_weight.div_ceil(MAX_WHEEL).max(1);
    let weights: Vec<i64> = hosts
        .iter()
        .map(|h| (h.weight as u64 / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        wheel.push(best as u32);
    }
    wheel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[(u32, u32)]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &(w, p))| {
                Arc::new(Host::new(
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    w,
                    p,
                    None,
                    1,
                ))
            })
            .collect()
    }

    fn share(lb: &LoadBalancer, n: usize) -> Vec<usize> {
        let mut counts = vec![0; 8];
        for i in 0..n {
            let h = lb.choose(fastrand::u64(..) ^ i as u64).unwrap();
            counts[(h.address.port() - 1000) as usize] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_alternates_and_follows_weights() {
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts(&[(1, 0), (1, 0)]));
        assert_eq!(&share(&lb, 10)[..2], &[5, 5]);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts(&[(3, 0), (1, 0)]));
        assert_eq!(&share(&lb, 400)[..2], &[300, 100]);
    }

    #[test]
    fn priority_zero_takes_all_while_healthy() {
        let hs = hosts(&[(1, 0), (1, 1)]);
        let lb = LoadBalancer::new(LbPolicy::Random, &hs);
        assert_eq!(&share(&lb, 100)[..2], &[100, 0]);
        hs[0].set_healthy(false);
        assert_eq!(&share(&lb, 100)[..2], &[0, 100]);
        hs[1].set_healthy(false);
        // Panic: every host of the first non-empty priority.
        assert_eq!(&share(&lb, 100)[..2], &[100, 0]);
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let hs = hosts(&[(1, 0), (1, 0)]);
        hs[0].active_requests.store(10, Ordering::Relaxed);
        let lb = LoadBalancer::new(LbPolicy::LeastRequest, &hs);
        let counts = share(&lb, 1000);
        // Host 0 wins only when both choices land on it (about a quarter of the time).
        assert!(counts[1] > 650, "{counts:?}");
    }

    #[test]
    fn random_ignores_weights_as_envoy_does() {
        let lb = LoadBalancer::new(LbPolicy::Random, &hosts(&[(9, 0), (1, 0)]));
        let counts = share(&lb, 10_000);
        assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn hash_functions_match_envoys_test_vectors() {
        use crate::hashing::{murmur_hash2, xxhash64};
        // Envoy's test/common/common/hash_test.cc.
        assert_eq!(murmur_hash2(b"foo"), 9631199822919835226);
        assert_eq!(murmur_hash2(b"bar"), 11474628671133349555);
        assert_eq!(murmur_hash2(b"foo\nbar"), 16306510975912980159);
        assert_eq!(murmur_hash2(b"lyft"), 12847078931730529320);
        assert_eq!(murmur_hash2(b""), 6142509188972423790);
        // The reference xxHash64 of the empty input.
        assert_eq!(xxhash64(b""), 0xef46_db37_51d8_e999);
    }

    fn ring_hash(min: u64, max: u64) -> LbPolicy {
        LbPolicy::RingHash(crate::hashing::RingHashConfig {
            minimum_ring_size: min,
            maximum_ring_size: max,
            hash_function: crate::hashing::HashFunction::XxHash,
        })
    }

    fn maglev(size: u64) -> LbPolicy {
        LbPolicy::Maglev(crate::hashing::MaglevConfig { table_size: size })
    }

    #[test]
    fn ring_has_scaled_entries_per_weight_sorted_by_hash() {
        use crate::hashing::HashTable;
        // Weights 1, 2, 1: the lightest host gets ceil(0.25 * 16) = 4 entries; scale 16.
        let hs = hosts(&[(1, 0), (2, 0), (1, 0)]);
        let Some(HashTable::Ring(ring, stats)) = HashTable::build(ring_hash(16, 1024), &hs) else {
            panic!("no ring");
        };
        assert_eq!(ring.len(), 16);
        assert_eq!(
            (stats.size, stats.min_per_host, stats.max_per_host),
            (16, 4, 8)
        );
        let count = |i| ring.iter().filter(|e| e.1 == i).count();
        assert_eq!((count(0), count(1), count(2)), (4, 8, 4));
        assert!(ring.windows(2).all(|w| w[0].0 <= w[1].0));
        // Entries are the hashes of "<address>_<i>".
        let first = crate::hashing::xxhash64(b"127.0.0.1:1000_0");
        assert!(ring.contains(&(first, 0)));
        // maximum_ring_size caps the scale: 6 entries for four equal hosts (1.5 each: the
        // running sums give 2, 1, 2, 1).
        let hs = hosts(&[(1, 0), (1, 0), (1, 0), (1, 0)]);
        let Some(HashTable::Ring(ring, _)) = HashTable::build(ring_hash(1024, 6), &hs) else {
            panic!("no ring");
        };
        let count = |i| ring.iter().filter(|e| e.1 == i).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (2, 1, 2, 1));
    }

    #[test]
    fn ring_lookup_takes_the_next_entry_and_wraps() {
        use crate::hashing::HashTable;
        let hs = hosts(&[(1, 0), (1, 0), (1, 0)]);
        let table = HashTable::build(ring_hash(8, 1024), &hs).unwrap();
        let HashTable::Ring(ring, _) = &table else {
            panic!()
        };
        for &(h, host) in ring.iter() {
            assert_eq!(table.choose(h), Some(host as usize));
        }
        let (first_hash, first_host) = ring[0];
        assert_eq!(table.choose(0), Some(ring[0].1 as usize));
        let (last_hash, _) = ring[ring.len() - 1];
        if last_hash < u64::MAX {
            assert_eq!(table.choose(last_hash + 1), Some(first_host as usize));
        }
        if first_hash > 0 {
            assert_eq!(table.choose(first_hash - 1), Some(first_host as usize));
        }
    }

    #[test]
    fn maglev_fills_the_table_by_weight() {
        use crate::hashing::HashTable;
        let hs = hosts(&[(1, 0), (3, 0)]);
        let table = HashTable::build(maglev(65537), &hs).unwrap();
        let mut counts = [0usize; 2];
        for slot in 0..65537u64 {
            counts[table.choose(slot).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[1], 65537);
        // Host 0 takes a slot every third round out of... its share is a quarter.
        assert!((16_000..16_800).contains(&counts[0]), "{counts:?}");
        // Equal weights split a prime table as evenly as it can be.
        let hs = hosts(&[(1, 0), (1, 0), (1, 0)]);
        let table = HashTable::build(maglev(7), &hs).unwrap();
        let mut counts = [0usize; 3];
        for slot in 0..7u64 {
            counts[table.choose(slot).unwrap()] += 1;
        }
        let mut sorted = counts;
        sorted.sort_unstable();
        assert_eq!(sorted, [2, 2, 3]);
    }

    #[test]
    fn maglev_does_not_depend_on_host_order() {
        use crate::hashing::HashTable;
        let hs = hosts(&[(1, 0), (2, 0), (3, 0)]);
        let reversed: Vec<Arc<Host>> = hs.iter().rev().cloned().collect();
        let a = HashTable::build(maglev(251), &hs).unwrap();
        let b = HashTable::build(maglev(251), &reversed).unwrap();
        for slot in 0..251u64 {
            let x = &hs[a.choose(slot).unwrap()];
            let y = &reversed[b.choose(slot).unwrap()];
            assert!(Arc::ptr_eq(x, y));
        }
    }

    #[test]
    fn hashing_balancers_are_sticky_and_keep_most_keys_when_a_host_goes() {
        for policy in [ring_hash(1024, 8 << 20), maglev(65537)] {
            let hs = hosts(&[(1, 0), (1, 0), (1, 0), (1, 0)]);
            let lb = LoadBalancer::new(policy, &hs);
            let fewer = LoadBalancer::new(policy, &hs[..3]);
            let mut stayed = 0;
            let mut kept_hosts = 0;
            for key in 0..2000u64 {
                let h = crate::hashing::xxhash64(&key.to_le_bytes());
                let a = lb.choose(h).unwrap();
                let again = lb.choose(h).unwrap();
                assert!(Arc::ptr_eq(a, again));
                let b = fewer.choose(h).unwrap();
                if a.address.port() == 1003 {
                    assert_ne!(b.address.port(), 1003);
                } else {
                    kept_hosts += 1;
                    stayed += usize::from(Arc::ptr_eq(a, b));
                }
            }
            // Consistent hashing: keys of the hosts that stay mostly stay with them.
            assert!(
                stayed * 100 >= kept_hosts * 85,
                "{policy:?}: {stayed}/{kept_hosts}"
            );
        }
    }

    #[test]
    fn hashing_balancers_skip_unhealthy_hosts_and_use_priorities() {
        for policy in [ring_hash(64, 1024), maglev(251)] {
            let hs = hosts(&[(1, 0), (1, 0), (1, 1)]);
            let lb = LoadBalancer::new(policy, &hs);
            hs[0].set_healthy(false);
            for key in 0..200u64 {
                let h = lb.choose(key.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                assert_eq!(h.unwrap().address.port(), 1001, "{policy:?}");
            }
            hs[1].set_healthy(false);
            let h = lb.choose(7).unwrap();
            assert_eq!(h.address.port(), 1002);
        }
    }
}
