//! Filter-chain matching (`FilterChainMatch`, listener_components.proto): which of a
//! listener's filter chains serves a new connection.
//!
//! Envoy narrows the set of chains one criterion at a time, in this order: destination port,
//! destination IP, server name (SNI), transport protocol, application protocols (ALPN),
//! directly connected source IP, source type, source IP, source port. At each step only the
//! chains whose value for that criterion is the *most specific* one that matches the
//! connection go on (an exact port before "any port", the longest matching CIDR, an exact
//! server name before `*.example.com` before `*.com` before "no server names", ...). There is
//! no backtracking: if the most specific chains of a step fail a later step, the connection
//! matches no chain even though a less specific chain would have matched every criterion.
//! Then `default_filter_chain` serves it, or it is closed and counted in
//! `listener.<addr>.no_filter_chain_match`.
//!
//! The chains are compiled at configuration time into a tree with one level per criterion
//! ([`FilterChainIndex`]); a lookup walks it once and allocates nothing. A chain with several
//! values for a criterion is entered under each value, so two chains that could both claim one
//! connection land on the same leaf: that is Envoy's "multiple filter chains with overlapping
//! matching rules are defined", found while building.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use legate_api::pb::envoy::config::core::v3::CidrRange;
use legate_api::pb::envoy::config::listener::v3::FilterChainMatch;
use legate_api::pb::envoy::config::listener::v3::filter_chain_match::ConnectionSourceType;
pub use legate_core::address::Cidr;

/// What is known about a new connection when its filter chain is chosen: its addresses and
/// what the listener filters detected.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFacts<'a> {
    /// The destination: the listener's local address (`destination_port`, `prefix_ranges`).
    /// The addresses are `None` on a unix domain socket (unless a PROXY header gave them):
    /// only chains that leave the criterion unset match there, as in Envoy.
    pub local: Option<SocketAddr>,
    /// The source, as a PROXY protocol header may have restored it (`source_*`).
    pub remote: Option<SocketAddr>,
    /// The peer of the TCP connection (`direct_source_prefix_ranges`).
    pub direct_remote: Option<SocketAddr>,
    /// SNI, lower-cased; empty if none.
    pub server_name: &'a str,
    /// `tls`, or `raw_buffer` when no listener filter detected a transport.
    pub transport_protocol: &'a str,
    /// ALPN offered by the client (tls_inspector) or the HTTP version (http_inspector).
    pub application_protocols: &'a [String],
}

impl ConnectionFacts<'_> {
    /// `SAME_IP_OR_LOOPBACK`: over a unix domain socket, from the canonical loopback address
    /// (127.0.0.1 or ::1: Envoy's `isLoopbackAddress`, not all of 127/8) or from the address
    /// it connected to.
    fn is_local(&self) -> bool {
        let Some(ip) = self.remote.map(|r| r.ip()) else {
            return true;
        };
        ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
            || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
            || Some(ip) == self.local.map(|l| l.ip())
    }
}

/// One level of the tree keyed by an exact value, with "any" for chains that leave the
/// criterion unset.
#[derive(Debug)]
struct Exact<K, V> {
    entries: Vec<(K, V)>,
    any: Option<V>,
}

impl<K, V> Default for Exact<K, V> {
    fn default() -> Self {
        Exact {
            entries: Vec::new(),
            any: None,
        }
    }
}

