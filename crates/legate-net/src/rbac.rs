//! The network RBAC filter (`envoy.filters.network.rbac`): allows or denies a connection by
//! its addresses, SNI and dynamic metadata, before the chain's terminal filter sees it. A
//! policy matches when one of its permissions (what is asked for: destination IP and port,
//! server name) and one of its principals (who asks: remote and direct remote IP) match —
//! either may also match the connection's dynamic metadata (a PROXY header's TLVs); with an
//! `ALLOW` action a connection needs a matching policy, with `DENY` it must match none.
//! `shadow_rules` are evaluated and counted, never enforced, and their verdict goes into the
//! connection's dynamic metadata as in Envoy. Stats: `<stat_prefix>rbac.{allowed,denied,
//! shadow_allowed,shadow_denied}`.
//!
//! The L7 rules (headers, paths, CEL conditions, authenticated principals) are refused with
//! their field path: they have no meaning for a connection.

use std::net::SocketAddr;

use legate_api::pb::envoy::config::rbac::v3::{
    Permission, Principal, Rbac as RbacRules, permission, principal, rbac,
};
use legate_api::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
use legate_core::matcher::CompiledStringMatcher;
use legate_core::metadata::{DynamicMetadata, MetadataMatcher};
use legate_core::stats::{Counter, Scope};
use legate_core::{Compiled, ConfigError, Errors, within};

use crate::filter_chain::Cidr;

/// What a connection looks like to the rules.
pub struct Connection<'a> {
    /// The addresses: none on a unix domain socket (a PROXY header may give the remote and
    /// local ones), where no IP or port rule matches, as in Envoy.
    pub remote: Option<SocketAddr>,
    pub direct_remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// SNI, empty if none.
    pub server_name: &'a str,
    pub metadata: Option<&'a DynamicMetadata>,
}

