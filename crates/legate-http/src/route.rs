//! `envoy.config.route.v3.RouteConfiguration` -> [`RouteTable`]: virtual hosts indexed for
//! Envoy's domain precedence, routes with compiled matchers, header mutations, and the checks
//! Envoy applies when it loads a route table.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{
    HeaderValueOption, data_source, header_value_option::HeaderAppendAction,
};
use legate_api::pb::envoy::config::route::v3::{
    self as rp, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, route, route_action,
    route_match,
};
use legate_core::matcher::{CompiledStringMatcher, regex_matcher};
use legate_core::proto::{bool_or, duration, u32_or};
use legate_core::{Compiled, Errors, within};
use regex::Regex;

/// Envoy's default limit on an inline `direct_response` body (`max_direct_response_body_size_bytes`).
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;
/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    /// `internal_only_headers`: removed from requests that are not internal.
    pub internal_only_headers: Vec<http::HeaderName>,
    pub ignore_port_in_host_matching: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query_parameters: Vec<QueryMatch>,
    pub grpc: bool,
    /// Boxed, as what few routes have: a route counts ten thousand times in large configurations.
    pub runtime_fraction: Option<Box<RuntimeFraction>>,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
}

/// `RouteMatch.runtime_fraction`. Kept as numerator over the configured denominator because a
/// runtime override given as a bare integer is read over the *default's* denominator (Envoy's
/// `featureEnabled(key, FractionalPercent, random)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFraction {
    pub runtime_key: String,
    pub numerator: u64,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u64,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(Box<legate_core::matcher::FullMatchRegex>),
    /// `path_separated_prefix`: the prefix, then end of path, `/` or `?`.
    SeparatedPrefix(String),
}

/// The part of `:path` that a `prefix_rewrite` replaces (Envoy's `matched_path`): the configured
/// prefix or path (its length; case folding keeps it), or for a `safe_regex` route the whole
/// path before `?`/`#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatchedPart {
    Len(usize),
    #[default]
    WholePath,
}

impl MatchedPart {
    fn of(path: &PathMatch) -> MatchedPart {
        match path {
            PathMatch::Prefix(p) | PathMatch::Path(p) | PathMatch::SeparatedPrefix(p) => {
                MatchedPart::Len(p.len())
            }
            PathMatch::Regex(_) => MatchedPart::WholePath,
        }
    }
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: String,
    /// Where the value is read from, resolved once here.
    pub key: HeaderKey,
    pub rule: HeaderRule,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// The source of a header matcher's value. Envoy keeps pseudo-headers in the same map as the
/// others and stores the HTTP/1 `Host` header as `:authority`, so a matcher on `host` sees the
/// authority (checked against Envoy 1.40); `http::HeaderMap` holds neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Authority,
    Path,
    Method,
    Scheme,
    Named(HeaderName),
    /// A name no request can carry (another pseudo-header, or not a valid header name).
    Absent,
}

impl HeaderKey {
    pub fn from_name(name: &str) -> HeaderKey {
        match name {
            ":authority" | "host" => HeaderKey::Authority,
            ":path" => HeaderKey::Path,
            ":method" => HeaderKey::Method,
            ":scheme" => HeaderKey::Scheme,
            _ => HeaderName::from_bytes(name.as_bytes())
                .map(HeaderKey::Named)
                .unwrap_or(HeaderKey::Absent),
        }
    }
}

#[derive(Debug)]
pub enum HeaderRule {
    /// `present_match` (and a matcher with no specifier, which is `present_match: true`).
    Present(bool),
    /// The deprecated `exact_match: ""`, which Envoy treats as "any value".
    AnyValue,
    Range {
        start: i64,
        end: i64,
    },
    String(CompiledStringMatcher),
}

#[derive(Debug)]
pub struct QueryMatch {
    pub name: String,
    pub rule: QueryRule,
}

#[derive(Debug)]
pub enum QueryRule {
    /// `present_match` (or no specifier, meaning `true`): `false` requires the parameter to be
    /// absent (checked against Envoy 1.40).
    Present(bool),
    String(CompiledStringMatcher),
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Vec<u8> },
}

