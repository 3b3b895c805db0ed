//! The header names the proxy reads and writes on every request, parsed once. A `&str` name
//! passed to `HeaderMap` is parsed and hashed on each call; a `HeaderName` constant is not.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub const X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// The `x-envoy-*` request headers Envoy removes from requests that are not internal
/// (`ConnectionManagerUtility::cleanInternalHeaders`), and the client's own
/// `x-envoy-internal`.
pub const ENVOY_CONTROL_HEADERS: [HeaderName; 15] = [
    X_ENVOY_INTERNAL,
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
];

/// Whether any `x-envoy-*` header is present. Most requests carry none: one pass over the
/// names present is cheaper than hashing each control header's name to remove it.
pub fn any_envoy_header(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// Whether `name` is present. On the small maps of most messages a look through the names
/// present is cheaper than `contains_key`, which hashes the name.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() > 16 {
        return headers.contains_key(name);
    }
    headers.keys().any(|k| k == name)
}

/// Removes every `name` header, looking first whether there is one (see [`has`]): most
/// messages carry none of the headers the proxy strips.
pub fn remove(headers: &mut HeaderMap, name: &HeaderName) {
    if has(headers, name) {
        headers.remove(name);
    }
}

/// Whether a request says `expect: 100-continue` (in any case).
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Calls `f` with the `date` header's value for now, formatted once a second per thread.
pub fn with_date<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            let formatted = httpdate::fmt_http_date(now);
            *cached = (
                secs,
                HeaderValue::from_str(&formatted).expect("an HTTP date is a valid header value"),
            );
        }
        f(&cached.1)
    })
}

/// The `date` header's value for now (see [`with_date`]).
pub fn date_value() -> HeaderValue {
    with_date(HeaderValue::clone)
}

/// The decimal digits of 0 to 999, each right-aligned in three bytes.
static DIGITS: [u8; 3000] = {
    let mut table = [0u8; 3000];
    let mut n = 0;
    while n < 1000 {
        table[3 * n] = b'0' + (n / 100) as u8;
        table[3 * n + 1] = b'0' + (n / 10 % 10) as u8;
        table[3 * n + 2] = b'0' + (n % 10) as u8;
        n += 1;
    }
    table
};

/// A number as a header value (`x-envoy-upstream-service-time`, `x-envoy-expected-rq-timeout-ms`)
/// without allocating on every request: below 1,000 it points into a static table; above, the
/// last such value a thread made is kept (a route's timeout repeats on every request).
pub fn decimal(n: u64) -> HeaderValue {
    if let Ok(i) = usize::try_from(n)
        && i < 1000
    {
        let skip = match i {
            0..10 => 2,
            10..100 => 1,
            _ => 0,
        };
        let digits = &DIGITS[3 * i + skip..3 * i + 3];
        // Digits only: always a valid header value.
        return HeaderValue::from_static(
            std::str::from_utf8(digits).expect("the table holds ASCII digits"),
        );
    }
    thread_local! {
        static LAST: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((m, value)) if *m == n => value.clone(),
        _ => last.insert((n, HeaderValue::from(n))).1.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_as_their_number() {
        for n in [0, 7, 10, 99, 100, 999, 1000, 15000, 15000, 15001, u64::MAX] {
            assert_eq!(decimal(n).to_str().unwrap(), n.to_string());
        }
    }
}
