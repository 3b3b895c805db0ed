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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::LbPolicy;
use crate::host::Host;

/// The longest weighted round-robin order kept; larger weight sums are scaled down.
const MAX_WHEEL: u64 = 4096;

#[derive(Debug)]
struct Level {
    hosts: Vec<Arc<Host>>,
    /// Indexes into `hosts` in smooth weighted round-robin order (unequal weights only).
    wheel: Vec<u32>,
    equal_weights: bool,
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
            levels.push(Level::new(level_hosts));
        }
        LoadBalancer {
            policy,
            levels,
            next: AtomicU64::new(0),
        }
    }

    /// The host for the next request, or `None` when the cluster has no host at all.
    /// `random` is a fresh random number.
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
        }
    }
}

impl Level {
    fn new(hosts: Vec<Arc<Host>>) -> Self {
        let equal_weights = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let total_weight = hosts.iter().map(|h| h.weight as u64).sum();
        let wheel = if equal_weights {
            Vec::new()
        } else {
            smooth_wheel(&hosts, total_weight)
        };
        Level {
            hosts,
            wheel,
            equal_weights,
        }
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
}