#[derive(Debug)]
pub enum ClusterTarget {
    Named(String),
    /// `cluster_header`: the cluster is named by this request header.
    Header(String),
    /// `weighted_clusters`, with the sum of the weights (never 0: refused at load).
    Weighted {
        clusters: Vec<ClusterWeight>,
        total_weight: u64,
    },
}

/// `WeightedCluster.ClusterWeight`.
#[derive(Debug)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: u32,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
}

#[derive(Debug)]
pub struct Forward {
    pub target: ClusterTarget,
    pub prefix_rewrite: Option<String>,
    /// What `prefix_rewrite` replaces, from the route's path matcher.
    pub matched: MatchedPart,
    pub regex_rewrite: Option<Box<(Regex, String)>>,
    pub host_rewrite: HostRewrite,
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// `upgrade_configs` per route: (upgrade type, enabled).
    pub upgrades: Vec<(String, bool)>,
    /// `cluster_not_found_response_code`: 503 by default, 404 or 500.
    pub cluster_not_found_status: u16,
    /// `hash_policy`: the key RING_HASH and MAGLEV clusters balance on.
    pub hash_policy: Option<crate::hash_policy::HashPolicy>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HostRewrite {
    None,
    Literal(String),
    Auto,
    Header(String),
}

#[derive(Debug)]
pub struct Redirect {
    /// `scheme_redirect` as written (Envoy does not lowercase it), or `https` for
    /// `https_redirect`.
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    /// What `prefix_rewrite` replaces, from the route's path matcher.
    pub matched: MatchedPart,
    pub regex_rewrite: Option<Box<(Regex, String)>>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug, Default)]
pub struct HeaderMutations {
    pub add: Box<[HeaderAdd]>,
    pub remove: Box<[HeaderName]>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug)]
pub struct HeaderAdd {
    pub name: HeaderName,
    /// The value as configured; `%VARIABLE%`s are expanded per request.
    pub value: String,
    /// The value ready to insert when it has no `%` (nothing to expand).
    pub literal: Option<HeaderValue>,
    /// The value's `%VARIABLE%`s, compiled once (when it has any).
    pub formatter: Option<legate_core::format::Formatter>,
    pub action: HeaderAppendAction,
    pub keep_empty_value: bool,
}

/// Virtual hosts by domain, in Envoy's precedence: exact, then the longest suffix wildcard
/// (`*.foo.com`), then the longest prefix wildcard (`foo.*`), then `*`.
#[derive(Debug, Default)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// (suffix without `*`, vhost), longest first.
    suffix: Vec<(String, usize)>,
    /// (prefix without `*`, vhost), longest first.
    prefix: Vec<(String, usize)>,
    default: Option<usize>,
}

impl DomainIndex {
    fn find(&self, host: &str) -> Option<usize> {
        if self.exact.is_empty() && self.suffix.is_empty() && self.prefix.is_empty() {
            // `domains: ["*"]` alone: nothing to compare.
            return self.default;
        }
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // A wildcard never matches an empty remainder: `*-bar.foo.com` misses `-bar.foo.com`.
        let by_suffix = self
            .suffix
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()));
        if let Some(&(_, i)) = by_suffix {
            return Some(i);
        }
        let by_prefix = self
            .prefix
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()));
        by_prefix.map(|&(_, i)| i).or(self.default)
    }
}

