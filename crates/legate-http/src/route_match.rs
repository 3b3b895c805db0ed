//! Route selection for one request: the virtual host by `:authority`, then the first route whose
//! every criterion matches, then the cluster its action names (a fixed name, a request header,
//! or a weighted pick). This is the request-time half of [`crate::route`]; nothing here
//! allocates unless a header is not valid UTF-8.
//!
//! Envoy's semantics (`source/common/router/config_impl.cc`, `header_utility`, checked against
//! Envoy 1.40 where the source left doubt):
//! * `prefix`, `path` and `safe_regex` all see `:path` with the query and fragment removed (Envoy's
//!   `PathMatcher` strips them for every kind), so a prefix containing `?` never matches.
//!   `path_separated_prefix` additionally needs the end of the path or `/` after the prefix.
//!   `case_sensitive: false` folds ASCII case; it does not apply to `safe_regex`.
//! * A header matcher reads pseudo-headers (`:authority`, `:path`, `:method`, `:scheme`) from the
//!   request line, and `host` is the authority (Envoy stores `Host` as `:authority`). With several
//!   values, the matcher succeeds if any one value matches, and `invert_match` negates that
//!   (Envoy 1.40 no longer joins the values with `,`). A missing header fails every matcher
//!   except `present_match` (and `invert_match` does not rescue it) unless
//!   `treat_missing_header_as_empty` is set.
//! * Query parameters are split on `&` and `=` and compared raw (not percent-decoded); the first
//!   occurrence of a name counts; `present_match: false` requires the parameter to be absent.
//! * `grpc` needs `content-type` to be exactly `application/grpc` or to start with
//!   `application/grpc+`.
//! * `runtime_fraction` is `runtime.feature_enabled(key, numerator, denominator, random)`, with
//!   the same per-request random value that picks a weighted cluster (Envoy uses the stream id).

use http::HeaderMap;
use legate_core::runtime::Snapshot;

use crate::route::{
    Action, ClusterTarget, ClusterWeight, Forward, HeaderKey, HeaderMatch, HeaderRule, PathMatch,
    QueryMatch, QueryRule, Redirect, Route, RouteTable, VirtualHost,
};

/// What routing needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    pub method: &'a str,
    /// `:path` as received, query included. Empty when the request has no path (HTTP/1 CONNECT):
    /// then no route matches, as in Envoy without a connect matcher.
    pub path: &'a str,
    /// `path` without its query and fragment: what path matchers compare, cut once here
    /// rather than by each of a table's routes.
    pub path_only: &'a str,
    /// `:authority` (or `Host`).
    pub authority: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    /// Whether `content-type` marks a gRPC request (see [`is_grpc_request`]).
    pub grpc: bool,
}

impl<'a> RouteRequest<'a> {
    pub fn new(
        method: &'a str,
        path: &'a str,
        authority: &'a str,
        scheme: &'a str,
        headers: &'a HeaderMap,
    ) -> Self {
        RouteRequest {
            method,
            path,
            path_only: strip_query_and_fragment(path),
            authority,
            scheme,
            headers,
            grpc: is_grpc_request(headers),
        }
    }
}

/// Envoy's `Grpc::Common::hasGrpcContentType`: `application/grpc` exactly, or followed by `+`
/// (so `application/grpc-web` and `application/grpc;...` are not gRPC). Case-sensitive.
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    match headers.get(http::header::CONTENT_TYPE) {
        Some(v) => {
            let v = v.as_bytes();
            v.starts_with(GRPC) && (v.len() == GRPC.len() || v[GRPC.len()] == b'+')
        }
        None => false,
    }
}

/// The outcome of routing a request.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    pub route_table: &'a RouteTable,
    pub virtual_host: &'a VirtualHost,
    pub route: &'a Route,
    pub action: SelectedAction<'a>,
}

