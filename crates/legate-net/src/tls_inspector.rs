//! `envoy.filters.listener.tls_inspector`: is a new connection TLS, and if so which server
//! name (SNI) and application protocols (ALPN) does its ClientHello ask for. It only peeks:
//! the bytes stay in the socket for the chain that will serve the connection (a terminating
//! TLS chain, or a tcp_proxy passing TLS through).
//!
//! The ClientHello parser is written by hand: rustls parses a ClientHello only as part of a
//! handshake it drives (consuming the bytes), and no maintained crate parses one from a peeked
//! buffer without taking ownership of the connection. It reads just what matching needs
//! (RFC 8446 §4.1.2, RFC 6066 §3 server_name, RFC 7301 ALPN), follows a ClientHello across
//! several TLS records, and bounds everything by `max_client_hello_size`: every length is
//! checked against the bytes present, so garbage is "not TLS" and a truncated hello is "need
//! more bytes" (the listener's `listener_filters_timeout` then applies), never a panic.

use legate_core::stats::{Counter, Histogram, Scope, Unit};

/// Envoy's default and largest `max_client_hello_size`.
pub const DEFAULT_MAX_CLIENT_HELLO_SIZE: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_STATUS_REQUEST: u16 = 5;

#[derive(Clone, Debug)]
pub struct TlsInspectorConfig {
    pub max_client_hello_size: usize,
    /// `close_connection_on_client_hello_parsing_errors`.
    pub close_on_parse_error: bool,
    /// `enable_ja3_fingerprinting`, `enable_ja4_fingerprinting`.
    pub ja3: bool,
    pub ja4: bool,
}

impl Default for TlsInspectorConfig {
    fn default() -> Self {
        TlsInspectorConfig {
            max_client_hello_size: DEFAULT_MAX_CLIENT_HELLO_SIZE,
            close_on_parse_error: false,
            ja3: false,
            ja4: false,
        }
    }
}

impl TlsInspectorConfig {
    /// How many bytes to peek at most: the largest hello with its handshake header, spread
    /// over records of at least 512 bytes each (a hello cut into smaller records than that is
    /// treated as too large: Envoy's BoringSSL buffer has the same bound).
    pub fn peek_limit(&self) -> usize {
        let body = self.max_client_hello_size + 4;
        body + RECORD_HEADER * body.div_ceil(512)
    }
}

/// What a ClientHello asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, lower-cased; empty if none.
    pub server_name: String,
    /// ALPN protocol names in the client's order.
    pub alpn: Vec<String>,
    /// Bytes of the records holding the hello.
    pub bytes: usize,
    /// The client asks for an OCSP staple (`status_request`).
    pub status_request: bool,
}

/// The verdict on the bytes seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// A ClientHello may follow: peek again when more bytes arrive.
    NeedMore,
    /// The bytes are not a TLS ClientHello (not a handshake record, or a malformed hello).
    NotTls {
        malformed: bool,
    },
    /// The hello is larger than `max_client_hello_size`.
    TooLarge,
    Tls(ClientHello),
}

/// Inspects the first bytes of a connection.
pub fn inspect(data: &[u8], max_hello: usize) -> Inspection {
    match gather(data, max_hello) {
        Ok((body, end)) => match parse_hello(&body) {
            Some(mut hello) => {
                hello.bytes = end;
                Inspection::Tls(hello)
            }
            None => Inspection::NotTls { malformed: true },
        },
        Err(verdict) => verdict,
    }
}

/// The JA3 and JA4 fingerprints of the ClientHello at the start of `data` (which
/// [`inspect`] found complete), those asked for.
pub fn fingerprints(data: &[u8], ja3: bool, ja4: bool) -> (Option<String>, Option<String>) {
    let Ok((body, _)) = gather(data, usize::MAX) else {
        return (None, None);
    };
    let Some(fields) = fingerprint::HelloFields::parse(&body) else {
        return (None, None);
    };
    (ja3.then(|| fields.ja3()), ja4.then(|| fields.ja4()))
}