impl RouteTable {
    /// The virtual host for an `:authority`, as Envoy picks it.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            strip_port(authority)
        } else {
            authority
        };
        self.domains.find(host).map(|i| &self.virtual_hosts[i])
    }

    /// Every cluster name a route refers to statically, with the path of the reference.
    pub fn referenced_clusters(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (v, vh) in self.virtual_hosts.iter().enumerate() {
            for (r, route) in vh.routes.iter().enumerate() {
                let Action::Forward(f) = &route.action else {
                    continue;
                };
                let path = format!("virtual_hosts[{v}].routes[{r}].route");
                match &f.target {
                    ClusterTarget::Named(c) => out.push((format!("{path}.cluster"), c.as_str())),
                    ClusterTarget::Weighted { clusters, .. } => {
                        out.extend(clusters.iter().enumerate().map(|(i, c)| {
                            (
                                format!("{path}.weighted_clusters.clusters[{i}]"),
                                c.name.as_str(),
                            )
                        }))
                    }
                    ClusterTarget::Header(_) => {}
                }
            }
        }
        out
    }

    /// A route table from a `RouteConfiguration` written in YAML, read and checked as the
    /// proxy reads configuration (for tests, benchmarks and tools).
    pub fn from_yaml(yaml: &str) -> Result<RouteTable, String> {
        let desc = legate_api::descriptors::pool()
            .get_message_by_name("envoy.config.route.v3.RouteConfiguration")
            .ok_or("no descriptor for RouteConfiguration")?;
        let message = legate_api::load::parse(&desc, legate_api::Format::Yaml, yaml.as_bytes())
            .map_err(|e| format!("{e:?}"))?;
        let rc: rp::RouteConfiguration = message.transcode_to().map_err(|e| e.to_string())?;
        RouteTable::compile(&rc).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    pub fn compile(rc: &rp::RouteConfiguration) -> Compiled<RouteTable> {
        let mut errors = Errors::default();
        let max_body = u32_or(
            rc.max_direct_response_body_size_bytes.as_ref(),
            DEFAULT_MAX_DIRECT_RESPONSE_BODY,
        );
        let mut domains = DomainIndex::default();
        let mut seen_domains = HashSet::new();
        let wildcards = rc
            .virtual_hosts
            .iter()
            .flat_map(|vh| &vh.domains)
            .filter(|d| *d == "*")
            .count();
        if wildcards > 1 {
            errors.push(
                "virtual_hosts",
                format!(
                    "Only a single wildcard domain is permitted in route {}",
                    rc.name
                ),
            );
        }
        let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let path = format!("virtual_hosts[{i}]");
            for (d, domain) in vh.domains.iter().enumerate() {
                let domain = domain.to_ascii_lowercase();
                if !seen_domains.insert(domain.clone()) {
                    if domain == "*" {
                        continue; // Reported above, as Envoy does.
                    }
                    errors.push(&format!("{path}.domains[{d}]"), format!(
                        "Only unique values for domains are permitted. Duplicate entry of domain {domain} in route {}",
                        rc.name
                    ));
                    continue;
                }
                if domain == "*" {
                    domains.default = Some(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    domains.suffix.push((suffix.to_owned(), i));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    domains.prefix.push((prefix.to_owned(), i));
                } else {
                    domains.exact.insert(domain, i);
                }
            }
            if let Some(vh) = errors.take(&path, compile_virtual_host(vh, max_body)) {
                virtual_hosts.push(vh);
            }
        }
        domains.suffix.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        domains.prefix.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        let request_headers = errors
            .take(
                "",
                header_mutations(
                    &rc.request_headers_to_add,
                    &rc.request_headers_to_remove,
                    "request_headers_to",
                ),
            )
            .unwrap_or_default();
        let response_headers = errors
            .take(
                "",
                header_mutations(
                    &rc.response_headers_to_add,
                    &rc.response_headers_to_remove,
                    "response_headers_to",
                ),
            )
            .unwrap_or_default();
        let mut internal_only_headers = Vec::new();
        for (i, name) in rc.internal_only_headers.iter().enumerate() {
            match http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(h) => internal_only_headers.push(h),
                Err(_) => errors.push(
                    &format!("internal_only_headers[{i}]"),
                    format!("invalid header name '{name}'"),
                ),
            }
        }
        errors.finish(|| RouteTable {
            internal_only_headers,
            name: rc.name.clone(),
            virtual_hosts,
            domains,
            request_headers,
            response_headers,
            most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
            ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        })
    }
}

fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority[..i].ends_with(':') =>
        {
            &authority[..i]
        }
        _ => authority,
    }
}

fn compile_virtual_host(vh: &rp::VirtualHost, max_body: u32) -> Compiled<VirtualHost> {
    let mut errors = Errors::default();
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        if let Some(r) = errors.take(&format!("routes[{i}]"), compile_route(r, max_body)) {
            routes.push(r);
        }
    }
    let request_headers = errors
        .take(
            "",
            header_mutations(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                "request_headers_to",
            ),
        )
        .unwrap_or_default();
    let response_headers = errors
        .take(
            "",
            header_mutations(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                "response_headers_to",
            ),
        )
        .unwrap_or_default();
    errors.finish(|| VirtualHost {
        name: vh.name.clone(),
        routes,
        request_headers,
        response_headers,
    })
}