/// What the router does with the selected route.
#[derive(Clone, Copy, Debug)]
pub enum SelectedAction<'a> {
    /// Proxy to `cluster`. `weighted` is the picked `ClusterWeight` for `weighted_clusters`, whose
    /// header mutations apply too (see [`Selected::request_mutations`]).
    Forward {
        forward: &'a Forward,
        cluster: ClusterName<'a>,
        weighted: Option<&'a ClusterWeight>,
    },
    /// `cluster_header` named no cluster (the header is missing or empty): Envoy answers with
    /// `cluster_not_found_response_code` and the `NC` response flag. The router must answer the
    /// same way when a named cluster does not exist.
    ClusterNotFound { forward: &'a Forward, status: u16 },
    /// Answer with a redirect; see [`crate::rewrite::redirect_location`].
    Redirect(&'a Redirect),
    /// `direct_response`. A 201 or 3xx also gets a `Location`: see
    /// [`crate::rewrite::direct_response_location`].
    Direct { status: u16, body: &'a [u8] },
}

/// The cluster a forwarding route names. A name read from a request header stays a header
/// name here, so that the selected route borrows only the route table and the request's
/// headers stay free to be rewritten; [`ClusterName::resolve`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterName<'a> {
    Static(&'a str),
    /// `cluster_header`: the (non-empty) first value of this request header.
    Header(&'a str),
}

impl<'a> ClusterName<'a> {
    /// The cluster's name, read from `headers` for `cluster_header`.
    pub fn resolve<'h>(&self, headers: &'h HeaderMap) -> std::borrow::Cow<'h, str>
    where
        'a: 'h,
    {
        match *self {
            ClusterName::Static(name) => std::borrow::Cow::Borrowed(name),
            ClusterName::Header(header) => std::borrow::Cow::Borrowed(
                headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
        }
    }
}

impl RouteTable {
    /// Envoy's `RouteMatcher::route`: the virtual host for the authority, then its first matching
    /// route. `random` is the request's random value (Envoy's stream id); the same value must be
    /// used for every evaluation of one request so that runtime fractions and weighted clusters
    /// are stable.
    pub fn route<'a>(
        &'a self,
        req: &RouteRequest<'_>,
        runtime: &Snapshot,
        random: u64,
    ) -> Option<Selected<'a>> {
        let virtual_host = self.virtual_host(req.authority)?;
        // Without `:path` only CONNECT matchers apply, and Legate has none.
        if req.path.is_empty() {
            return None;
        }
        virtual_host.routes.iter().find_map(|route| {
            if !route.matches(req, runtime, random) {
                return None;
            }
            // A weighted pick that finds nothing (impossible once the config is validated)
            // makes Envoy move on to the next route; so does this.
            let action = route.select_action(req, random)?;
            Some(Selected {
                route_table: self,
                virtual_host,
                route,
                action,
            })
        })
    }
}

impl Route {
    /// Whether every criterion of the route's `match` holds for the request.
    pub fn matches(&self, req: &RouteRequest<'_>, runtime: &Snapshot, random: u64) -> bool {
        // All criteria are pure, so the order only matters for speed: the path first.
        self.path_matches(req.path_only)
            && self.runtime_fraction.as_ref().is_none_or(|rf| {
                runtime.feature_enabled(&rf.runtime_key, rf.numerator, rf.denominator, random)
            })
            && (!self.grpc || req.grpc)
            && self.headers.iter().all(|h| h.matches(req))
            && (self.query_parameters.is_empty() || {
                let query = query_string(req.path);
                self.query_parameters.iter().all(|q| q.matches(query))
            })
    }

    /// `path`: the request's path without query and fragment.
    fn path_matches(&self, path: &str) -> bool {
        let cs = self.case_sensitive;
        match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, cs),
            PathMatch::Path(p) => {
                if cs {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, cs)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }

    fn select_action<'a>(
        &'a self,
        req: &RouteRequest<'_>,
        random: u64,
    ) -> Option<SelectedAction<'a>> {
        Some(match &self.action {
            Action::Redirect(r) => SelectedAction::Redirect(r),
            Action::Direct { status, body } => SelectedAction::Direct {
                status: *status,
                body,
            },
            Action::Forward(forward) => match &forward.target {
                ClusterTarget::Named(cluster) => SelectedAction::Forward {
                    forward,
                    cluster: ClusterName::Static(cluster),
                    weighted: None,
                },
                ClusterTarget::Header(name) => {
                    // Only the first value counts (the header is untrusted input).
                    let cluster = req
                        .headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if cluster.is_empty() {
                        SelectedAction::ClusterNotFound {
                            forward,
                            status: forward.cluster_not_found_status,
                        }
                    } else {
                        SelectedAction::Forward {
                            forward,
                            cluster: ClusterName::Header(name),
                            weighted: None,
                        }
                    }
                }
                ClusterTarget::Weighted {
                    clusters,
                    total_weight,
                } => {
                    let picked = pick_weighted(clusters, *total_weight, random)?;
                    SelectedAction::Forward {
                        forward,
                        cluster: ClusterName::Static(&picked.name),
                        weighted: Some(picked),
                    }
                }
            },
        })
    }
}

