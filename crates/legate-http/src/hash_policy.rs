//! A route's `hash_policy`: the hash key a RING_HASH or MAGLEV cluster balances a request on.
//!
//! As Envoy's `Http::HashPolicyImpl`: each policy (header, cookie, the downstream source IP,
//! a query parameter) yields an xxHash64 or nothing; the hashes fold together by rotate-left-1
//! and xor, in order, and a `terminal` policy that produced a hash (so far) ends the list.
//! Envoy computes the key only when the cluster's load balancer asks for one, so a cookie
//! policy with a `ttl` sets its cookie only for hashing clusters; the router calls
//! [`HashPolicy::generate`] only for those. `filter_state` policies are refused by the support
//! table (Legate has no filter state).

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::route::v3::route_action::{self, hash_policy};
use legate_core::{Compiled, Errors};
use legate_upstream::hashing::{combine, hex64, xxhash64, xxhash64_all};
use regex::Regex;

#[derive(Debug)]
pub struct HashPolicy {
    methods: Vec<(Method, bool)>,
}

#[derive(Debug)]
enum Method {
    Header {
        name: HeaderKey,
        rewrite: Option<(Regex, String)>,
    },
    Cookie {
        name: String,
        /// `ttl` in whole seconds (Envoy drops the nanos); when set, a request without the
        /// cookie gets one generated.
        ttl: Option<i64>,
        path: String,
        attributes: Vec<(String, String)>,
    },
    SourceIp,
    QueryParameter(String),
}

/// Where a header policy's value comes from: the request's pseudo-headers live outside the
/// header map in Legate.
#[derive(Debug)]
enum HeaderKey {
    Authority,
    Path,
    Method,
    Scheme,
    /// `host`: Envoy keeps the HTTP/1 `Host` as `:authority`, so this name finds nothing.
    Never,
    Regular(HeaderName),
}

/// What the policies read from one request.
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    /// The downstream address after `x-forwarded-for` processing (`source_ip`).
    pub remote: Option<SocketAddr>,
    /// The connection's peer and local addresses, from which a generated cookie's value comes.
    pub connection: Option<(SocketAddr, SocketAddr)>,
}

impl HashPolicy {
    /// Compiles a route's `hash_policy` list; `None` when it is empty.
    pub fn compile(policies: &[route_action::HashPolicy]) -> Compiled<Option<HashPolicy>> {
        let mut errors = Errors::default();
        let mut methods = Vec::with_capacity(policies.len());
        for (i, p) in policies.iter().enumerate() {
            let path = format!("hash_policy[{i}]");
            let method = match &p.policy_specifier {
                Some(hash_policy::PolicySpecifier::Header(h)) => {
                    let rewrite = h.regex_rewrite.as_ref().and_then(|r| {
                        errors.take(
                            &format!("{path}.header.regex_rewrite"),
                            crate::route::rewrite(r),
                        )
                    });
                    header_key(&h.header_name)
                        .map_err(|e| errors.push(&format!("{path}.header.header_name"), e))
                        .ok()
                        .map(|name| Method::Header { name, rewrite })
                }
                Some(hash_policy::PolicySpecifier::Cookie(c)) => {
                    if c.name.is_empty() {
                        errors.push(
                            &format!("{path}.cookie.name"),
                            "value length must be at least 1 characters",
                        );
                    }
                    Some(Method::Cookie {
                        name: c.name.clone(),
                        ttl: c.ttl.as_ref().map(|t| t.seconds),
                        path: c.path.clone(),
                        attributes: c
                            .attributes
                            .iter()
                            .map(|a| (a.name.clone(), a.value.clone()))
                            .collect(),
                    })
                }
                // Envoy adds no method for `source_ip: false`.
                Some(hash_policy::PolicySpecifier::ConnectionProperties(c)) => {
                    c.source_ip.then_some(Method::SourceIp)
                }
                Some(hash_policy::PolicySpecifier::QueryParameter(q)) => {
                    if q.name.is_empty() {
                        errors.push(
                            &format!("{path}.query_parameter.name"),
                            "value length must be at least 1 characters",
                        );
                    }
                    Some(Method::QueryParameter(q.name.clone()))
                }
                Some(hash_policy::PolicySpecifier::FilterState(_)) => {
                    errors.push(
                        &format!("{path}.filter_state"),
                        "filter_state hash policies are not supported by Legate",
                    );
                    None
                }
                None => {
                    errors.push(&path, "policy_specifier: value is required");
                    None
                }
            };
            if let Some(m) = method {
                methods.push((m, p.terminal));
            }
        }
        errors.finish(|| (!policies.is_empty()).then_some(HashPolicy { methods }))
    }

    /// The request's hash key, or `None` when no policy applies. A cookie policy with a `ttl`
    /// whose cookie is absent generates one and pushes its `Set-Cookie` value to
    /// `set_cookies`, for the response.
    pub fn generate(
        &self,
        input: &HashInput<'_>,
        set_cookies: &mut Vec<HeaderValue>,
    ) -> Option<u64> {
        let mut hash = None;
        for (method, terminal) in &self.methods {
            if let Some(h) = method.evaluate(input, set_cookies) {
                hash = Some(combine(hash, h));
            }
            if *terminal && hash.is_some() {
                break;
            }
        }
        hash
    }
}

