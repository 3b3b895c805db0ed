//! `x-forwarded-client-cert`, as Envoy's `ConnectionManagerUtility::mutateXfccRequestHeader`
//! sets it from `forward_client_cert_details` and `set_current_client_cert_details`.
//!
//! * `ALWAYS_FORWARD_ONLY`: the header passes untouched, mTLS or not.
//! * `SANITIZE` (the default), or any mode on a connection without a client certificate: the
//!   header is removed.
//! * `FORWARD_ONLY`: passes untouched (on mTLS connections).
//! * `APPEND_FORWARD` / `SANITIZE_SET`: an element for this hop is appended to (or replaces)
//!   the header: `By=<local URI SAN>` (one per SAN), `Hash=<sha256>`, then the details asked
//!   for in Envoy's order: `Cert="<url-encoded PEM>"`, `Chain="<url-encoded PEMs>"`,
//!   `Subject="<RFC 2253>"` (present even when empty), `URI=<SAN>` (one per SAN, `URI=` when
//!   none), `DNS=<SAN>` (one per SAN); pairs joined with `;`, elements with `,`.

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as Mode;
use legate_core::x509::TlsInfo;

use crate::hcm::ClientCertDetails;

pub(super) const X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");

/// Applies `mode` to the request's `x-forwarded-client-cert`.
pub(super) fn mutate(
    headers: &mut HeaderMap,
    tls: Option<&TlsInfo>,
    mode: Mode,
    details: &ClientCertDetails,
) {
    if mode == Mode::AlwaysForwardOnly {
        return;
    }
    let tls = match tls {
        Some(t) if mode != Mode::Sanitize && t.peer_certificate_presented() => t,
        _ => {
            crate::headers::remove(headers, &X_FORWARDED_CLIENT_CERT);
            return;
        }
    };
    if mode == Mode::ForwardOnly {
        return;
    }
    let element = element(tls, details);
    let value = if mode == Mode::AppendForward {
        // Several incoming headers are one comma-separated list, as Envoy's header map keeps
        // them.
        let mut existing: Vec<&[u8]> = headers
            .get_all(X_FORWARDED_CLIENT_CERT)
            .iter()
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .collect();
        existing.push(element.as_bytes());
        existing.join(&b","[..])
    } else {
        element.into_bytes()
    };
    match HeaderValue::from_bytes(&value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_CLIENT_CERT, v);
        }
        // A value no header can carry (a subject with a control character escapes to text,
        // so only a hostile incoming header gets here): sent without it rather than wrong.
        Err(_) => {
            headers.remove(X_FORWARDED_CLIENT_CERT);
        }
    }
}

/// This hop's element.
fn element(tls: &TlsInfo, details: &ClientCertDetails) -> String {
    let mut pairs: Vec<String> = Vec::new();
    if let Some(local) = tls.local() {
        for uri in &local.uri_sans {
            pairs.push(format!("By={uri}"));
        }
    }
    let peer = tls.peer();
    if let Some(p) = peer
        && !p.sha256.is_empty()
    {
        pairs.push(format!("Hash={}", p.sha256));
    }
    if details.cert
        && let Some(p) = peer
    {
        pairs.push(format!("Cert=\"{}\"", p.url_encoded_pem()));
    }
    if details.chain {
        let chain: String = tls.peer_chain().map(|c| c.url_encoded_pem()).collect();
        if !chain.is_empty() {
            pairs.push(format!("Chain=\"{chain}\""));
        }
    }
    if details.subject {
        pairs.push(format!(
            "Subject=\"{}\"",
            peer.map_or("", |p| p.subject.as_str())
        ));
    }
    if details.uri {
        match peer.map(|p| p.uri_sans.as_slice()) {
            Some(sans) if !sans.is_empty() => {
                pairs.extend(sans.iter().map(|s| format!("URI={s}")));
            }
            _ => pairs.push("URI=".to_owned()),
        }
    }
    if details.dns
        && let Some(p) = peer
    {
        pairs.extend(p.dns_sans.iter().map(|s| format!("DNS={s}")));
    }
    pairs.join(";")
}