fn compile_route(r: &rp::Route, max_body: u32) -> Compiled<Route> {
    let mut errors = Errors::default();
    let m = r.r#match.clone().unwrap_or_default();
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Path(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(re)) => {
            match errors.take("match.safe_regex", regex_matcher(re)) {
                Some(re) => PathMatch::Regex(Box::new(re)),
                None => PathMatch::Prefix(String::new()),
            }
        }
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => {
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(_) => {
            errors.push("match", "this path specifier is not supported by Legate");
            PathMatch::Prefix(String::new())
        }
        None => {
            errors.push("match.path_specifier", "value is required");
            PathMatch::Prefix(String::new())
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        if let Some(h) = errors.take(&format!("match.headers[{i}]"), header_match(h)) {
            headers.push(h);
        }
    }
    let mut query_parameters = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        let path = format!("match.query_parameters[{i}]");
        let rule = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                match errors.take(
                    &format!("{path}.string_match"),
                    CompiledStringMatcher::compile(s),
                ) {
                    Some(m) => QueryRule::String(m),
                    None => continue,
                }
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(p)) => QueryRule::Present(*p),
            None => QueryRule::Present(true),
        };
        query_parameters.push(QueryMatch {
            name: q.name.clone(),
            rule,
        });
    }
    let runtime_fraction = m.runtime_fraction.as_ref().map(|rf| {
        let pct = rf.default_value.unwrap_or_default();
        // HUNDRED = 0, TEN_THOUSAND = 1, MILLION = 2. A numerator above the denominator is not
        // clamped: Envoy then always matches.
        let denominator = match pct.denominator {
            0 => 100,
            1 => 10_000,
            _ => 1_000_000,
        };
        Box::new(RuntimeFraction {
            runtime_key: rf.runtime_key.clone(),
            numerator: u64::from(pct.numerator),
            denominator,
        })
    });
    let matched = MatchedPart::of(&path);
    let action = match &r.action {
        Some(route::Action::Route(a)) => errors
            .take("route", forward(a, &r.name))
            .map(|f| Action::Forward(Forward { matched, ..f })),
        Some(route::Action::Redirect(a)) => errors
            .take("redirect", redirect(a))
            .map(|r| Action::Redirect(Redirect { matched, ..r })),
        Some(route::Action::DirectResponse(d)) => {
            errors.take("direct_response", direct_response(d, max_body))
        }
        Some(_) => {
            errors.push("", "this route action is not supported by Legate");
            None
        }
        None => {
            errors.push("action", "value is required");
            None
        }
    };
    let request_headers = errors
        .take(
            "",
            header_mutations(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                "request_headers_to",
            ),
        )
        .unwrap_or_default();
    let response_headers = errors
        .take(
            "",
            header_mutations(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                "response_headers_to",
            ),
        )
        .unwrap_or_default();
    let Some(action) = action else {
        return Err(errors.0);
    };
    errors.finish(|| Route {
        name: r.name.clone(),
        path,
        case_sensitive: bool_or(m.case_sensitive.as_ref(), true),
        headers,
        query_parameters,
        grpc: m.grpc.is_some(),
        runtime_fraction,
        action,
        request_headers,
        response_headers,
    })
}