/// The ClientHello body (after its handshake header) from the handshake records at the start
/// of `data`, and the bytes those records take; or the verdict when there is no complete one.
fn gather(
    data: &[u8],
    max_hello: usize,
) -> Result<(std::borrow::Cow<'_, [u8]>, usize), Inspection> {
    // Gather the handshake bytes from consecutive handshake records. Most hellos fit in the
    // first record and are read in place; only a fragmented one is copied.
    let mut offset = 0;
    let mut first: Option<&[u8]> = None;
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let Some(header) = data.get(offset..offset + RECORD_HEADER) else {
            return Err(Inspection::NeedMore);
        };
        let length = u16::from_be_bytes([header[3], header[4]]) as usize;
        // A record of another type, a major version other than 3 (SSLv2 hellos are not
        // accepted, as in BoringSSL), or an empty or oversized record: not a ClientHello.
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 || length == 0 || length > 1 << 14 {
            return Err(Inspection::NotTls {
                malformed: offset > 0,
            });
        }
        let start = offset + RECORD_HEADER;
        let available = &data[start..data.len().min(start + length)];
        match first {
            None => first = Some(available),
            Some(f) => {
                if joined.is_empty() {
                    joined.extend_from_slice(f);
                }
                joined.extend_from_slice(available);
            }
        }
        let handshake: &[u8] = if joined.is_empty() {
            first.unwrap_or_default()
        } else {
            &joined
        };
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(Inspection::NotTls { malformed: false });
            }
            let hello_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if hello_len > max_hello {
                return Err(Inspection::TooLarge);
            }
            if handshake.len() >= 4 + hello_len {
                let end = start + available.len();
                let body = if joined.is_empty() {
                    std::borrow::Cow::Borrowed(&first.unwrap_or_default()[4..4 + hello_len])
                } else {
                    std::borrow::Cow::Owned(joined[4..4 + hello_len].to_vec())
                };
                return Ok((body, end));
            }
        }
        if available.len() < length {
            return Err(Inspection::NeedMore);
        }
        offset = start + length;
    }
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1- or 2-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn parse_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // compression methods
    }
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello); // a hello without extensions (TLS 1.2 and older)
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.vec16()?);
        match kind {
            EXT_SERVER_NAME if !seen_sni => {
                seen_sni = true;
                let mut names = Reader(data.vec16()?);
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let name = names.vec16()?;
                    if name_type == 0 && hello.server_name.is_empty() {
                        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                            return None;
                        }
                        hello.server_name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    }
                }
            }
            EXT_ALPN if !seen_alpn => {
                seen_alpn = true;
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let p = list.vec8()?;
                    if p.is_empty() {
                        return None;
                    }
                    hello.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            EXT_STATUS_REQUEST => hello.status_request = true,
            // A repeated extension is a decode error (RFC 8446 §4.2).
            EXT_SERVER_NAME | EXT_ALPN => return None,
            _ => {}
        }
    }
    Some(hello)
}

/// `tls_inspector.*` stats (rooted at the server scope, as in Envoy).
#[derive(Debug)]
pub struct TlsInspectorStats {
    pub client_hello_too_large: Counter,
    pub tls_found: Counter,
    pub tls_not_found: Counter,
    pub alpn_found: Counter,
    pub alpn_not_found: Counter,
    pub sni_found: Counter,
    pub sni_not_found: Counter,
    pub bytes_processed: Histogram,
}

impl TlsInspectorStats {
    pub fn new(root: &Scope) -> Self {
        let c = |n: &str| root.counter(&format!("tls_inspector.{n}"));
        TlsInspectorStats {
            client_hello_too_large: c("client_hello_too_large"),
            tls_found: c("tls_found"),
            tls_not_found: c("tls_not_found"),
            alpn_found: c("alpn_found"),
            alpn_not_found: c("alpn_not_found"),
            sni_found: c("sni_found"),
            sni_not_found: c("sni_not_found"),
            bytes_processed: root.histogram("tls_inspector.bytes_processed", Unit::Bytes),
        }
    }
}

mod fingerprint;
#[cfg(test)]
mod tests;