impl Method {
    fn evaluate(&self, input: &HashInput<'_>, set_cookies: &mut Vec<HeaderValue>) -> Option<u64> {
        match self {
            Method::Header { name, rewrite } => {
                let mut values: Vec<std::borrow::Cow<'_, [u8]>> = match name {
                    HeaderKey::Authority => vec![input.authority.as_bytes().into()],
                    HeaderKey::Path => vec![input.path.as_bytes().into()],
                    HeaderKey::Method => vec![input.method.as_bytes().into()],
                    HeaderKey::Scheme => vec![input.scheme.as_bytes().into()],
                    HeaderKey::Never => Vec::new(),
                    HeaderKey::Regular(n) => input
                        .headers
                        .get_all(n)
                        .iter()
                        .map(|v| v.as_bytes().into())
                        .collect(),
                };
                if values.is_empty() {
                    return None;
                }
                if let Some((re, substitution)) = rewrite {
                    for v in values.iter_mut() {
                        let text = String::from_utf8_lossy(v).into_owned();
                        *v = re
                            .replace_all(&text, substitution.as_str())
                            .into_owned()
                            .into_bytes()
                            .into();
                    }
                }
                // Envoy sorts the values so that their order does not change the hash.
                values.sort();
                Some(xxhash64_all(values.iter().map(|v| &v[..])))
            }
            Method::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => {
                let value = cookie_value(input.headers, name);
                match (value, ttl) {
                    (Some(v), _) if !v.is_empty() => Some(xxhash64(v)),
                    (_, Some(ttl)) => {
                        let generated = generate_cookie(input.connection)?;
                        let header = set_cookie(name, &generated, path, *ttl, attributes);
                        if let Ok(h) = HeaderValue::from_str(&header) {
                            set_cookies.push(h);
                        }
                        Some(xxhash64(generated.as_bytes()))
                    }
                    _ => None,
                }
            }
            Method::SourceIp => input
                .remote
                .map(|a| xxhash64(a.ip().to_string().as_bytes())),
            Method::QueryParameter(name) => {
                query_value(input.path, name).map(|v| xxhash64(v.as_bytes()))
            }
        }
    }
}

fn header_key(name: &str) -> Result<HeaderKey, String> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":authority" => HeaderKey::Authority,
        "host" => HeaderKey::Never,
        ":path" => HeaderKey::Path,
        ":method" => HeaderKey::Method,
        ":scheme" => HeaderKey::Scheme,
        _ => HeaderKey::Regular(
            HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| format!("invalid header name '{name}'"))?,
        ),
    })
}

/// Envoy's `Utility::parseCookieValue`: the first `name=value` among the `cookie` headers'
/// `;`-separated pairs, leading spaces skipped, one pair of surrounding double quotes removed.
/// Read as bytes, as Envoy reads them: another cookie's non-ASCII value must not hide this one.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let start = pair.iter().position(|b| *b != b' ').unwrap_or(pair.len());
            let pair = &pair[start..];
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (key, value) = (&pair[..eq], &pair[eq + 1..]);
            if key == name.as_bytes() {
                let value = match value {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => value,
                };
                return Some(value);
            }
        }
    }
    None
}

/// The value Envoy's router gives a generated cookie: the hex xxHash64 of the connection's
/// remote then local address (`ip:port` each), so that the streams of one connection agree.
fn generate_cookie(connection: Option<(SocketAddr, SocketAddr)>) -> Option<String> {
    let (remote, local) = connection?;
    Some(hex64(xxhash64(format!("{remote}{local}").as_bytes())))
}

/// Envoy's `Utility::makeSetCookieValue` with `httponly`: `name="value"`, then `Max-Age` (when
/// not zero), `Path` (when set), the attributes, and `HttpOnly`.
fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    attributes: &[(String, String)],
) -> String {
    let mut out = format!("{name}=\"{value}\"");
    if max_age != 0 {
        out.push_str(&format!("; Max-Age={max_age}"));
    }
    if !path.is_empty() {
        out.push_str(&format!("; Path={path}"));
    }
    for (n, v) in attributes {
        if v.is_empty() {
            out.push_str(&format!("; {n}"));
        } else {
            out.push_str(&format!("; {n}={v}"));
        }
    }
    out.push_str("; HttpOnly");
    out
}

/// The first value of query parameter `name` in `path`, undecoded, as Envoy's
/// `QueryParamsMulti::parseQueryString(..).getFirstValue`: a parameter without `=` has the
/// empty value.
fn query_value<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|param| {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_query_parsing_follow_envoy() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1; session=\"abc\""));
        assert_eq!(cookie_value(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&headers, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(&headers, "b"), None);
        // Another cookie's UTF-8 value does not hide this one.
        let mut headers = HeaderMap::new();
        headers.append(
            "cookie",
            HeaderValue::from_bytes(b"x=\xc3\xa9; session=abc").unwrap(),
        );
        assert_eq!(cookie_value(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(query_value("/p?x=1&y=2&x=3", "x"), Some("1"));
        assert_eq!(query_value("/p?flag&y=2", "flag"), Some(""));
        assert_eq!(query_value("/p", "x"), None);
        assert_eq!(
            set_cookie("s", "00ff", "/", 60, &[("SameSite".into(), "Lax".into())]),
            "s=\"00ff\"; Max-Age=60; Path=/; SameSite=Lax; HttpOnly"
        );
        assert_eq!(set_cookie("s", "v", "", 0, &[]), "s=\"v\"; HttpOnly");
    }
}
