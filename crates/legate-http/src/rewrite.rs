//! What a selected route changes in the request before it goes upstream (`prefix_rewrite`,
//! `regex_rewrite`, the host rewrites) and the `Location` of a redirect, as Envoy computes them
//! (`RouteEntryImplBase::currentUrlPathAfterRewriteWithMatchedPath`, `finalizeHostHeader`,
//! `Http::Utility::newUri`; every redirect case below was checked against Envoy 1.40).
//!
//! Path rewrites keep the query: `prefix_rewrite` replaces the matched prefix (or path; for a
//! `safe_regex` route, the whole path before `?`), and `regex_rewrite` substitutes within the
//! path before `?`/`#` and keeps the rest. Redirects apply their own `prefix_rewrite` or
//! `regex_rewrite` the same way, then build `scheme://host[:port]/path`.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::route::{Forward, HostRewrite, MatchedPart, Redirect};
use crate::route_match::{RouteRequest, strip_query_and_fragment};

/// Set to the request's path when a route rewrites it (unless the router's
/// `suppress_envoy_headers` is set).
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
/// Set to the request's authority when a route rewrites it (same condition).
pub const X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");

/// How the upstream request's `:authority` is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityRewrite<'a> {
    /// Keep the downstream authority.
    Keep,
    /// `host_rewrite_literal`, or the first value of `host_rewrite_header`.
    Set(&'a str),
    /// `auto_host_rewrite`: the chosen upstream host's hostname, when it has one (strict/logical
    /// DNS clusters or an endpoint `hostname`); the router knows it only after load balancing.
    UpstreamHostname,
}

/// The changes a forwarding route makes to the request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRewrite<'a> {
    /// The new `:path`, when the route rewrites it.
    pub path: Option<String>,
    pub authority: AuthorityRewrite<'a>,
}

impl UpstreamRewrite<'_> {
    /// Envoy's `x-envoy-original-path` and `x-envoy-original-host`: the values before the
    /// rewrite. For [`AuthorityRewrite::UpstreamHostname`] the router calls this only once it
    /// actually replaces the authority. Values that cannot be header values are skipped.
    pub fn set_original_headers(
        &self,
        original_path: &str,
        original_authority: &str,
        headers: &mut HeaderMap,
    ) {
        if self.path.is_some()
            && let Ok(v) = HeaderValue::from_str(original_path)
        {
            headers.insert(X_ENVOY_ORIGINAL_PATH, v);
        }
        if matches!(self.authority, AuthorityRewrite::Set(_))
            && !original_authority.is_empty()
            && let Ok(v) = HeaderValue::from_str(original_authority)
        {
            headers.insert(X_ENVOY_ORIGINAL_HOST, v);
        }
    }
}

/// The path and authority a forwarding route sends upstream.
pub fn upstream_rewrite<'a>(forward: &'a Forward, req: &RouteRequest<'a>) -> UpstreamRewrite<'a> {
    UpstreamRewrite {
        path: rewritten_path(forward, req.path),
        authority: authority_rewrite(forward, req.headers),
    }
}

/// The new `:path` for `prefix_rewrite` or `regex_rewrite` (they exclude each other), or `None`.
pub fn rewritten_path(forward: &Forward, path: &str) -> Option<String> {
    if let Some(prefix) = &forward.prefix_rewrite {
        return Some(replace_prefix(path, forward.matched, prefix));
    }
    let (re, substitution) = forward.regex_rewrite.as_deref()?;
    let just_path = strip_query_and_fragment(path);
    let mut out = re
        .replace_all(just_path, substitution.as_str())
        .into_owned();
    out.push_str(&path[just_path.len()..]);
    Some(out)
}

