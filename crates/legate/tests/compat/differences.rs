//! Every difference between Envoy and Legate that the compat suite allows, with its reason.
//!
//! Two lists: [`INTENTIONAL`] — Legate differs on purpose and will keep differing (each is also
//! explained in `DIFFERENCES.md`); [`KNOWN_DIFFERENCES`] — gaps and bugs found by this suite that
//! are not fixed yet. A difference not covered by an entry fails the test, and so does an entry
//! that no longer matches anything (remove it when the difference is fixed).
//!
//! An entry names a case and an aspect, where `*` matches any run of characters (`"*"`: every
//! case; `stat cluster.*.external.*`) and `|` separates alternatives (in both), the requests of the case it is about (their indexes; none
//! listed: any, and the per-case aspects such as stats), and optionally a text that Envoy's or
//! Legate's value must contain, so that an entry about one body does not cover every body.

use crate::harness::Difference;

#[derive(Debug, Clone, Copy)]
pub struct Documented {
    pub case: &'static str,
    pub requests: &'static [usize],
    pub aspect: &'static str,
    /// When set, one side's value must contain it.
    pub mentions: Option<&'static str>,
    pub reason: &'static str,
    pub intentional: bool,
    /// Depends on the machine (its interfaces, ...): not required to be observed.
    pub optional: bool,
}

impl Documented {
    pub fn covers(&self, d: &Difference) -> bool {
        self.case.split('|').any(|c| glob(c, d.case))
            && (self.requests.is_empty() || d.request.is_some_and(|i| self.requests.contains(&i)))
            && self.aspect.split('|').any(|a| glob(a, &d.aspect))
            && self
                .mentions
                .is_none_or(|m| d.envoy.contains(m) || d.legate.contains(m))
    }

    pub fn label(&self) -> String {
        let list = if self.intentional {
            "INTENTIONAL"
        } else {
            "KNOWN_DIFFERENCES"
        };
        let at = if self.requests.is_empty() {
            String::new()
        } else {
            format!("{:?}", self.requests)
        };
        format!(
            "{list}: {}{at} {} — {}",
            self.case, self.aspect, self.reason
        )
    }

    /// Depends on timing (which of two events comes first in the peer): not required to be
    /// observed.
    const fn on_some_runs(self) -> Documented {
        Documented {
            optional: true,
            ..self
        }
    }

    /// Depends on the machine: not required to be observed.
    const fn on_some_machines(self) -> Documented {
        Documented {
            optional: true,
            ..self
        }
    }
}

/// `pattern` with `*` standing for any run of characters, matched against all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

const fn known(
    case: &'static str,
    requests: &'static [usize],
    aspect: &'static str,
    reason: &'static str,
) -> Documented {
    Documented {
        case,
        requests,
        aspect,
        mentions: None,
        reason,
        intentional: false,
        optional: false,
    }
}

#[allow(dead_code)] // none at the moment
const fn intentional(
    case: &'static str,
    requests: &'static [usize],
    aspect: &'static str,
    reason: &'static str,
) -> Documented {
    Documented {
        intentional: true,
        ..known(case, requests, aspect, reason)
    }
}

const ALL: &[usize] = &[];

/// Differences Legate keeps on purpose (each is explained in DIFFERENCES.md).
pub const INTENTIONAL: &[Documented] = &[];

