//! Upstream clusters: the compiled model of a cluster (`cluster`), the live cluster with its
//! hosts, stats and circuit breakers (`manager`), load balancers (`lb`, their consistent-hashing
//! rings and tables in `hashing`), and the per-worker connection pools that carry requests to
//! hosts (`pool`) — HTTP/1.1 with Legate's own client codec (`http1`) — over TLS when the
//! cluster says so (`tls`); `original_dst` makes the hosts of `ORIGINAL_DST` clusters as
//! requests name them.

pub mod body;
pub mod breaker;
pub mod cluster;
pub mod hashing;
pub mod host;
pub mod http1;
pub mod lb;
pub mod manager;
pub mod original_dst;
pub mod pool;
pub mod proxy_protocol;
pub mod stats;
pub mod tls;
pub mod tunnel;

pub use cluster::{ClusterConfig, LbPolicy, UpstreamProtocol};
pub use manager::{Cluster, ClusterManager, ClusterSet, ClusterUpdate, Membership};