/// Envoy's `finalizeHostHeader`. An empty literal or an empty/missing header leaves the
/// authority as it is; of several header values the first is used.
pub fn authority_rewrite<'a>(forward: &'a Forward, headers: &'a HeaderMap) -> AuthorityRewrite<'a> {
    match &forward.host_rewrite {
        HostRewrite::None => AuthorityRewrite::Keep,
        HostRewrite::Literal(h) if h.is_empty() => AuthorityRewrite::Keep,
        HostRewrite::Literal(h) => AuthorityRewrite::Set(h),
        HostRewrite::Auto => AuthorityRewrite::UpstreamHostname,
        HostRewrite::Header(name) => match headers.get(name.as_str()).map(|v| v.to_str()) {
            Some(Ok(v)) if !v.is_empty() => AuthorityRewrite::Set(v),
            _ => AuthorityRewrite::Keep,
        },
    }
}

/// `path` with its matched part replaced by `replacement`. The matched part was compared byte
/// for byte (ASCII case folding keeps lengths), so the cut is a char boundary; were it not, or
/// past the end, the whole path is replaced (as `std::string::replace` does past the end)
/// rather than split inside a character.
fn replace_prefix(path: &str, matched: MatchedPart, replacement: &str) -> String {
    let matched_len = match matched {
        MatchedPart::Len(n) => n,
        MatchedPart::WholePath => strip_query_and_fragment(path).len(),
    };
    let rest = path.get(matched_len..).unwrap_or("");
    let mut out = String::with_capacity(replacement.len() + rest.len());
    out.push_str(replacement);
    out.push_str(rest);
    out
}

/// The `Location` of a `redirect` route, exactly as Envoy builds it:
/// * scheme: `scheme_redirect` as written, else `https` for `https_redirect`, else the request's
///   `:scheme`;
/// * host: `host_redirect` verbatim, else the request's authority, without its port when
///   `port_redirect` is set, or when the scheme changes and the port is the default of the
///   request's protocol (`:80` for http, `:443` for https);
/// * `:port_redirect` appended when set (even 80 or 443, and even after a `host_redirect` that
///   has a port);
/// * path: `path_redirect` (keeping the request's query unless it has its own), else the
///   request path after the redirect's `prefix_rewrite`/`regex_rewrite`; a `/` is prepended if
///   missing; `strip_query` removes the query unless `path_redirect` carries one.
///
/// `forwarded_proto` is the request's `x-forwarded-proto` as the connection manager left it (for
/// a plain request, the connection's scheme): Envoy compares the new scheme with it, not with
/// `:scheme`, to decide whether to drop a default port.
pub fn redirect_location(
    redirect: &Redirect,
    req: &RouteRequest<'_>,
    forwarded_proto: &str,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(req.scheme);
    let host = match &redirect.host {
        Some(h) => h.as_str(),
        None => request_host(
            req.authority,
            scheme,
            redirect.port.is_some(),
            forwarded_proto,
        ),
    };
    // The router rewrites :path first (Envoy's `rewritePathHeader` on the redirect entry), then
    // builds the URI from it.
    let rewritten;
    let mut current = req.path;
    if let Some(prefix) = &redirect.prefix_rewrite {
        rewritten = replace_prefix(req.path, redirect.matched, prefix);
        current = &rewritten;
    } else if let Some((re, substitution)) = redirect.regex_rewrite.as_deref() {
        let just_path = strip_query_and_fragment(req.path);
        let new_path = re.replace_all(just_path, substitution.as_str());
        // An empty substitution result is no rewrite at all in Envoy.
        if !new_path.is_empty() {
            rewritten = format!("{new_path}{}", &req.path[just_path.len()..]);
            current = &rewritten;
        }
    }
    let path_has_query = redirect.path.as_deref().is_some_and(|p| p.contains('?'));
    let mut path = String::with_capacity(current.len() + 1);
    match &redirect.path {
        // The path_redirect query, if any, wins over the request's and is never stripped.
        Some(p) if path_has_query => path.push_str(p),
        Some(p) => {
            path.push_str(p);
            if let Some(q) = current.find('?') {
                path.push_str(&current[q..]);
            }
        }
        None => path.push_str(current),
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if redirect.strip_query
        && !path_has_query
        && let Some(q) = path.find('?')
    {
        path.truncate(q);
    }
    let port = redirect.port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}")
}