/// Envoy's `WeightedClusterSpecifierPlugin::pickWeightedCluster`: `random % total` falls in
/// exactly one of the intervals `[0, w1)`, `[w1, w1 + w2)`, ... in configuration order.
pub fn pick_weighted(
    clusters: &[ClusterWeight],
    total_weight: u64,
    random: u64,
) -> Option<&ClusterWeight> {
    if total_weight == 0 {
        return None;
    }
    let selected = random % total_weight;
    let mut end = 0u64;
    clusters.iter().find(|c| {
        end += u64::from(c.weight);
        selected < end
    })
}

impl HeaderMatch {
    /// Envoy's `HeaderUtility::matchHeaders` for one matcher.
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        let single = |v: &str| self.rule_matches(v);
        let (present, matched) = match &self.key {
            HeaderKey::Authority => (true, single(req.authority)),
            HeaderKey::Path => (true, single(req.path)),
            HeaderKey::Method => (true, single(req.method)),
            HeaderKey::Scheme => (!req.scheme.is_empty(), single(req.scheme)),
            HeaderKey::Absent => (false, false),
            HeaderKey::Named(name) => {
                let mut values = req.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    (false, false)
                } else {
                    let any = values.any(|v| match std::str::from_utf8(v.as_bytes()) {
                        Ok(s) => single(s),
                        Err(_) => single(&String::from_utf8_lossy(v.as_bytes())),
                    });
                    (true, any)
                }
            }
        };
        match self.rule {
            HeaderRule::Present(want) => (present == want) != self.invert,
            _ if present => matched != self.invert,
            // A missing header fails, inverted or not, unless it is to be read as "".
            _ if self.treat_missing_as_empty => single("") != self.invert,
            _ => false,
        }
    }

    fn rule_matches(&self, value: &str) -> bool {
        match &self.rule {
            HeaderRule::Present(_) | HeaderRule::AnyValue => true,
            HeaderRule::Range { start, end } => {
                parse_i64_like_absl(value).is_some_and(|v| v >= *start && v < *end)
            }
            HeaderRule::String(m) => m.matches(value),
        }
    }
}

impl QueryMatch {
    /// Envoy's `QueryParameterMatcher::matches` on the raw query string.
    pub fn matches(&self, query: &str) -> bool {
        let value = first_query_value(query, &self.name);
        match &self.rule {
            QueryRule::Present(want) => value.is_some() == *want,
            QueryRule::String(m) => value.is_some_and(|v| m.matches(v)),
        }
    }
}

/// `:path` without `?query` and `#fragment` (Envoy's `PathUtil::removeQueryAndFragment`).
pub fn strip_query_and_fragment(path: &str) -> &str {
    match path.bytes().position(|b| b == b'?' || b == b'#') {
        Some(i) => &path[..i],
        None => path,
    }
}

/// Everything after the first `?` (Envoy's `parseQueryString` does not stop at `#`).
fn query_string(path: &str) -> &str {
    path.find('?').map_or("", |i| &path[i + 1..])
}