/// Differences found by this suite and not fixed yet: each one is a bug or a missing piece.
pub const KNOWN_DIFFERENCES: &[Documented] = &[
    // ---- stats Legate does not emit (yet) ------------------------------------------------
    known("*", ALL, "stat http.ingress_http.downstream_cx_destroy_*", "Legate does not record which side closed a downstream connection (destroy_local/remote, *_active_rq)"),
    known("*", ALL, "stat http.ingress_http.downstream_rq_rx_reset|stat http.ingress_http.downstream_rq_response_before_rq_complete", "a response before the request ended: Envoy also counts some local replies of its header checks (HTTP/1.0, a missing Host, headers over the limit) however complete the request; Legate counts a request whose body it had not read, where Envoy had read it (a connect failure)"),
    known("*", ALL, "stat http.ingress_http.downstream_cx_protocol_error", "codec-level protocol errors (426 for HTTP/1.0, 431, a bad HTTP/2 preface) are not counted"),
    // ---- connect failures ----------------------------------------------------------------
    known("connect_failure", &[1], "log %BYTES_RECEIVED%", "Envoy counts the 7-byte request body it read before the connect failure (when it reads it before the refused connect is reported: one CI run in several it does not); Legate reports 0 (the body was never polled)").on_some_runs(),
    // ---- request-target and Host edge cases ------------------------------------------------
    known("http10_and_missing_host", &[0, 1], "log \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\"", "an HTTP/1.0 request refused with 426: Envoy logs %PROTOCOL% as HTTP/1.1, Legate as HTTP/1.0"),
    known("http10_and_missing_host", &[3], "log %REQ(:AUTHORITY)%", "an empty Host: Envoy logs it as an empty string, Legate as '-'"),
    known("http10_and_missing_host", ALL, "stat http.ingress_http.downstream_rq_non_relative_path", "an absolute-form request target: Legate counts downstream_rq_non_relative_path, Envoy does not"),
    // ---- forwarding headers and trust ------------------------------------------------------
    known("use_remote_address_internal", &[1], "*", "use_remote_address with a client-sent x-forwarded-for: Envoy treats the request as external (internal only when XFF holds just the internal peer), so it strips x-envoy-*, regenerates x-request-id and adds x-envoy-external-address; Legate looks at the peer address only"),
    known("*remote_address*", ALL, "upstream header x-forwarded-for", "use_remote_address with a loopback peer: Envoy appends the host's own non-loopback address (its 'local address') to x-forwarded-for, Legate appends 127.0.0.1").on_some_machines(),
    known("*remote_address*", ALL, "log %REQ(X-FORWARDED-FOR)%", "as above").on_some_machines(),
    known("timeout_header_from_internal_client", ALL, "upstream header x-forwarded-for", "as above").on_some_machines(),
    known("timeout_header_from_internal_client", ALL, "log %REQ(X-FORWARDED-FOR)%", "as above").on_some_machines(),
    // ---- local replies ------------------------------------------------------------------------
    known("upgrades", &[1], "log %RESPONSE_FLAGS%", "a WebSocket tunnel closed by the client: Envoy logs DC, Legate '-'"),
    known("upgrades_enabled_on_hcm", &[0], "log %RESPONSE_FLAGS%", "as above"),
    // ---- codecs ---------------------------------------------------------------------------------
    known("http2_only_codec|http1_only_codec", ALL, "stat http.ingress_http.downstream_cx_delayed_close_timeout", "Legate closes after a codec error without Envoy's delayed-close timer"),
    known("no_route", &[4], "response header content-length", "over HTTP/2 Envoy sends no content-length on an empty local reply or redirect; Legate sends content-length: 0"),
    known("direct_response", &[11], "response header content-length", "as above"),
    known("redirects", &[18], "response header content-length", "as above"),
    known("h2c_requests", &[5, 7], "response header content-length", "as above"),
    known("max_request_headers_kb", &[1, 2], "*", "max_request_headers_kb below 8 KiB is not enforced (hyper's read buffer has an 8 KiB floor): a 3 KB header passes; over h2 Legate answers 431 where Envoy resets the stream"),
    known(
        "max_request_headers_kb|header_limits_default",
        ALL,
        "stat cluster.backend.upstream_rq_*|stat http.ingress_http.downstream_rq_*|stat http.ingress_http.downstream_cx_http*_total|stat http.ingress_http.rq_total",
        "the stats of those requests: refused by Envoy (4xx, or an h2 reset), forwarded by Legate, or refused by hyper before Legate counts them",
    ),
];

pub fn documented() -> Vec<Documented> {
    INTENTIONAL
        .iter()
        .chain(KNOWN_DIFFERENCES)
        .copied()
        .collect()
}