/// The `Location` Envoy adds to a `direct_response` whose status is 201 or 3xx: the request's
/// own URL (`newUri` without a redirect config). `None` for other statuses or without a path.
pub fn direct_response_location(
    status: u16,
    req: &RouteRequest<'_>,
    forwarded_proto: &str,
) -> Option<String> {
    if !(status == 201 || (300..400).contains(&status)) || req.path.is_empty() {
        return None;
    }
    let host = request_host(req.authority, req.scheme, false, forwarded_proto);
    let slash = if req.path.starts_with('/') { "" } else { "/" };
    Some(format!("{}://{host}{slash}{}", req.scheme, req.path))
}

/// Envoy's `processRequestHost`: the request authority, without its port when a new port is
/// given, or when the scheme changes and the port is the default one of `forwarded_proto`.
fn request_host<'a>(
    authority: &'a str,
    new_scheme: &str,
    new_port: bool,
    forwarded_proto: &str,
) -> &'a str {
    // An IPv6 literal's port follows "]:"; otherwise the last ':'.
    let port_start = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(port_start) = port_start else {
        return authority;
    };
    let port = &authority[port_start..];
    let default_port_of_old_scheme = new_scheme != forwarded_proto
        && ((forwarded_proto.eq_ignore_ascii_case("https") && port == ":443")
            || (forwarded_proto.eq_ignore_ascii_case("http") && port == ":80"));
    if new_port || default_port_of_old_scheme {
        &authority[..port_start]
    } else {
        authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteTable;
    use crate::route_match::{SelectedAction, test_support::table_from_yaml};
    use legate_core::runtime::Snapshot;

    /// Redirect routes, each selected by an `x-case` header, as in the Envoy 1.40 run whose
    /// `Location`s the tests below expect.
    const REDIRECTS: &str = r#"
name: t
virtual_hosts:
- name: r
  domains: ["*"]
  routes:
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: https}}]}, redirect: {https_redirect: true}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: scheme_ftp}}]}, redirect: {scheme_redirect: ftp}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: scheme_upper}}]}, redirect: {scheme_redirect: HTTPS}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: host}}]}, redirect: {host_redirect: new.example.com}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: port}}]}, redirect: {port_redirect: 8443}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: https_port443}}]}, redirect: {https_redirect: true, port_redirect: 443}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: path}}]}, redirect: {path_redirect: /new}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: path_q_strip}}]}, redirect: {path_redirect: "/new?a=b", strip_query: true}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: path_strip}}]}, redirect: {path_redirect: /new, strip_query: true}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: path_relative}}]}, redirect: {path_redirect: relative}}
  - {match: {prefix: "/v1/", headers: [{name: x-case, string_match: {exact: prefix}}]}, redirect: {prefix_rewrite: /v2/}}
  - {match: {path_separated_prefix: "/api", headers: [{name: x-case, string_match: {exact: sep_prefix}}]}, redirect: {prefix_rewrite: /x}}
  - {match: {prefix: "/svc", headers: [{name: x-case, string_match: {exact: regex}}]}, redirect: {regex_rewrite: {pattern: {regex: "^/svc/([^/]+)(/.*)$"}, substitution: "\\2/instance/\\1"}}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: regex_empty}}]}, redirect: {regex_rewrite: {pattern: {regex: "^.*$"}, substitution: ""}}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: regex_dollar}}]}, redirect: {regex_rewrite: {pattern: {regex: "^/d/(.*)$"}, substitution: "/$x/\\1\\\\"}}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: strip}}]}, redirect: {strip_query: true}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: found}}]}, redirect: {response_code: FOUND, https_redirect: true}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: see_other}}]}, redirect: {response_code: SEE_OTHER}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: temporary}}]}, redirect: {response_code: TEMPORARY_REDIRECT}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: permanent}}]}, redirect: {response_code: PERMANENT_REDIRECT}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: host_port_both}}]}, redirect: {host_redirect: "h:99", port_redirect: 100}}
  - {match: {path: "/exact", headers: [{name: x-case, string_match: {exact: path_exact_prefix}}]}, redirect: {prefix_rewrite: /e2}}
  - {match: {prefix: "/prefix", case_sensitive: false, headers: [{name: x-case, string_match: {exact: prefix_ci}}]}, redirect: {prefix_rewrite: /}}
  - {match: {safe_regex: {regex: "/re/[a-z]+"}, headers: [{name: x-case, string_match: {exact: prefix_regexroute}}]}, redirect: {prefix_rewrite: /z}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: host_https}}]}, redirect: {host_redirect: n.com, https_redirect: true}}
  - {match: {prefix: "/all/", headers: [{name: x-case, string_match: {exact: all}}]}, redirect: {scheme_redirect: https, host_redirect: n.com, port_redirect: 9, prefix_rewrite: /p/, strip_query: true, response_code: PERMANENT_REDIRECT}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: direct301}}]}, direct_response: {status: 301}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: direct201}}]}, direct_response: {status: 201}}
  - {match: {prefix: "/", headers: [{name: x-case, string_match: {exact: direct200}}]}, direct_response: {status: 200}}