#[derive(Debug)]
enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`, as Envoy's Int32Range.
    DestinationPorts(i64, i64),
    ServerName(CompiledStringMatcher),
    Metadata(MetadataMatcher),
}

impl Perm {
    fn matches(&self, c: &Connection<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(all) => all.iter().all(|p| p.matches(c)),
            Perm::Or(any) => any.iter().any(|p| p.matches(c)),
            Perm::Not(p) => !p.matches(c),
            Perm::DestinationIp(cidr) => c.local.is_some_and(|l| cidr.contains(l.ip())),
            Perm::DestinationPort(port) => c.local.is_some_and(|l| l.port() == *port),
            Perm::DestinationPorts(start, end) => c
                .local
                .is_some_and(|l| (*start..*end).contains(&i64::from(l.port()))),
            Perm::ServerName(m) => m.matches(c.server_name),
            Perm::Metadata(m) => m.matches(c.metadata),
        }
    }
}

#[derive(Debug)]
enum Id {
    Any,
    And(Vec<Id>),
    Or(Vec<Id>),
    Not(Box<Id>),
    /// `remote_ip` (and the deprecated `source_ip`, which Envoy reads as the direct peer).
    RemoteIp(Cidr),
    DirectRemoteIp(Cidr),
    Metadata(MetadataMatcher),
}

impl Id {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let within = |cidr: &Cidr, a: Option<SocketAddr>| a.is_some_and(|a| cidr.contains(a.ip()));
        match self {
            Id::Any => true,
            Id::And(all) => all.iter().all(|p| p.matches(c)),
            Id::Or(any) => any.iter().any(|p| p.matches(c)),
            Id::Not(p) => !p.matches(c),
            Id::RemoteIp(cidr) => within(cidr, c.remote),
            Id::DirectRemoteIp(cidr) => within(cidr, c.direct_remote),
            Id::Metadata(m) => m.matches(c.metadata),
        }
    }
}

#[derive(Debug)]
struct Policy {
    name: String,
    permissions: Vec<Perm>,
    principals: Vec<Id>,
}

/// One set of rules (`rules` or `shadow_rules`).
#[derive(Debug)]
struct Rules {
    /// `true`: ALLOW (and LOG, which allows everything); `false`: DENY.
    allow: bool,
    /// LOG: every connection passes.
    log: bool,
    policies: Vec<Policy>,
}

impl Rules {
    fn compile(r: &RbacRules) -> Compiled<Rules> {
        let mut errors = Errors::default();
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let p = &r.policies[name];
            let path = format!("policies[\"{name}\"]");
            if p.condition.is_some() || p.checked_condition.is_some() {
                errors.push(
                    &format!("{path}.condition"),
                    "CEL conditions are not supported by Legate",
                );
                continue;
            }
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .filter_map(|(i, x)| errors.take(&format!("{path}.permissions[{i}]"), perm(x)))
                .collect();
            let principals = p
                .principals
                .iter()
                .enumerate()
                .filter_map(|(i, x)| errors.take(&format!("{path}.principals[{i}]"), id(x)))
                .collect();
            policies.push(Policy {
                name: name.clone(),
                permissions,
                principals,
            });
        }
        let action = rbac::Action::try_from(r.action).unwrap_or(rbac::Action::Allow);
        errors.finish(|| Rules {
            allow: action != rbac::Action::Deny,
            log: action == rbac::Action::Log,
            policies,
        })
    }

    /// Whether `c` may go on, and the policy that decided it (the first matching one, by
    /// name, as Envoy's engine finds it), if any.
    fn decide(&self, c: &Connection<'_>) -> (bool, Option<&str>) {
        let matched = self.policies.iter().find(|p| {
            p.permissions.iter().any(|x| x.matches(c)) && p.principals.iter().any(|x| x.matches(c))
        });
        let allowed = self.log || matched.is_some() == self.allow;
        (allowed, matched.map(|p| p.name.as_str()))
    }
}

fn unsupported<T>(what: &str) -> Compiled<T> {
    Err(vec![ConfigError::new(
        "",
        format!("{what} is not supported by Legate's network RBAC filter"),
    )])
}

fn cidr(r: &legate_api::pb::envoy::config::core::v3::CidrRange) -> Compiled<Cidr> {
    Cidr::compile(r).map_err(|e| vec![ConfigError::new("", e)])
}

fn perm(p: &Permission) -> Compiled<Perm> {
    use permission::Rule;
    let set = |rules: &[Permission], field: &str| -> Compiled<Vec<Perm>> {
        let mut errors = Errors::default();
        let out = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| errors.take(&format!("{field}.rules[{i}]"), perm(r)))
            .collect();
        errors.finish(|| out)
    };
    #[allow(deprecated)]
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Perm::Any,
        Some(Rule::AndRules(s)) => Perm::And(set(&s.rules, "and_rules")?),
        Some(Rule::OrRules(s)) => Perm::Or(set(&s.rules, "or_rules")?),
        Some(Rule::NotRule(r)) => Perm::Not(Box::new(perm(r).map_err(|e| within(e, "not_rule"))?)),
        Some(Rule::DestinationIp(r)) => {
            Perm::DestinationIp(cidr(r).map_err(|e| within(e, "destination_ip"))?)
        }
        Some(Rule::DestinationPort(port)) => Perm::DestinationPort(*port as u16),
        Some(Rule::DestinationPortRange(r)) => {
            Perm::DestinationPorts(i64::from(r.start), i64::from(r.end))
        }
        Some(Rule::RequestedServerName(m)) => Perm::ServerName(
            CompiledStringMatcher::compile(m).map_err(|e| within(e, "requested_server_name"))?,
        ),
        Some(Rule::Metadata(m)) => {
            Perm::Metadata(MetadataMatcher::compile(m).map_err(|e| within(e, "metadata"))?)
        }
        Some(Rule::Header(_)) => return unsupported("header"),
        Some(Rule::UrlPath(_)) => return unsupported("url_path"),
        None | Some(Rule::Any(false)) => {
            return Err(vec![ConfigError::new("", "a permission rule is required")]);
        }
        Some(_) => return unsupported("this permission"),
    })
}

fn id(p: &Principal) -> Compiled<Id> {
    use principal::Identifier;
    let set = |ids: &[Principal], field: &str| -> Compiled<Vec<Id>> {
        let mut errors = Errors::default();
        let out = ids
            .iter()
            .enumerate()
            .filter_map(|(i, r)| errors.take(&format!("{field}.ids[{i}]"), id(r)))
            .collect();
        errors.finish(|| out)
    };
    #[allow(deprecated)]
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Id::Any,
        Some(Identifier::AndIds(s)) => Id::And(set(&s.ids, "and_ids")?),
        Some(Identifier::OrIds(s)) => Id::Or(set(&s.ids, "or_ids")?),
        Some(Identifier::NotId(p)) => Id::Not(Box::new(id(p).map_err(|e| within(e, "not_id"))?)),
        Some(Identifier::RemoteIp(r)) => Id::RemoteIp(cidr(r).map_err(|e| within(e, "remote_ip"))?),
        Some(Identifier::SourceIp(r)) => {
            Id::DirectRemoteIp(cidr(r).map_err(|e| within(e, "source_ip"))?)
        }
        Some(Identifier::DirectRemoteIp(r)) => {
            Id::DirectRemoteIp(cidr(r).map_err(|e| within(e, "direct_remote_ip"))?)
        }
        Some(Identifier::Metadata(m)) => {
            Id::Metadata(MetadataMatcher::compile(m).map_err(|e| within(e, "metadata"))?)
        }
        None | Some(Identifier::Any(false)) => {
            return Err(vec![ConfigError::new(
                "",
                "a principal identifier is required",
            )]);
        }
        Some(_) => return unsupported("this principal"),
    })
}

/// A compiled network RBAC filter.
#[derive(Debug)]
pub struct NetworkRbacConfig {
    pub stat_prefix: String,
    shadow_stat_prefix: String,
    rules: Option<Rules>,
    shadow: Option<Rules>,
}

impl NetworkRbacConfig {
    pub fn compile(r: &Rbac) -> Compiled<NetworkRbacConfig> {
        let mut errors = Errors::default();
        if r.matcher.is_some() || r.shadow_matcher.is_some() {
            errors.push(
                "matcher",
                "RBAC matchers are not supported by Legate (rules are)",
            );
        }
        if r.delay_deny.is_some() {
            errors.push("delay_deny", "delay_deny is not supported by Legate");
        }
        let rules = r
            .rules
            .as_ref()
            .and_then(|x| errors.take("rules", Rules::compile(x)));
        let shadow = r
            .shadow_rules
            .as_ref()
            .and_then(|x| errors.take("shadow_rules", Rules::compile(x)));
        errors.finish(|| NetworkRbacConfig {
            stat_prefix: r.stat_prefix.clone(),
            shadow_stat_prefix: r.shadow_rules_stat_prefix.clone(),
            rules,
            shadow,
        })
    }
}

/// A network RBAC filter with its stats.
#[derive(Debug)]
pub struct NetworkRbac {
    config: std::sync::Arc<NetworkRbacConfig>,
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
}

impl NetworkRbac {
    pub fn new(config: std::sync::Arc<NetworkRbacConfig>, root: &Scope) -> Self {
        let scope = root.scope(&format!("{}rbac.", config.stat_prefix));
        let shadow = scope.scope(&config.shadow_stat_prefix);
        NetworkRbac {
            allowed: scope.counter("allowed"),
            denied: scope.counter("denied"),
            shadow_allowed: shadow.counter("shadow_allowed"),
            shadow_denied: shadow.counter("shadow_denied"),
            config,
        }
    }

    /// Whether `c` may go on; counts the decision (and the shadow rules').
    pub fn check(&self, c: &Connection<'_>) -> Verdict<'_> {
        let shadow = self.config.shadow.as_ref().map(|shadow| {
            let (allowed, policy) = shadow.decide(c);
            if allowed {
                self.shadow_allowed.inc();
            } else {
                self.shadow_denied.inc();
            }
            (allowed, policy)
        });
        let allowed = self.config.rules.as_ref().is_none_or(|r| r.decide(c).0);
        if allowed {
            self.allowed.inc();
        } else {
            self.denied.inc();
        }
        Verdict { allowed, shadow }
    }

    /// Writes the shadow rules' verdict into the connection's dynamic metadata, as Envoy does:
    /// under `envoy.filters.network.rbac`, `<shadow_rules_stat_prefix>shadow_engine_result`
    /// (`allowed` or `denied`) and, when a policy matched, `...shadow_effective_policy_id`.
    pub fn record(&self, verdict: &Verdict<'_>, metadata: &mut DynamicMetadata) {
        let Some((allowed, policy)) = verdict.shadow else {
            return;
        };
        let prefix = &self.config.shadow_stat_prefix;
        if let Some(policy) = policy {
            metadata.insert(
                METADATA_NAMESPACE,
                &format!("{prefix}shadow_effective_policy_id"),
                policy.to_owned(),
            );
        }
        let result = if allowed { "allowed" } else { "denied" };
        metadata.insert(
            METADATA_NAMESPACE,
            &format!("{prefix}shadow_engine_result"),
            result.to_owned(),
        );
    }
}

/// The namespace of the metadata the filter sets.
pub const METADATA_NAMESPACE: &str = "envoy.filters.network.rbac";

/// What a network RBAC filter decided about a connection.
#[derive(Debug)]
pub struct Verdict<'a> {
    pub allowed: bool,
    /// The shadow rules' decision and the policy that made it, when there are shadow rules.
    shadow: Option<(bool, Option<&'a str>)>,
}

impl Verdict<'_> {
    /// Whether [`NetworkRbac::record`] has something to write.
    pub fn has_metadata(&self) -> bool {
        self.shadow.is_some()
    }
}