impl<K: PartialEq, V: Default> Exact<K, V> {
    fn entry(&mut self, key: Option<K>) -> &mut V {
        let Some(key) = key else {
            return self.any.get_or_insert_with(V::default);
        };
        let i = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.entries.push((key, V::default()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }
}

impl<K, V> Exact<K, V> {
    fn find(&self, matches: impl Fn(&K) -> bool) -> Option<&V> {
        self.entries
            .iter()
            .find(|(k, _)| matches(k))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }
}

/// A level keyed by CIDR ranges: the longest matching prefix wins.
#[derive(Debug)]
struct Cidrs<V> {
    /// Longest prefix first once built.
    entries: Vec<(Cidr, V)>,
}

impl<V> Default for Cidrs<V> {
    fn default() -> Self {
        Cidrs {
            entries: Vec::new(),
        }
    }
}

impl<V: Default> Cidrs<V> {
    fn entry(&mut self, key: Cidr) -> &mut V {
        let i = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.entries.push((key, V::default()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }
}

impl<V> Cidrs<V> {
    /// The longest range holding `ip`; with no address (a unix domain socket), the chains
    /// that leave the ranges unset (kept under `ANY_V4`, as under `ANY_V6`).
    fn find(&self, ip: Option<IpAddr>) -> Option<&V> {
        self.entries
            .iter()
            .find(|(c, _)| match ip {
                Some(ip) => c.contains(ip),
                None => *c == Cidr::ANY_V4,
            })
            .map(|(_, v)| v)
    }

    fn sort(&mut self, inner: impl Fn(&mut V)) {
        self.entries
            .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()));
        for (_, v) in &mut self.entries {
            inner(v);
        }
    }
}

/// The server-name level: exact names, `*.suffix` wildcards (keyed by `.suffix`), and chains
/// without server names.
#[derive(Debug)]
struct Names<V> {
    exact: HashMap<Box<str>, V>,
    wildcard: HashMap<Box<str>, V>,
    any: Option<V>,
}

impl<V> Default for Names<V> {
    fn default() -> Self {
        Names {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<V: Default> Names<V> {
    fn entry(&mut self, name: Option<&str>) -> &mut V {
        match name {
            None => self.any.get_or_insert_with(V::default),
            Some(n) => match n.strip_prefix('*') {
                Some(suffix) => self.wildcard.entry(suffix.into()).or_default(),
                None => self.exact.entry(n.into()).or_default(),
            },
        }
    }
}

impl<V> Names<V> {
    /// `www.example.com` tries `www.example.com`, then `*.example.com`, then `*.com`, then
    /// chains without server names.
    fn find(&self, name: &str) -> Option<&V> {
        if !name.is_empty() {
            if let Some(v) = self.exact.get(name) {
                return Some(v);
            }
            if !self.wildcard.is_empty() {
                let mut from = 1;
                while let Some(dot) = name.get(from..).and_then(|s| s.find('.')) {
                    let dot = from + dot;
                    if dot + 1 >= name.len() {
                        break;
                    }
                    if let Some(v) = self.wildcard.get(&name[dot..]) {
                        return Some(v);
                    }
                    from = dot + 1;
                }
            }
        }
        self.any.as_ref()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(self.any.iter_mut())
    }
}

// The tree, outermost level first.
type SourcePorts = Exact<u16, Option<usize>>;
type SourceIps = Cidrs<SourcePorts>;
/// Indexed by `ConnectionSourceType`: ANY, SAME_IP_OR_LOOPBACK, EXTERNAL.
type SourceTypes = [Option<SourceIps>; 3];
type DirectSourceIps = Cidrs<SourceTypes>;
type Alpns = Exact<Box<str>, DirectSourceIps>;
type Transports = Exact<Box<str>, Alpns>;
type ServerNames = Names<Transports>;
type DestinationIps = Cidrs<ServerNames>;
type DestinationPorts = Exact<u16, DestinationIps>;

/// A listener's `filter_chains`, compiled for lookup.
#[derive(Debug, Default)]
pub struct FilterChainIndex {
    root: DestinationPorts,
}

/// Why a listener's chains cannot be indexed; the text is Envoy's, without the
/// "error adding listener '<address>': " prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError(pub String);

/// A chain's match, with its values checked and normalised (names lower-cased, networks
/// masked).
struct Criteria {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    server_names: Vec<Option<String>>,
    transport_protocol: Option<String>,
    application_protocols: Vec<Option<String>>,
    direct_source: Vec<Cidr>,
    source_type: usize,
    source_ranges: Vec<Cidr>,
    source_ports: Vec<Option<u16>>,
}

fn ranges(list: &[CidrRange]) -> Result<Vec<Cidr>, String> {
    if list.is_empty() {
        return Ok(vec![Cidr::ANY_V4, Cidr::ANY_V6]);
    }
    list.iter().map(Cidr::compile).collect()
}

fn optional<T>(list: Vec<T>) -> Vec<Option<T>> {
    if list.is_empty() {
        vec![None]
    } else {
        list.into_iter().map(Some).collect()
    }
}

impl Criteria {
    fn compile(m: &FilterChainMatch, chain_name: &str) -> Result<Criteria, String> {
        if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
            return Err(format!(
                "filter chain '{chain_name}' contains unimplemented fields"
            ));
        }
        let mut server_names = Vec::with_capacity(m.server_names.len());
        for name in &m.server_names {
            if name.contains('*') && !name.starts_with("*.") {
                return Err("partial wildcards are not supported in \"server_names\"".into());
            }
            server_names.push(name.to_ascii_lowercase());
        }
        Ok(Criteria {
            destination_port: m.destination_port.as_ref().map(|p| p.value as u16),
            prefix_ranges: ranges(&m.prefix_ranges)?,
            server_names: optional(server_names),
            transport_protocol: (!m.transport_protocol.is_empty())
                .then(|| m.transport_protocol.clone()),
            application_protocols: optional(m.application_protocols.clone()),
            direct_source: ranges(&m.direct_source_prefix_ranges)?,
            source_type: match ConnectionSourceType::try_from(m.source_type) {
                Ok(ConnectionSourceType::SameIpOrLoopback) => 1,
                Ok(ConnectionSourceType::External) => 2,
                _ => 0,
            },
            source_ranges: ranges(&m.source_prefix_ranges)?,
            source_ports: optional(m.source_ports.iter().map(|&p| p as u16).collect()),
        })
    }
}

impl FilterChainIndex {
    /// Builds the index of `chains` (name, match). Envoy's checks, in its order: a chain with
    /// fields Envoy does not implement, a partial wildcard server name, two chains whose
    /// matches are equal, two chains that overlap.
    pub fn build<'a>(
        chains: impl IntoIterator<Item = (&'a str, Option<&'a FilterChainMatch>)>,
    ) -> Result<FilterChainIndex, IndexError> {
        let chains: Vec<(&str, FilterChainMatch)> = chains
            .into_iter()
            .map(|(n, m)| (n, m.cloned().unwrap_or_default()))
            .collect();
        let mut criteria = Vec::with_capacity(chains.len());
        for (name, m) in &chains {
            criteria.push(Criteria::compile(m, name).map_err(IndexError)?);
        }
        for (i, (name, m)) in chains.iter().enumerate() {
            if let Some((first, _)) = chains[..i].iter().find(|(_, other)| other == m) {
                return Err(IndexError(format!(
                    "filter chain '{name}' has the same matching rules defined as '{first}'. duplicate matcher is: {}",
                    match_json(m)
                )));
            }
        }
        let mut index = FilterChainIndex::default();
        for (i, c) in criteria.iter().enumerate() {
            if !index.insert(i, c) {
                return Err(IndexError(
                    "multiple filter chains with overlapping matching rules are defined".into(),
                ));
            }
        }
        index.sort();
        Ok(index)
    }

    /// Enters chain `chain` under every combination of its values; false if a combination is
    /// taken already.
    fn insert(&mut self, chain: usize, c: &Criteria) -> bool {
        let ports = self.root.entry(c.destination_port);
        for &dst in &c.prefix_ranges {
            let names = ports.entry(dst);
            for name in &c.server_names {
                let transports = names.entry(name.as_deref());
                let alpns = transports.entry(c.transport_protocol.as_deref().map(Box::from));
                for alpn in &c.application_protocols {
                    let directs = alpns.entry(alpn.as_deref().map(Box::from));
                    for &direct in &c.direct_source {
                        let types = directs.entry(direct);
                        let sources = types[c.source_type].get_or_insert_with(Default::default);
                        for &src in &c.source_ranges {
                            let source_ports = sources.entry(src);
                            for &port in &c.source_ports {
                                let leaf = source_ports.entry(port);
                                if leaf.is_some() {
                                    return false;
                                }
                                *leaf = Some(chain);
                            }
                        }
                    }
                }
            }
        }
        true
    }

    /// Orders every CIDR level longest prefix first.
    fn sort(&mut self) {
        let root = &mut self.root;
        for dst in root
            .entries
            .iter_mut()
            .map(|(_, v)| v)
            .chain(root.any.iter_mut())
        {
            dst.sort(|names| {
                for transports in names.values_mut() {
                    for alpns in transports
                        .entries
                        .iter_mut()
                        .map(|(_, v)| v)
                        .chain(transports.any.iter_mut())
                    {
                        for directs in alpns
                            .entries
                            .iter_mut()
                            .map(|(_, v)| v)
                            .chain(alpns.any.iter_mut())
                        {
                            directs.sort(|types| {
                                for sources in types.iter_mut().flatten() {
                                    sources.sort(|_| {});
                                }
                            });
                        }
                    }
                }
            });
        }
    }

    /// The chain that serves a connection, if any (index into the listener's `filter_chains`).
    pub fn find(&self, c: &ConnectionFacts<'_>) -> Option<usize> {
        let port = c.local.map(|l| l.port());
        let dsts = self.root.find(|&p| Some(p) == port)?;
        let names = dsts.find(c.local.map(|l| l.ip()))?;
        let transports = names.find(c.server_name)?;
        let alpns = transports.find(|t| **t == *c.transport_protocol)?;
        let directs = c
            .application_protocols
            .iter()
            .find_map(|p| alpns.entries.iter().find(|(k, _)| **k == **p))
            .map(|(_, v)| v)
            .or(alpns.any.as_ref())?;
        let types = directs.find(c.direct_remote.map(|d| d.ip()))?;
        let specific = if c.is_local() { 1 } else { 2 };
        let sources = types[specific].as_ref().or(types[0].as_ref())?;
        let ports = sources.find(c.remote.map(|r| r.ip()))?;
        let remote_port = c.remote.map(|r| r.port());
        *ports.find(|&p| Some(p) == remote_port)?
    }
}

/// A `FilterChainMatch` as Envoy prints it in its duplicate-chain error: JSON with the set
/// fields in field-number order.
fn match_json(m: &FilterChainMatch) -> String {
    let s = |v: &str| format!("{v:?}");
    let cidrs = |list: &[CidrRange]| {
        let items: Vec<String> = list
            .iter()
            .map(|c| match &c.prefix_len {
                Some(l) => format!(
                    "{{\"address_prefix\":{},\"prefix_len\":{}}}",
                    s(&c.address_prefix),
                    l.value
                ),
                None => format!("{{\"address_prefix\":{}}}", s(&c.address_prefix)),
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let strings = |list: &[String]| {
        format!(
            "[{}]",
            list.iter().map(|v| s(v)).collect::<Vec<_>>().join(",")
        )
    };
    let mut fields = Vec::new();
    if !m.prefix_ranges.is_empty() {
        fields.push(format!("\"prefix_ranges\":{}", cidrs(&m.prefix_ranges)));
    }
    if !m.address_suffix.is_empty() {
        fields.push(format!("\"address_suffix\":{}", s(&m.address_suffix)));
    }
    if let Some(l) = &m.suffix_len {
        fields.push(format!("\"suffix_len\":{}", l.value));
    }
    if !m.source_prefix_ranges.is_empty() {
        fields.push(format!(
            "\"source_prefix_ranges\":{}",
            cidrs(&m.source_prefix_ranges)
        ));
    }
    if !m.source_ports.is_empty() {
        let ports: Vec<String> = m.source_ports.iter().map(u32::to_string).collect();
        fields.push(format!("\"source_ports\":[{}]", ports.join(",")));
    }
    if let Some(p) = &m.destination_port {
        fields.push(format!("\"destination_port\":{}", p.value));
    }
    if !m.transport_protocol.is_empty() {
        fields.push(format!(
            "\"transport_protocol\":{}",
            s(&m.transport_protocol)
        ));
    }
    if !m.application_protocols.is_empty() {
        fields.push(format!(
            "\"application_protocols\":{}",
            strings(&m.application_protocols)
        ));
    }
    if !m.server_names.is_empty() {
        fields.push(format!("\"server_names\":{}", strings(&m.server_names)));
    }
    if m.source_type != 0 {
        let name =
            ConnectionSourceType::try_from(m.source_type).map_or("UNKNOWN", |t| t.as_str_name());
        fields.push(format!("\"source_type\":{}", s(name)));
    }
    if !m.direct_source_prefix_ranges.is_empty() {
        fields.push(format!(
            "\"direct_source_prefix_ranges\":{}",
            cidrs(&m.direct_source_prefix_ranges)
        ));
    }
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests;