"#;

    /// (status, Location) for a request, as the router would answer it.
    fn answer(t: &RouteTable, case: &str, authority: &str, path: &str, xfp: &str) -> (u16, String) {
        let mut headers = HeaderMap::new();
        headers.insert("x-case", HeaderValue::from_str(case).unwrap());
        let req = RouteRequest::new("GET", path, authority, "http", &headers);
        let selected = t.route(&req, &Snapshot::default(), 0).expect("a route");
        match selected.action {
            SelectedAction::Redirect(r) => (r.status, redirect_location(r, &req, xfp)),
            SelectedAction::Direct { status, .. } => (
                status,
                direct_response_location(status, &req, xfp).unwrap_or_default(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redirect_locations_match_envoy() {
        let t = table_from_yaml(REDIRECTS);
        // (case, [Location for hosts r, r:80, r:443, r:8080 with path /a/b?x=1&y], status)
        let matrix: &[(&str, [&str; 4], u16)] = &[
            (
                "https",
                [
                    "https://r/a/b?x=1&y",
                    "https://r/a/b?x=1&y",
                    "https://r:443/a/b?x=1&y",
                    "https://r:8080/a/b?x=1&y",
                ],
                301,
            ),
            (
                "scheme_ftp",
                [
                    "ftp://r/a/b?x=1&y",
                    "ftp://r/a/b?x=1&y",
                    "ftp://r:443/a/b?x=1&y",
                    "ftp://r:8080/a/b?x=1&y",
                ],
                301,
            ),
            (
                "scheme_upper",
                [
                    "HTTPS://r/a/b?x=1&y",
                    "HTTPS://r/a/b?x=1&y",
                    "HTTPS://r:443/a/b?x=1&y",
                    "HTTPS://r:8080/a/b?x=1&y",
                ],
                301,
            ),
            ("host", ["http://new.example.com/a/b?x=1&y"; 4], 301),
            ("port", ["http://r:8443/a/b?x=1&y"; 4], 301),
            ("https_port443", ["https://r:443/a/b?x=1&y"; 4], 301),
            (
                "path",
                [
                    "http://r/new?x=1&y",
                    "http://r:80/new?x=1&y",
                    "http://r:443/new?x=1&y",
                    "http://r:8080/new?x=1&y",
                ],
                301,
            ),
            (
                "path_q_strip",
                [
                    "http://r/new?a=b",
                    "http://r:80/new?a=b",
                    "http://r:443/new?a=b",
                    "http://r:8080/new?a=b",
                ],
                301,
            ),
            (
                "path_strip",
                [
                    "http://r/new",
                    "http://r:80/new",
                    "http://r:443/new",
                    "http://r:8080/new",
                ],
                301,
            ),
            (
                "path_relative",
                [
                    "http://r/relative?x=1&y",
                    "http://r:80/relative?x=1&y",
                    "http://r:443/relative?x=1&y",
                    "http://r:8080/relative?x=1&y",
                ],
                301,
            ),
            (
                "strip",
                [
                    "http://r/a/b",
                    "http://r:80/a/b",
                    "http://r:443/a/b",
                    "http://r:8080/a/b",
                ],
                301,
            ),
            (
                "found",
                [
                    "https://r/a/b?x=1&y",
                    "https://r/a/b?x=1&y",
                    "https://r:443/a/b?x=1&y",
                    "https://r:8080/a/b?x=1&y",
                ],
                302,
            ),
            (
                "see_other",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                303,
            ),
            (
                "temporary",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                307,
            ),
            (
                "permanent",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                308,
            ),
            ("host_port_both", ["http://h:99:100/a/b?x=1&y"; 4], 301),
            ("host_https", ["https://n.com/a/b?x=1&y"; 4], 301),
            (
                "regex_empty",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                301,
            ),
            (
                "direct301",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                301,
            ),
            (
                "direct201",
                [
                    "http://r/a/b?x=1&y",
                    "http://r:80/a/b?x=1&y",
                    "http://r:443/a/b?x=1&y",
                    "http://r:8080/a/b?x=1&y",
                ],
                201,
            ),
            ("direct200", [""; 4], 200),
        ];
        for (case, locations, status) in matrix {
            for (host, want) in ["r", "r:80", "r:443", "r:8080"].iter().zip(locations) {
                assert_eq!(
                    answer(&t, case, host, "/a/b?x=1&y", "http"),
                    (*status, want.to_string()),
                    "{case} {host}"
                );
            }
        }
        let one: &[(&str, &str, &str, &str, &str)] = &[
            ("prefix", "r", "/v1/abc?q=1", "http", "http://r/v2/abc?q=1"),
            ("prefix", "r", "/v1/", "http", "http://r/v2/"),
            ("sep_prefix", "r", "/api", "http", "http://r/x"),
            ("sep_prefix", "r", "/api/x?q", "http", "http://r/x/x?q"),
            ("sep_prefix", "r", "/api?q", "http", "http://r/x?q"),
            (
                "regex",
                "r",
                "/svc/foo/v1/api?z=1",
                "http",
                "http://r/v1/api/instance/foo?z=1",
            ),
            ("regex", "r", "/svc/nomatch", "http", "http://r/svc/nomatch"),
            (
                "regex_dollar",
                "r",
                "/d/abc?k",
                "http",
                "http://r/$x/abc\\?k",
            ),
            (
                "path_exact_prefix",
                "r",
                "/exact?x",
                "http",
                "http://r/e2?x",
            ),
            ("prefix_ci", "r", "/PREFIX/etc?x", "http", "http://r//etc?x"),
            ("prefix_ci", "r", "/Prefix", "http", "http://r/"),
            (
                "prefix_regexroute",
                "r",
                "/re/abc?q=1",
                "http",
                "http://r/z?q=1",
            ),
            ("all", "r:80", "/all/x?q=1", "http", "https://n.com:9/p/x"),
            ("https", "r:80", "/a", "https", "https://r:80/a"),
            ("https", "r:443", "/a", "https", "https://r:443/a"),
            ("https", "[::1]:80", "/a", "http", "https://[::1]/a"),
            ("https", "[::1]", "/a", "http", "https://[::1]/a"),
            ("port", "[::1]:80", "/a", "http", "http://[::1]:8443/a"),
            ("https_port443", "r:80", "/a", "http", "https://r:443/a"),
        ];
        for (case, host, path, xfp, want) in one {
            assert_eq!(
                answer(&t, case, host, path, xfp).1,
                *want,
                "{case} {host} {path}"
            );
        }
        assert_eq!(answer(&t, "all", "r", "/all/", "http").0, 308);
    }

    const FORWARD: &str = r#"
name: t
virtual_hosts:
- name: fw
  domains: ["*"]
  routes:
  - {match: {prefix: "/pr/"}, route: {cluster: echo, prefix_rewrite: "/x/"}}
  - {match: {path_separated_prefix: "/sep"}, route: {cluster: echo, prefix_rewrite: "/y"}}
  - {match: {prefix: "/rx/"}, route: {cluster: echo, regex_rewrite: {pattern: {regex: "([a-z]+)"}, substitution: "<\\1>"}}}
  - {match: {safe_regex: {regex: "/re/[0-9]+"}}, route: {cluster: echo, prefix_rewrite: "/n"}}
  - {match: {prefix: "/lit"}, route: {cluster: echo, host_rewrite_literal: lit.example}}
  - {match: {prefix: "/hh"}, route: {cluster: echo, host_rewrite_header: X-Host}}
  - {match: {prefix: "/auto"}, route: {cluster: echo, auto_host_rewrite: true}}
  - {match: {prefix: "/"}, route: {cluster: echo}}
"#;

    fn upstream(
        t: &RouteTable,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Option<String>, String, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = RouteRequest::new("GET", path, "fw", "http", &map);
        let selected = t.route(&req, &Snapshot::default(), 0).unwrap();
        let SelectedAction::Forward { forward, .. } = selected.action else {
            panic!("not forwarded")
        };
        let rewrite = upstream_rewrite(forward, &req);
        let mut out = HeaderMap::new();
        rewrite.set_original_headers(path, "fw", &mut out);
        let authority = match rewrite.authority {
            AuthorityRewrite::Keep => "fw".to_owned(),
            AuthorityRewrite::Set(h) => h.to_owned(),
            AuthorityRewrite::UpstreamHostname => "<upstream>".to_owned(),
        };
        (rewrite.path, authority, out)
    }

    #[test]
    fn forwarding_rewrites_match_envoy() {
        let t = table_from_yaml(FORWARD);
        let orig =
            |h: &HeaderMap, name: &HeaderName| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        // Observed through Envoy 1.40 to an echo server.
        let (path, host, h) = upstream(&t, "/pr/abc?q=1", &[]);
        assert_eq!((path.as_deref(), host.as_str()), (Some("/x/abc?q=1"), "fw"));
        assert_eq!(
            orig(&h, &X_ENVOY_ORIGINAL_PATH).as_deref(),
            Some("/pr/abc?q=1")
        );
        assert_eq!(orig(&h, &X_ENVOY_ORIGINAL_HOST), None);
        assert_eq!(upstream(&t, "/sep?q", &[]).0.as_deref(), Some("/y?q"));
        assert_eq!(upstream(&t, "/sep/z", &[]).0.as_deref(), Some("/y/z"));
        assert_eq!(
            upstream(&t, "/rx/ab/cd?xy=z", &[]).0.as_deref(),
            Some("/<rx>/<ab>/<cd>?xy=z")
        );
        assert_eq!(upstream(&t, "/re/12?a", &[]).0.as_deref(), Some("/n?a"));
        let (path, host, h) = upstream(&t, "/lit", &[]);
        assert_eq!((path, host.as_str()), (None, "lit.example"));
        assert_eq!(orig(&h, &X_ENVOY_ORIGINAL_HOST).as_deref(), Some("fw"));
        assert_eq!(orig(&h, &X_ENVOY_ORIGINAL_PATH), None);
        assert_eq!(
            upstream(&t, "/hh", &[("x-host", "from.header")]).1,
            "from.header"
        );
        assert_eq!(
            upstream(&t, "/hh", &[("x-host", "h1"), ("x-host", "h2")]).1,
            "h1"
        );
        let (_, host, h) = upstream(&t, "/hh", &[("x-host", "")]);
        assert_eq!(host, "fw", "an empty header leaves the host alone");
        assert!(h.is_empty());
        assert_eq!(upstream(&t, "/hh", &[]).1, "fw");
        assert_eq!(upstream(&t, "/auto", &[]).1, "<upstream>");
        let (path, host, h) = upstream(&t, "/other?x", &[]);
        assert_eq!((path, host.as_str(), h.len()), (None, "fw", 0));
    }

    #[test]
    fn prefix_replacement_never_splits_a_char() {
        assert_eq!(replace_prefix("/é", MatchedPart::Len(2), "/x"), "/x");
        assert_eq!(replace_prefix("/a", MatchedPart::Len(9), "/x"), "/x");
        assert_eq!(
            replace_prefix("/a/b?q#f", MatchedPart::WholePath, "/x"),
            "/x?q#f"
        );
    }
}