#[allow(deprecated)] // exact_match, prefix_match, ...: deprecated but still honoured by Envoy.
fn header_match(h: &rp::HeaderMatcher) -> Compiled<HeaderMatch> {
    use legate_api::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
    let string = |p: MatchPattern| StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    };
    let rule = match &h.header_match_specifier {
        None => HeaderRule::Present(true),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderRule::Present(*p),
        Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderRule::Range {
            start: r.start,
            end: r.end,
        },
        Some(HeaderMatchSpecifier::StringMatch(s)) => HeaderRule::String(
            CompiledStringMatcher::compile(s).map_err(|e| within(e, "string_match"))?,
        ),
        // The deprecated `exact_match` with an empty value accepts any value.
        Some(HeaderMatchSpecifier::ExactMatch(s)) if s.is_empty() => HeaderRule::AnyValue,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => HeaderRule::String(
            CompiledStringMatcher::compile(&string(MatchPattern::Exact(s.clone())))?,
        ),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => HeaderRule::String(
            CompiledStringMatcher::compile(&string(MatchPattern::Prefix(s.clone())))?,
        ),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => HeaderRule::String(
            CompiledStringMatcher::compile(&string(MatchPattern::Suffix(s.clone())))?,
        ),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => HeaderRule::String(
            CompiledStringMatcher::compile(&string(MatchPattern::Contains(s.clone())))?,
        ),
        Some(HeaderMatchSpecifier::SafeRegexMatch(re)) => HeaderRule::String(
            CompiledStringMatcher::compile(&string(MatchPattern::SafeRegex(re.clone())))
                .map_err(|e| within(e, "safe_regex_match"))?,
        ),
    };
    let name = h.name.to_ascii_lowercase();
    Ok(HeaderMatch {
        key: HeaderKey::from_name(&name),
        name,
        rule,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

pub(crate) fn rewrite(
    r: &legate_api::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
) -> Compiled<(Regex, String)> {
    let pattern = r
        .pattern
        .as_ref()
        .map(|p| p.regex.as_str())
        .unwrap_or_default();
    // Rewrites substitute within the path: the pattern is not anchored.
    let re = Regex::new(pattern).map_err(|e| {
        vec![legate_core::ConfigError::new(
            "pattern.regex",
            format!("invalid regex '{pattern}': {e}"),
        )]
    })?;
    Ok((re, re2_substitution(&r.substitution)))
}

/// Translates an RE2 rewrite string (`\1` for a group, `\\` for a backslash, `$` literal) into
/// the `regex` crate's replacement syntax (`${1}`, `$$`). RE2 refuses other escapes and Envoy
/// then leaves the path unchanged; here the escaped character is kept literally.
pub(crate) fn re2_substitution(substitution: &str) -> String {
    let mut out = String::with_capacity(substitution.len() + 8);
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[allow(deprecated)]
fn forward(a: &rp::RouteAction, route_name: &str) -> Compiled<Forward> {
    let mut errors = Errors::default();
    let target = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => ClusterTarget::Named(c.clone()),
        Some(route_action::ClusterSpecifier::ClusterHeader(h)) => {
            ClusterTarget::Header(h.to_ascii_lowercase())
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let path = format!("weighted_clusters.clusters[{i}]");
                let request_headers = errors
                    .take(
                        &path,
                        header_mutations(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            "request_headers_to",
                        ),
                    )
                    .unwrap_or_default();
                let response_headers = errors
                    .take(
                        &path,
                        header_mutations(
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                            "response_headers_to",
                        ),
                    )
                    .unwrap_or_default();
                clusters.push(ClusterWeight {
                    name: c.name.clone(),
                    weight: u32_or(c.weight.as_ref(), 0),
                    request_headers,
                    response_headers,
                });
            }
            let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                errors.push(
                    "weighted_clusters",
                    "Sum of weights in the weighted_cluster must be greater than 0.",
                );
            } else if total > u64::from(u32::MAX) {
                errors.push("weighted_clusters", format!(
                    "The sum of weights of all weighted clusters of route {route_name} exceeds {}",
                    u32::MAX
                ));
            }
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    errors.push(
                        &format!("weighted_clusters.clusters[{i}]"),
                        "a cluster name is required (cluster_header is not supported by Legate)",
                    );
                }
            }
            ClusterTarget::Weighted {
                clusters,
                total_weight: total,
            }
        }
        _ => {
            errors.push("cluster_specifier", "value is required");
            ClusterTarget::Named(String::new())
        }
    };
    if !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_some() {
        errors.push("", "Cannot specify both prefix_rewrite and regex_rewrite");
    }
    let regex_rewrite = a
        .regex_rewrite
        .as_ref()
        .and_then(|r| errors.take("regex_rewrite", rewrite(r)))
        .map(Box::new);
    let host_rewrite = match &a.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            HostRewrite::Literal(h.clone())
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if b.value => {
            HostRewrite::Auto
        }
        Some(route_action::HostRewriteSpecifier::HostRewriteHeader(h)) => {
            HostRewrite::Header(h.to_ascii_lowercase())
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(_)) | None => HostRewrite::None,
        Some(_) => {
            errors.push(
                "host_rewrite_specifier",
                "this host rewrite is not supported by Legate",
            );
            HostRewrite::None
        }
    };
    let upgrades = a
        .upgrade_configs
        .iter()
        .map(|u| {
            (
                u.upgrade_type.to_ascii_lowercase(),
                bool_or(u.enabled.as_ref(), true),
            )
        })
        .collect();
    let hash_policy = errors
        .take("", crate::hash_policy::HashPolicy::compile(&a.hash_policy))
        .flatten();
    errors.finish(|| Forward {
        hash_policy,
        target,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        matched: MatchedPart::default(),
        regex_rewrite,
        host_rewrite,
        timeout: a.timeout.as_ref().map_or(DEFAULT_ROUTE_TIMEOUT, duration),
        idle_timeout: a.idle_timeout.as_ref().map(duration),
        upgrades,
        // SERVICE_UNAVAILABLE = 0, NOT_FOUND = 1, INTERNAL_SERVER_ERROR = 2.
        cluster_not_found_status: match a.cluster_not_found_response_code {
            1 => 404,
            2 => 500,
            _ => 503,
        },
    })
}