/// The value of the first `name` parameter: `a=b` gives `b`, a bare `a` gives `""`.
fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|param| {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        (key == name).then_some(value)
    })
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// `absl::SimpleAtoi` for `int64_t`: surrounding ASCII whitespace allowed, an optional sign,
/// decimal digits.
fn parse_i64_like_absl(value: &str) -> Option<i64> {
    value
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
        .parse()
        .ok()
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::route::RouteTable;

    /// A route table from a `RouteConfiguration` written in YAML, read as Envoy reads it.
    pub(crate) fn table_from_yaml(yaml: &str) -> RouteTable {
        RouteTable::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::route::v3 as rp;
    use std::collections::BTreeMap;

    /// Builds a route table from JSON-ish protos: one vhost per (domains, routes).
    fn table(vhosts: Vec<(Vec<&str>, Vec<rp::Route>)>) -> RouteTable {
        let rc = rp::RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vhosts
                .into_iter()
                .enumerate()
                .map(|(i, (domains, routes))| rp::VirtualHost {
                    name: format!("vh{i}"),
                    domains: domains.into_iter().map(String::from).collect(),
                    routes,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        RouteTable::compile(&rc).unwrap()
    }

    pub(crate) fn direct(name: &str, m: rp::RouteMatch) -> rp::Route {
        rp::Route {
            name: name.into(),
            r#match: Some(m),
            action: Some(rp::route::Action::DirectResponse(
                rp::DirectResponseAction {
                    status: 200,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    fn prost_types_bool(value: bool) -> legate_api::pb::google::protobuf::BoolValue {
        legate_api::pb::google::protobuf::BoolValue { value }
    }

    fn prost_types_u32(value: u32) -> legate_api::pb::google::protobuf::UInt32Value {
        legate_api::pb::google::protobuf::UInt32Value { value }
    }

    fn prefix(p: &str) -> rp::RouteMatch {
        rp::RouteMatch {
            path_specifier: Some(rp::route_match::PathSpecifier::Prefix(p.into())),
            ..Default::default()
        }
    }

    fn spec(s: rp::route_match::PathSpecifier, case_sensitive: bool) -> rp::RouteMatch {
        rp::RouteMatch {
            path_specifier: Some(s),
            case_sensitive: Some(prost_types_bool(case_sensitive)),
            ..Default::default()
        }
    }

    struct Req {
        method: &'static str,
        path: &'static str,
        authority: &'static str,
        headers: HeaderMap,
    }

    fn req(path: &'static str, headers: &[(&'static str, &'static str)]) -> Req {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, v.parse().unwrap());
        }
        Req {
            method: "GET",
            path,
            authority: "m",
            headers: map,
        }
    }

    fn pick(t: &RouteTable, r: &Req) -> Option<String> {
        pick_with(t, r, &Snapshot::default(), 0)
    }

    fn pick_with(t: &RouteTable, r: &Req, rt: &Snapshot, random: u64) -> Option<String> {
        let rq = RouteRequest::new(r.method, r.path, r.authority, "http", &r.headers);
        t.route(&rq, rt, random).map(|s| s.route.name.clone())
    }

    /// One route, tried against (request, expected match) cases. The expectations come from
    /// Envoy 1.40 with the same route (see the module docs).
    fn check(m: rp::RouteMatch, cases: &[(Req, bool)]) {
        let t = table(vec![(vec!["*"], vec![direct("hit", m)])]);
        for (r, want) in cases {
            assert_eq!(
                pick(&t, r).is_some(),
                *want,
                "path {} headers {:?}",
                r.path,
                r.headers
            );
        }
    }

    #[test]
    fn path_specifiers_follow_envoy() {
        use rp::route_match::PathSpecifier as P;
        check(prefix("/a?b"), &[(req("/a?b", &[]), false)]);
        check(
            prefix("/a"),
            &[
                (req("/a", &[]), true),
                (req("/abc?x", &[]), true),
                (req("/b", &[]), false),
            ],
        );
        check(
            spec(P::Path("/p".into()), true),
            &[
                (req("/p?x=1", &[]), true),
                (req("/p#f", &[]), true),
                (req("/p/", &[]), false),
                (req("/P", &[]), false),
            ],
        );
        check(
            spec(P::Path("/CI".into()), false),
            &[(req("/ci", &[]), true)],
        );
        check(
            spec(P::Prefix("/CI".into()), false),
            &[(req("/cIx", &[]), true)],
        );
        check(
            spec(P::PathSeparatedPrefix("/api/dev".into()), true),
            &[
                (req("/api/dev", &[]), true),
                (req("/api/dev/", &[]), true),
                (req("/api/dev/v1", &[]), true),
                (req("/api/dev?x", &[]), true),
                (req("/api/dev#x", &[]), true),
                (req("/api/developer", &[]), false),
                (req("/api/de", &[]), false),
            ],
        );
        check(
            spec(P::PathSeparatedPrefix("/Api".into()), false),
            &[(req("/API/x", &[]), true), (req("/APIx", &[]), false)],
        );
        let re = |r: &str| {
            P::SafeRegex(legate_api::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: r.into(),
                ..Default::default()
            })
        };
        check(
            spec(re("/r/[0-9]+"), false),
            &[
                (req("/r/12?x=y", &[]), true),
                (req("/r/12/", &[]), false),
                (req("/R/12", &[]), false),
            ],
        );
        // No :path (HTTP/1 CONNECT): nothing matches, not even an empty prefix.
        check(prefix(""), &[(req("", &[]), false), (req("/", &[]), true)]);
    }

    fn header(h: rp::HeaderMatcher) -> rp::RouteMatch {
        rp::RouteMatch {
            headers: vec![h],
            ..prefix("/")
        }
    }

    fn hm(
        name: &str,
        spec: Option<rp::header_matcher::HeaderMatchSpecifier>,
        invert: bool,
        missing_as_empty: bool,
    ) -> rp::RouteMatch {
        header(rp::HeaderMatcher {
            name: name.into(),
            header_match_specifier: spec,
            invert_match: invert,
            treat_missing_header_as_empty: missing_as_empty,
        })
    }

    fn exact(v: &str) -> Option<rp::header_matcher::HeaderMatchSpecifier> {
        Some(rp::header_matcher::HeaderMatchSpecifier::StringMatch(
            legate_api::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(
                    legate_api::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                        v.into(),
                    ),
                ),
                ignore_case: false,
            },
        ))
    }

    #[test]
    #[allow(deprecated)]
    fn header_matchers_follow_envoy() {
        use legate_api::pb::envoy::r#type::matcher::v3::{
            StringMatcher, string_matcher::MatchPattern,
        };
        use rp::header_matcher::HeaderMatchSpecifier as S;
        // Several values: any one matching is enough; no joining with ','.
        check(
            hm("x-h", exact("a,b"), false, false),
            &[
                (req("/", &[("x-h", "a"), ("x-h", "b")]), false),
                (req("/", &[("x-h", "a,b")]), true),
                (req("/", &[("x-h", "a, b")]), false),
            ],
        );
        check(
            hm("x-h", exact("b"), false, false),
            &[(req("/", &[("x-h", "a"), ("x-h", "b")]), true)],
        );
        // The deprecated exact_match "" accepts any value, but not a missing header.
        check(
            hm("x-h", Some(S::ExactMatch(String::new())), false, false),
            &[
                (req("/", &[("x-h", "zzz")]), true),
                (req("/", &[("x-h", "")]), true),
                (req("/", &[]), false),
            ],
        );
        check(
            hm("x-h", exact("a"), true, false),
            &[
                (req("/", &[("x-h", "b")]), true),
                (req("/", &[("x-h", "a")]), false),
                (req("/", &[]), false),
                (req("/", &[("x-h", "a"), ("x-h", "b")]), false),
                (req("/", &[("x-h", "b"), ("x-h", "a")]), false),
            ],
        );
        check(hm("x-h", exact("a"), true, true), &[(req("/", &[]), true)]);
        check(
            hm("x-h", exact(""), false, true),
            &[(req("/", &[]), true), (req("/", &[("x-h", "")]), true)],
        );
        let present = |p: bool| Some(S::PresentMatch(p));
        let cases = |on_missing: bool| {
            vec![
                (req("/", &[]), on_missing),
                (req("/", &[("x-h", "")]), !on_missing),
                (req("/", &[("x-h", "1"), ("x-h", "2")]), !on_missing),
            ]
        };
        check(hm("x-h", present(true), false, false), &cases(false));
        check(hm("x-h", present(false), false, false), &cases(true));
        check(hm("x-h", present(true), true, false), &cases(true));
        check(hm("x-h", present(false), true, false), &cases(false));
        check(hm("x-h", None, false, false), &cases(false));
        check(hm("x-h", None, true, false), &cases(true));
        let range = hm(
            "x-h",
            Some(S::RangeMatch(
                legate_api::pb::envoy::r#type::v3::Int64Range {
                    start: -10,
                    end: 10,
                },
            )),
            false,
            false,
        );
        let mut range_cases: Vec<(Req, bool)> = [
            ("5", true),
            (" 5", true),
            ("5 ", true),
            ("+5", true),
            ("-10", true),
            ("05", true),
            ("10", false),
            ("x", false),
            ("0x5", false),
            ("", false),
        ]
        .into_iter()
        .map(|(v, want)| (req("/", &[("x-h", v)]), want))
        .collect();
        range_cases.push((req("/", &[("x-h", "100"), ("x-h", "2")]), true));
        check(range, &range_cases);
        // Pseudo-headers come from the request line; `host` is the authority.
        check(
            hm("host", present(true), false, false),
            &[(req("/", &[]), true)],
        );
        check(
            hm(":authority", exact("m"), false, false),
            &[(req("/", &[]), true)],
        );
        check(
            hm(":method", exact("GET"), false, false),
            &[(req("/", &[]), true)],
        );
        check(
            hm(":path", exact("/x?y=1"), false, false),
            &[(req("/x?y=1", &[]), true)],
        );
        check(
            hm(":scheme", exact("http"), false, false),
            &[(req("/", &[]), true)],
        );
        check(
            hm(":status", present(true), false, false),
            &[(req("/", &[]), false)],
        );
        let ignore_case = hm(
            "X-H",
            Some(S::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix("AB".into())),
                ignore_case: true,
            })),
            false,
            false,
        );
        check(
            ignore_case,
            &[
                (req("/", &[("x-h", "aBc")]), true),
                (req("/", &[("x-h", "x"), ("x-h", "abc")]), true),
                (req("/", &[("x-h", "x")]), false),
            ],
        );
        check(
            hm("x-h", Some(S::SuffixMatch("z".into())), false, false),
            &[
                (req("/", &[("x-h", "abz")]), true),
                (req("/", &[("x-h", "abZ")]), false),
            ],
        );
    }

    fn query(
        name: &str,
        spec: Option<rp::query_parameter_matcher::QueryParameterMatchSpecifier>,
    ) -> rp::RouteMatch {
        rp::RouteMatch {
            query_parameters: vec![rp::QueryParameterMatcher {
                name: name.into(),
                query_parameter_match_specifier: spec,
            }],
            ..prefix("/")
        }
    }

    #[test]
    fn query_parameters_follow_envoy() {
        use legate_api::pb::envoy::r#type::matcher::v3::{
            StringMatcher, string_matcher::MatchPattern,
        };
        use rp::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let exact = |v: &str| {
            Some(Q::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(v.into())),
                ignore_case: false,
            }))
        };
        // Raw, not percent-decoded.
        check(
            query("q", exact("a b")),
            &[(req("/?q=a%20b", &[]), false), (req("/?q=a+b", &[]), false)],
        );
        check(
            query("q", exact("a%20b")),
            &[
                (req("/?q=a%20b", &[]), true),
                (req("/?q=a%20b&q=x", &[]), true),
                (req("/?q=x&q=a%20b", &[]), false),
                (req("/?r=1&q=a%20b", &[]), true),
                (req("/?qq=a%20b", &[]), false),
            ],
        );
        check(
            query("q", Some(Q::PresentMatch(true))),
            &[
                (req("/?q", &[]), true),
                (req("/?qq=1", &[]), false),
                (req("/", &[]), false),
            ],
        );
        check(
            query("q", Some(Q::PresentMatch(false))),
            &[
                (req("/?q=1", &[]), false),
                (req("/?", &[]), true),
                (req("/", &[]), true),
            ],
        );
        check(
            query("q", None),
            &[(req("/?q=2", &[]), true), (req("/", &[]), false)],
        );
        check(
            query("q", exact("")),
            &[
                (req("/?q", &[]), true),
                (req("/?q=", &[]), true),
                (req("/?x&q&", &[]), true),
            ],
        );
    }

    #[test]
    fn grpc_needs_a_grpc_content_type() {
        let m = rp::RouteMatch {
            grpc: Some(Default::default()),
            ..prefix("/")
        };
        let ct = |v: &'static str| req("/", &[("content-type", v)]);
        check(
            m,
            &[
                (ct("application/grpc"), true),
                (ct("application/grpc+proto"), true),
                (ct("application/grpc;x"), false),
                (ct("application/grpc-web"), false),
                (ct("Application/grpc"), false),
                (req("/", &[]), false),
            ],
        );
    }

    #[test]
    fn runtime_fraction_uses_the_runtime_then_the_default() {
        let fraction = |key: &str, numerator: u32, denominator: i32| rp::RouteMatch {
            runtime_fraction: Some(
                legate_api::pb::envoy::config::core::v3::RuntimeFractionalPercent {
                    runtime_key: key.into(),
                    default_value: Some(legate_api::pb::envoy::r#type::v3::FractionalPercent {
                        numerator,
                        denominator,
                    }),
                },
            ),
            ..prefix("/")
        };
        let rt = Snapshot::from_values(BTreeMap::from([
            ("rt.zero".to_owned(), "100".to_owned()),
            ("rt.full".to_owned(), "0".to_owned()),
            ("rt.half".to_owned(), "50".to_owned()),
        ]));
        let hit = |m: rp::RouteMatch, random: u64| {
            let t = table(vec![(vec!["*"], vec![direct("hit", m)])]);
            pick_with(&t, &req("/", &[]), &rt, random).is_some()
        };
        // The runtime value overrides the default (Envoy 1.40: rt_zero matched, rt_full did not).
        assert!(hit(fraction("rt.zero", 0, 0), 12345));
        assert!(!hit(fraction("rt.full", 100, 0), 0));
        // Unset key: the default, numerator over its own denominator.
        assert!(hit(fraction("unset", 50, 0), 49));
        assert!(!hit(fraction("unset", 50, 0), 50));
        assert!(hit(fraction("unset", 50, 0), 149));
        // A bare integer in the runtime is read over the default's denominator (TEN_THOUSAND).
        assert!(hit(fraction("rt.half", 1, 1), 49));
        assert!(!hit(fraction("rt.half", 1, 1), 50));
        assert!(hit(fraction("unset", 1, 2), 1_000_000));
        assert!(!hit(fraction("unset", 1, 2), 1_000_001));
        // Over 50 000 random values a 25% default lands near 25%.
        let t = table(vec![(
            vec!["*"],
            vec![direct("hit", fraction("unset", 25, 0))],
        )]);
        let hits = (0..50_000)
            .filter(|_| pick_with(&t, &req("/", &[]), &rt, fastrand::u64(..)).is_some())
            .count();
        assert!((11_500..13_500).contains(&hits), "{hits}");
    }

    #[test]
    fn first_matching_route_in_the_chosen_virtual_host_wins() {
        let t = table(vec![
            (
                vec!["a.com"],
                vec![direct("a1", prefix("/x")), direct("a2", prefix("/"))],
            ),
            (vec!["*"], vec![direct("d1", prefix("/"))]),
        ]);
        let mut r = req("/x/y", &[]);
        r.authority = "A.com";
        assert_eq!(pick(&t, &r).as_deref(), Some("a1"));
        r.path = "/y";
        assert_eq!(pick(&t, &r).as_deref(), Some("a2"));
        r.authority = "b.com";
        assert_eq!(pick(&t, &r).as_deref(), Some("d1"));
        let t = table(vec![(vec!["a.com"], vec![direct("a1", prefix("/"))])]);
        assert_eq!(pick(&t, &r), None, "no virtual host");
        let t = table(vec![(vec!["*"], vec![direct("a1", prefix("/x"))])]);
        assert_eq!(pick(&t, &r), None, "no route");
    }

    fn forward(specifier: rp::route_action::ClusterSpecifier, not_found: i32) -> rp::Route {
        rp::Route {
            name: "fw".into(),
            r#match: Some(prefix("/")),
            action: Some(rp::route::Action::Route(rp::RouteAction {
                cluster_specifier: Some(specifier),
                cluster_not_found_response_code: not_found,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn action_of<'a>(t: &'a RouteTable, r: &'a Req, random: u64) -> SelectedAction<'a> {
        let rq = RouteRequest::new(r.method, r.path, r.authority, "http", &r.headers);
        t.route(&rq, &Snapshot::default(), random).unwrap().action
    }

    #[test]
    fn cluster_header_names_the_cluster() {
        use rp::route_action::ClusterSpecifier as C;
        for (code, status) in [(0, 503), (1, 404), (2, 500)] {
            let t = table(vec![(
                vec!["*"],
                vec![forward(C::ClusterHeader("X-Cluster".into()), code)],
            )]);
            let r = req("/", &[("x-cluster", "c1"), ("x-cluster", "c2")]);
            match action_of(&t, &r, 0) {
                SelectedAction::Forward {
                    cluster, weighted, ..
                } => {
                    assert_eq!(
                        cluster.resolve(&r.headers),
                        "c1",
                        "only the first value counts"
                    );
                    assert!(weighted.is_none());
                }
                other => panic!("{other:?}"),
            }
            for r in [req("/", &[]), req("/", &[("x-cluster", "")])] {
                match action_of(&t, &r, 0) {
                    SelectedAction::ClusterNotFound { status: s, .. } => assert_eq!(s, status),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn weighted_clusters_split_by_weight() {
        use rp::route_action::ClusterSpecifier as C;
        let cw = |name: &str, weight: u32| rp::weighted_cluster::ClusterWeight {
            name: name.into(),
            weight: Some(prost_types_u32(weight)),
            ..Default::default()
        };
        let t = table(vec![(
            vec!["*"],
            vec![forward(
                C::WeightedClusters(rp::WeightedCluster {
                    clusters: vec![cw("a", 10), cw("zero", 0), cw("b", 30), cw("c", 60)],
                    ..Default::default()
                }),
                0,
            )],
        )]);
        let r = req("/", &[]);
        let name = |random: u64| match action_of(&t, &r, random) {
            SelectedAction::Forward {
                cluster, weighted, ..
            } => {
                let ClusterName::Static(cluster) = cluster else {
                    panic!("{cluster:?}")
                };
                assert_eq!(weighted.map(|w| w.name.as_str()), Some(cluster));
                cluster.to_owned()
            }
            other => panic!("{other:?}"),
        };
        // Envoy's intervals: [0,10) a, [10,40) b, [40,100) c, on random % 100.
        assert_eq!(name(0), "a");
        assert_eq!(name(9), "a");
        assert_eq!(name(10), "b");
        assert_eq!(name(39), "b");
        assert_eq!(name(40), "c");
        assert_eq!(name(99), "c");
        assert_eq!(name(100), "a");
        assert_eq!(name(u64::MAX), "b", "u64::MAX % 100 == 15");
        // Proportions over many random values.
        let mut counts = std::collections::HashMap::<String, u32>::new();
        let n = 100_000;
        for _ in 0..n {
            *counts.entry(name(fastrand::u64(..))).or_default() += 1;
        }
        let share = |c: &str| f64::from(counts.get(c).copied().unwrap_or(0)) / f64::from(n);
        assert!((share("a") - 0.10).abs() < 0.01, "{counts:?}");
        assert!((share("b") - 0.30).abs() < 0.01, "{counts:?}");
        assert!((share("c") - 0.60).abs() < 0.01, "{counts:?}");
        assert_eq!(share("zero"), 0.0);
    }
}