fn redirect(a: &rp::RedirectAction) -> Compiled<Redirect> {
    let mut errors = Errors::default();
    let scheme = match &a.scheme_rewrite_specifier {
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => {
            Some("https".to_owned())
        }
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            Some(s.clone())
        }
        _ => None,
    };
    let (path, prefix_rewrite, regex_rewrite) = match &a.path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => {
            (Some(p.clone()), None, None)
        }
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => {
            (None, Some(p.clone()), None)
        }
        Some(redirect_action::PathRewriteSpecifier::RegexRewrite(r)) => {
            let rewrite = errors.take("regex_rewrite", rewrite(r));
            (None, None, rewrite.map(Box::new))
        }
        _ => (None, None, None),
    };
    // MOVED_PERMANENTLY, FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT.
    let status = [301, 302, 303, 307, 308]
        .get(a.response_code as usize)
        .copied()
        .unwrap_or(301);
    errors.finish(|| Redirect {
        scheme,
        host: (!a.host_redirect.is_empty()).then(|| a.host_redirect.clone()),
        port: (a.port_redirect != 0).then_some(a.port_redirect),
        path,
        prefix_rewrite,
        matched: MatchedPart::default(),
        regex_rewrite,
        status,
        strip_query: a.strip_query,
    })
}

fn direct_response(d: &rp::DirectResponseAction, max_body: u32) -> Compiled<Action> {
    let mut errors = Errors::default();
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => Vec::new(),
        Some(data_source::Specifier::InlineString(s)) => s.clone().into_bytes(),
        Some(data_source::Specifier::InlineBytes(b)) => b.clone(),
        Some(data_source::Specifier::Filename(f)) => match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                errors.push("body.filename", format!("unable to read file: {f}: {e}"));
                Vec::new()
            }
        },
        Some(data_source::Specifier::EnvironmentVariable(v)) => match std::env::var(v) {
            Ok(s) => s.into_bytes(),
            Err(_) => {
                errors.push(
                    "body.environment_variable",
                    format!("Environment variable doesn't exist: {v}"),
                );
                Vec::new()
            }
        },
    };
    if body.len() > max_body as usize {
        errors.push(
            "body",
            format!(
                "response body size is {} bytes; maximum is {max_body}",
                body.len()
            ),
        );
    }
    errors.finish(|| Action::Direct {
        status: d.status as u16,
        body,
    })
}

/// Envoy refuses to add or remove pseudo-headers and `host` through header mutations.
fn is_protected_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

#[allow(deprecated)] // `append` is deprecated in favour of `append_action`, and still honoured.
pub(crate) fn header_mutations(
    add: &[HeaderValueOption],
    remove: &[String],
    field: &str,
) -> Compiled<HeaderMutations> {
    let mut errors = Errors::default();
    let (mut add_out, mut remove_out) = (Vec::new(), Vec::new());
    for (i, h) in add.iter().enumerate() {
        let path = format!("{field}_add[{i}]");
        let header = h.header.clone().unwrap_or_default();
        if is_protected_header(&header.key) {
            errors.push(
                &format!("{path}.header.key"),
                ":-prefixed or host headers may not be modified",
            );
            continue;
        }
        if h.append.is_some() && h.append_action != 0 {
            errors.push(
                &path,
                "Both append and append_action are set and it's not allowed",
            );
            continue;
        }
        let action = match h.append.as_ref() {
            Some(append) if !append.value => HeaderAppendAction::OverwriteIfExistsOrAdd,
            Some(_) => HeaderAppendAction::AppendIfExistsOrAdd,
            None => HeaderAppendAction::try_from(h.append_action)
                .unwrap_or(HeaderAppendAction::AppendIfExistsOrAdd),
        };
        let value = if header.raw_value.is_empty() {
            header.value
        } else {
            String::from_utf8_lossy(&header.raw_value).into_owned()
        };
        let Ok(name) = HeaderName::from_bytes(header.key.to_ascii_lowercase().as_bytes()) else {
            errors.push(
                &format!("{path}.header.key"),
                format!("invalid header name '{}'", header.key),
            );
            continue;
        };
        // A value with no `%` has nothing to expand: build the header value once, here.
        let mut formatter = None;
        let literal = if value.contains('%') {
            match legate_core::format::Formatter::parse(&value) {
                Ok(f) => formatter = Some(f),
                Err(e) => {
                    errors.push(&format!("{path}.header.value"), e);
                    continue;
                }
            }
            None
        } else {
            match HeaderValue::from_str(&value) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(
                        &format!("{path}.header.value"),
                        format!("invalid header value '{value}'"),
                    );
                    continue;
                }
            }
        };
        add_out.push(HeaderAdd {
            name,
            literal,
            formatter,
            value,
            action,
            keep_empty_value: h.keep_empty_value,
        });
    }
    for (i, name) in remove.iter().enumerate() {
        if is_protected_header(name) {
            errors.push(
                &format!("{field}_remove[{i}]"),
                ":-prefixed or host headers may not be removed",
            );
            continue;
        }
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Ok(name) => remove_out.push(name),
            Err(_) => errors.push(
                &format!("{field}_remove[{i}]"),
                format!("invalid header name '{name}'"),
            ),
        }
    }
    errors.finish(|| HeaderMutations {
        add: add_out.into(),
        remove: remove_out.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route is kept ten thousand times in large configurations: what few routes set is
    /// boxed. A field added here must be worth ~10 bytes x 10,000.
    #[test]
    fn a_route_keeps_its_size() {
        assert!(
            std::mem::size_of::<Route>() <= 384,
            "{}",
            std::mem::size_of::<Route>()
        );
    }

    fn table(domains: &[&[&str]]) -> RouteTable {
        let rc = rp::RouteConfiguration {
            virtual_hosts: domains
                .iter()
                .enumerate()
                .map(|(i, d)| rp::VirtualHost {
                    name: format!("vh{i}"),
                    domains: d.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        RouteTable::compile(&rc).unwrap()
    }

    #[test]
    fn domain_precedence_follows_envoy() {
        let t = table(&[
            &["*"],
            &["foo.*"],
            &["*.foo.com"],
            &["www.foo.com"],
            &["*-bar.foo.com"],
            &["foo.bar.*"],
        ]);
        let pick = |h: &str| t.virtual_host(h).map(|v| v.name.clone()).unwrap();
        assert_eq!(pick("www.foo.com"), "vh3");
        assert_eq!(pick("WWW.FOO.COM"), "vh3");
        assert_eq!(pick("a.foo.com"), "vh2");
        assert_eq!(pick("x-bar.foo.com"), "vh4", "the longest suffix wins");
        assert_eq!(
            pick("-bar.foo.com"),
            "vh2",
            "a wildcard never matches the empty string"
        );
        assert_eq!(pick("foo.bar.baz"), "vh5", "the longest prefix wins");
        assert_eq!(pick("foo.x"), "vh1");
        assert_eq!(pick("other"), "vh0");
    }

    #[test]
    fn duplicate_domains_are_refused() {
        let vh = |name: &str, domain: &str| rp::VirtualHost {
            name: name.into(),
            domains: vec![domain.into()],
            ..Default::default()
        };
        let rc = |domain: &str| rp::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![vh("a", domain), vh("b", domain)],
            ..Default::default()
        };
        let errors = RouteTable::compile(&rc("x.com")).unwrap_err();
        assert_eq!(errors[0].path, "virtual_hosts[1].domains[0]");
        assert!(
            errors[0]
                .message
                .contains("Duplicate entry of domain x.com")
        );
        let errors = RouteTable::compile(&rc("*")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].message,
            "Only a single wildcard domain is permitted in route r"
        );
    }
}
